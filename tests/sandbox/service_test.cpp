// SandboxService on the real kernel: positive cases (the workspace result is
// collected, limits raised by the spec take effect), lifecycle (timeout,
// kill, pty, errors), and cgroup v2 where the host has it.
#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "sandbox/testing/fakes.h"
#include "sandbox_fixture.h"

namespace ralph::sandbox::testing {
namespace {

using ServiceTest = SandboxFixture;

TEST_F(ServiceTest, JobWritesItsWorkspaceAndTheResultIsCollected) {
  SandboxSpec spec = Spec(
      {"sh", "-c", "echo \"$GREETING from $(pwd)\" > result.txt; echo out; echo err >&2; exit 7"});
  spec.env.push_back("GREETING=hello");
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_TRUE(service_->Run(*id));
  auto result = service_->Wait(*id);
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_EQ(result->exit_code, 7);
  EXPECT_EQ(result->stdout_data, "out\n");
  EXPECT_EQ(result->stderr_data, "err\n");
  auto workspace = service_->WorkspacePath(*id);
  ASSERT_TRUE(workspace);
  EXPECT_EQ(ReadHostFile(*workspace + "/result.txt"), "hello from /work\n");
  // The job's files live in its upper volume (upper/, work/, root/).
  std::string upper = workspace->substr(0, workspace->rfind("/upper/") + 6);
  ASSERT_EQ(upper.rfind(work_ + "/state/images/volumes/vol-", 0), 0u) << upper;
  EXPECT_EQ(::access(upper.c_str(), F_OK), 0);
  ASSERT_TRUE(service_->Destroy(*id));
  EXPECT_NE(::access(upper.c_str(), F_OK), 0);
  EXPECT_NE(::access(workspace->c_str(), F_OK), 0);
  auto again = service_->Destroy(*id);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), ErrorCode::kNotFound);
}

// With an output callback, output arrives while the job runs: the job waits
// for a file that the callback makes only once it has seen the first line.
TEST_F(ServiceTest, OutputIsStreamedToTheCallbackWhileTheJobRuns) {
  SandboxSpec spec = Spec({"sh", "-c",
                           "echo first; echo warn >&2; while [ ! -e /shared/go ]; do sleep 0.01; "
                           "done; echo second"});
  spec.binds.push_back({host_ + "/shared", "/shared", BindAccess::kReadWrite});
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_TRUE(service_->Run(*id));
  std::string out, err;
  auto result = service_->Wait(*id, [&](OutputStream stream, std::string_view chunk) {
    (stream == OutputStream::kStdout ? out : err).append(chunk);
    if (out == "first\n") WriteHostFile(host_ + "/shared/go", "");
  });
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->exit_code, 0) << Describe(*result);
  EXPECT_EQ(out, "first\nsecond\n");
  EXPECT_EQ(err, "warn\n");
  // The callback had all of it: nothing kept, nothing dropped.
  EXPECT_EQ(result->stdout_data, "");
  EXPECT_EQ(result->output_dropped_bytes, 0u);
  ASSERT_TRUE(service_->Destroy(*id));
}

TEST_F(ServiceTest, ReadWriteBindIsSharedWithTheHost) {
  SandboxSpec spec = Spec({"sh", "-c", "cat /shared/in && echo done > /shared/out"});
  WriteHostFile(host_ + "/shared/in", "input\n");
  spec.binds.push_back({host_ + "/shared", "/shared", BindAccess::kReadWrite});
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_EQ(result.stdout_data, "input\n");
  EXPECT_EQ(ReadHostFile(host_ + "/shared/out"), "done\n");
}

TEST_F(ServiceTest, LimitsRaisedBySpecTakeEffect) {
  JobResult result = RunJob(Spec({"sh", "-c", "ulimit -n; ulimit -c"}));
  EXPECT_EQ(result.stdout_data, "1024\n0\n") << Describe(result);
  SandboxSpec spec = Spec({"sh", "-c", "ulimit -n"});
  spec.limits.open_files = 4096;
  result = RunJob(spec);
  EXPECT_EQ(result.stdout_data, "4096\n") << Describe(result);
  // More processes than the default 256 once pids is raised.
  spec = Probe({"fork-bomb", "300"});
  spec.limits.pids = 400;
  result = RunJob(spec);
  int forked = 0;
  ASSERT_EQ(std::sscanf(result.stdout_data.c_str(), "forked %d", &forked), 1) << Describe(result);
  EXPECT_GT(forked, 300) << Describe(result);
  // A larger disk holds more than the smaller one did.
  spec = Probe({"disk-fill", "/work/fill"});
  spec.limits.disk_bytes = 64ull << 20;
  spec.limits.file_size_bytes = 1ull << 30;
  result = RunJob(spec);
  unsigned long long mib = 0;
  ASSERT_EQ(std::sscanf(result.stdout_data.c_str(), "wrote %llu MiB", &mib), 1) << Describe(result);
  EXPECT_GT(mib, 40u) << Describe(result);
  EXPECT_LE(mib, 64u) << Describe(result);
}

TEST_F(ServiceTest, Timeout) {
  SandboxSpec spec = Spec({"sleep", "30"});
  spec.timeout = std::chrono::milliseconds(200);
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.termination, Termination::kTimedOut) << Describe(result);
  EXPECT_EQ(result.signal, SIGKILL);
}

TEST_F(ServiceTest, KillTakesTheWholeJob) {
  // A job with background children: killing it leaves nothing.
  auto id = service_->CreateJob(Spec({"sh", "-c", "sleep 60 & sleep 60 & sleep 60"}));
  ASSERT_TRUE(id);
  ASSERT_TRUE(service_->Run(*id));
  ASSERT_TRUE(service_->Kill(*id));
  auto result = service_->Wait(*id);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->termination, Termination::kKilled);
  ASSERT_TRUE(service_->Destroy(*id));
}

TEST_F(ServiceTest, Pty) {
  SandboxSpec spec = Spec({"sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"});
  spec.stdio = StdioMode::kPty;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_NE(result.stdout_data.find("on-a-tty"), std::string::npos) << Describe(result);
}

// Another thread drives the job's pty through TerminalFd while Wait reads
// its output: input reaches the job, a resize reaches it as SIGWINCH and the
// new size; the initial size is the spec's.
TEST_F(ServiceTest, PtyInputAndResizeFromAnotherThread) {
  SandboxSpec spec = Spec({"sh", "-c",
                           "trap 'echo winch; stty size' WINCH; stty size; while :; do read l || "
                           "continue; echo got:$l; [ \"$l\" = quit ] && exit 7; done"});
  spec.stdio = StdioMode::kPty;
  spec.terminal_size = {.columns = 100, .rows = 30};
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  auto early = service_->TerminalFd(*id);
  ASSERT_FALSE(early);
  EXPECT_EQ(early.error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE(service_->Run(*id));
  auto fd = service_->TerminalFd(*id);
  ASSERT_TRUE(fd) << fd.error().ToString();

  std::mutex mutex;
  std::condition_variable changed;
  std::string out;
  auto await = [&](std::string_view text) {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return out.find(text) != std::string::npos; });
  };
  auto type = [&](std::string_view text) {
    ASSERT_EQ(::write(fd->get(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
  };
  std::thread driver([&] {
    await("30 100");
    type("hello\n");
    await("got:hello");
    ASSERT_TRUE(ResizeTerminal(fd->get(), {.columns = 120, .rows = 40}));
    await("40 120");
    type("quit\n");
  });
  auto result = service_->Wait(*id, [&](OutputStream stream, std::string_view chunk) {
    EXPECT_EQ(stream, OutputStream::kStdout);
    std::lock_guard lock(mutex);
    out.append(chunk);
    changed.notify_all();
  });
  driver.join();
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->exit_code, 7) << Describe(*result) << out;
  EXPECT_NE(out.find("winch"), std::string::npos) << out;
  auto bad = ResizeTerminal(fd->get(), {.columns = 0, .rows = 10});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("columns: 0 is out of range"), std::string::npos);
  ASSERT_TRUE(service_->Destroy(*id));

  SandboxSpec pipes = Spec({"true"});
  id = service_->CreateJob(pipes);
  ASSERT_TRUE(id);
  auto none = service_->TerminalFd(*id);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message().find("has no pty"), std::string::npos);
  ASSERT_TRUE(service_->Destroy(*id));
}

TEST_F(ServiceTest, ResourceUsageIsReported) {
  JobResult result = RunJob(Spec({"sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"}));
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_GT(result.cgroup.cpu_usage_ns, 0u);
  EXPECT_GT(result.cgroup.memory_peak_bytes, 0u);
  EXPECT_GT(result.usage.ru_utime.tv_sec * 1000000 + result.usage.ru_utime.tv_usec, 0);
  EXPECT_GT(result.wall.count(), 0);
}

TEST_F(ServiceTest, CommandNotFoundIsAClearError) {
  auto id = service_->CreateJob(Spec({"/no/such/command"}));
  ASSERT_TRUE(id);
  auto run = service_->Run(*id);
  ASSERT_FALSE(run);
  EXPECT_EQ(run.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(run.error().message().find("executing the command '/no/such/command'"),
            std::string::npos)
      << run.error().ToString();
  auto wait = service_->Wait(*id);
  ASSERT_FALSE(wait);
  EXPECT_EQ(wait.error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE(service_->Destroy(*id));
}

TEST_F(ServiceTest, BadSpecsAreRejectedWithTheField) {
  SandboxSpec spec = Spec({"true"});
  spec.binds.push_back({host_ + "/missing", "/missing", BindAccess::kReadOnly});
  auto id = service_->CreateJob(spec);
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message().find("binds[2].source"), std::string::npos)
      << id.error().ToString();
  spec = Spec({"true"});
  spec.base = host_ + "/missing";
  id = service_->CreateJob(spec);
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message().find("is not a directory"), std::string::npos)
      << id.error().ToString();
  spec = Spec({"true"});
  spec.network.enabled = true;
  id = service_->CreateJob(spec);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(id.error().message().find("network.enabled"), std::string::npos)
      << id.error().ToString();
  EXPECT_EQ(service_->job_count(), 0u);
  // Nothing of the failed jobs is left: their volumes (pooled) hold only
  // mkfs's lost+found and the overlay's empty mount point.
  std::string volumes = work_ + "/state/images/volumes";
  DIR* dir = ::opendir(volumes.c_str());
  ASSERT_NE(dir, nullptr);
  std::vector<std::string> entries;
  int mount_points = 0;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name[0] == '.' || name.find(".img") != std::string::npos) continue;
    ++mount_points;
    DIR* volume = ::opendir((volumes + "/" + name).c_str());
    ASSERT_NE(volume, nullptr);
    while (dirent* v = ::readdir(volume)) {
      std::string entry = v->d_name;
      if (entry != "." && entry != ".." && entry != "lost+found" && entry != "root")
        entries.push_back(name + "/" + entry);
    }
    ::closedir(volume);
  }
  ::closedir(dir);
  EXPECT_GE(mount_points, 1);
  EXPECT_EQ(entries, std::vector<std::string>{});
}

TEST_F(ServiceTest, LifecycleOrderIsEnforced) {
  auto id = service_->CreateJob(Spec({"true"}));
  ASSERT_TRUE(id);
  auto wait = service_->Wait(*id);
  ASSERT_FALSE(wait);
  EXPECT_EQ(wait.error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE(service_->Run(*id));
  auto again = service_->Run(*id);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE(service_->Wait(*id));
  ASSERT_TRUE(service_->Destroy(*id));
  auto missing = service_->Run("nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
}

// The service's signal state never reaches the job: its children are spawned
// sharing its memory (CLONE_VM) and must reset what execve keeps (the mask,
// ignored signals) and never run a handler of the service's.
TEST_F(ServiceTest, TheJobStartsWithDefaultSignalStateWhateverTheServiceHas) {
  struct sigaction handler {};
  handler.sa_handler = [](int) {};
  struct sigaction old_usr1, old_pipe;
  ASSERT_EQ(::sigaction(SIGUSR1, &handler, &old_usr1), 0);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGPIPE, &ignore, &old_pipe), 0);
  sigset_t term, old_mask;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &term, &old_mask), 0);
  // What the service has now, as the job must not see it.
  std::string own = ReadHostFile("/proc/thread-self/status");
  JobResult result = RunJob(Spec({"cat", "/proc/self/status"}));
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ::sigaction(SIGUSR1, &old_usr1, nullptr);
  auto field = [](const std::string& status, const std::string& name) {
    size_t at = status.find("\n" + name + ":\t");
    if (at == std::string::npos) return std::string("missing");
    at += name.size() + 3;
    return status.substr(at, status.find('\n', at) - at);
  };
  // SIGTERM (15) blocked, SIGPIPE (13) ignored, SIGUSR1 (10) caught here.
  auto has = [&](const std::string& name, int sig) {
    return (std::stoull(field(own, name), nullptr, 16) >> (sig - 1)) & 1;
  };
  EXPECT_TRUE(has("SigBlk", SIGTERM)) << own;
  EXPECT_TRUE(has("SigIgn", SIGPIPE)) << own;
  EXPECT_TRUE(has("SigCgt", SIGUSR1)) << own;
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_EQ(field(result.stdout_data, "SigBlk"), "0000000000000000") << result.stdout_data;
  EXPECT_EQ(field(result.stdout_data, "SigIgn"), "0000000000000000") << result.stdout_data;
  EXPECT_EQ(field(result.stdout_data, "SigCgt"), "0000000000000000") << result.stdout_data;
}

// The child changes its credentials while it shares the service's memory,
// which makes that memory undumpable (commit_creds); the service must get
// its dumpable flag back (core dumps, /proc/<pid> ownership).
TEST_F(ServiceTest, TheServiceStaysDumpable) {
  ASSERT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  for (int i = 0; i < 3; ++i) {
    JobResult result = RunJob(Spec({"true"}));
    EXPECT_EQ(result.exit_code, 0) << Describe(result);
    EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1) << "after job " << i;
  }
  // Also after a job that failed before exec.
  auto id = service_->CreateJob(Spec({"/no/such/command"}));
  ASSERT_TRUE(id);
  ASSERT_FALSE(service_->Run(*id));
  ASSERT_TRUE(service_->Destroy(*id));
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
}

// A mount that fails in the child comes back with the step, the mount and
// the errno, and the next job of the same service runs normally.
TEST_F(ServiceTest, FailingMountIsReportedWithTheStep) {
  std::string gone = host_ + "/gone";
  ASSERT_EQ(::mkdir(gone.c_str(), 0755), 0);
  SandboxSpec spec = Spec({"true"});
  spec.binds.push_back({gone, "/gone", BindAccess::kReadOnly});
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_EQ(::rmdir(gone.c_str()), 0);  // the bind's source vanishes before Run
  auto run = service_->Run(*id);
  ASSERT_FALSE(run);
  EXPECT_EQ(run.error().code(), ErrorCode::kNotFound) << run.error().ToString();
  EXPECT_NE(run.error().message().find("in the sandbox: mounting "), std::string::npos)
      << run.error().ToString();
  EXPECT_NE(run.error().message().find(fmt::format("(bind {})", gone)), std::string::npos)
      << run.error().ToString();
  ASSERT_TRUE(service_->Destroy(*id));
  JobResult result = RunJob(Spec({"sh", "-c", "echo fine"}));
  EXPECT_EQ(result.stdout_data, "fine\n") << Describe(result);
}

// Many jobs one after the other, and two services (each with its own
// spawner) starting jobs at the same time from two threads of one process.
TEST_F(ServiceTest, SequentialAndConcurrentRuns) {
  auto run_jobs = [this](SandboxService& service, const std::string& tag, int count,
                         std::vector<std::string>& problems) {
    for (int i = 0; i < count; ++i) {
      SandboxSpec spec = Spec({"sh", "-c", "echo $0-$1", tag, std::to_string(i)});
      auto id = service.CreateJob(spec);
      if (!id) {
        problems.push_back(id.error().ToString());
        continue;
      }
      if (auto run = service.Run(*id); !run) {
        problems.push_back(run.error().ToString());
      } else if (auto result = service.Wait(*id); !result) {
        problems.push_back(result.error().ToString());
      } else if (result->exit_code != 0 || result->stdout_data != fmt::format("{}-{}\n", tag, i)) {
        problems.push_back(Describe(*result));
      }
      if (auto destroyed = service.Destroy(*id); !destroyed)
        problems.push_back(destroyed.error().ToString());
    }
  };
  std::vector<std::string> first_problems, second_problems;
  run_jobs(*service_, "seq", 40, first_problems);
  EXPECT_EQ(first_problems, std::vector<std::string>{});
  first_problems.clear();

  auto second = MakeService("-second");
  ASSERT_TRUE(second) << second.error().ToString();
  std::thread other([&] { run_jobs(**second, "b", 25, second_problems); });
  run_jobs(*service_, "a", 25, first_problems);
  other.join();
  EXPECT_EQ(first_problems, std::vector<std::string>{});
  EXPECT_EQ(second_problems, std::vector<std::string>{});
  second->reset();
}

// cgroup v2: this host mounts cgroup2 at /sys/fs/cgroup/unified with no
// controllers (they are on v1), the appliance at /sys/fs/cgroup with all.
TEST(CgroupV2, CreateAttachKillDestroy) {
  const std::string mount = "/sys/fs/cgroup/unified";
  std::string parent = fmt::format("ralph-test-v2-{}", ::getpid());
  auto manager = OpenCgroupV2(mount, parent);
  ASSERT_TRUE(manager) << manager.error().ToString();
  EXPECT_EQ((*manager)->version(), CgroupVersion::kV2);
  auto job = (*manager)->CreateJob("job", {});
  ASSERT_TRUE(job) << job.error().ToString();
  EXPECT_GE((*job)->clone_into_fd(), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  ASSERT_TRUE((*job)->Attach(child));
  std::string cgroup = SandboxFixture::ReadHostFile(fmt::format("/proc/{}/cgroup", child));
  EXPECT_NE(cgroup.find(fmt::format("0::/{}/job", parent)), std::string::npos) << cgroup;
  ASSERT_TRUE((*job)->KillAll());
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  ASSERT_TRUE((*job)->Destroy());
  EXPECT_NE(::access((mount + "/" + parent + "/job").c_str(), F_OK), 0);
  job->reset();
  manager->reset();
  EXPECT_NE(::access((mount + "/" + parent).c_str(), F_OK), 0);
}

TEST(CgroupV2, LimitsNeedTheirControllers) {
  const std::string mount = "/sys/fs/cgroup/unified";
  auto manager = OpenCgroupV2(mount, fmt::format("ralph-test-v2l-{}", ::getpid()));
  ASSERT_TRUE(manager) << manager.error().ToString();
  std::string controllers = SandboxFixture::ReadHostFile(mount + "/cgroup.controllers");
  auto job = (*manager)->CreateJob("job", PlanCgroupSettings(Limits{}, CgroupVersion::kV2));
  if (controllers.find("memory") == std::string::npos) {
    // This host: the limit cannot be set, and the job is refused (never
    // silently unlimited), with nothing left behind.
    ASSERT_FALSE(job);
    EXPECT_NE(job.error().message().find("memory.max"), std::string::npos)
        << job.error().ToString();
  } else {
    ASSERT_TRUE(job) << job.error().ToString();
    EXPECT_EQ(SandboxFixture::ReadHostFile((*job)->paths()[0] + "/memory.max"), "536870912\n");
    EXPECT_EQ(SandboxFixture::ReadHostFile((*job)->paths()[0] + "/pids.max"), "256\n");
  }
}

// The start-up sweep removes the owner-named cgroup parents of dead owners
// (pid gone, or the pid now names a later process) with their job cgroups,
// and nothing of a live owner.
TEST(CgroupSweep, RemovesOnlyDeadOwnersParents) {
  std::string base = fmt::format("ralph-test-sweep-{}", ::getpid());
  auto manager = DetectCgroups(OwnedCgroupName(base));
  ASSERT_TRUE(manager) << manager.error().ToString();
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);  // a pid that is gone
  std::vector<std::string> parents = (*manager)->parent_paths();
  ASSERT_FALSE(parents.empty());
  std::vector<std::string> dead, alive;
  std::set<std::pair<dev_t, ino_t>> distinct;  // hierarchies mounted twice count once
  for (const std::string& parent : parents) {
    std::string dir = parent.substr(0, parent.rfind('/'));
    std::string gone = fmt::format("{}/{}@{}.1234", dir, base, child);
    std::string recycled = fmt::format("{}/{}@{}.1", dir, base, ::getpid());  // wrong start
    std::string other_base = fmt::format("{}/{}-other@{}.1234", dir, base, child);
    for (const std::string& path : {gone, recycled, other_base}) {
      ASSERT_TRUE(::mkdir(path.c_str(), 0755) == 0 || errno == EEXIST) << path;
      struct stat st;
      ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
      if (path != other_base) distinct.insert({st.st_dev, st.st_ino});
    }
    ASSERT_TRUE(::mkdir((gone + "/job-1").c_str(), 0755) == 0 || errno == EEXIST);
    dead.push_back(gone);
    dead.push_back(recycled);
    alive.push_back(other_base);
  }
  auto swept = SweepDeadOwnerCgroups(**manager);
  ASSERT_TRUE(swept) << swept.error().ToString();
  EXPECT_EQ(*swept, distinct.size());
  for (const std::string& path : dead) EXPECT_NE(::access(path.c_str(), F_OK), 0) << path;
  for (const std::string& path : parents) EXPECT_EQ(::access(path.c_str(), F_OK), 0) << path;
  for (const std::string& path : alive) {
    EXPECT_EQ(::access(path.c_str(), F_OK), 0) << path;  // another base: not ours to judge
    ::rmdir(path.c_str());
  }
}

TEST(CgroupV1, SameLimitsInEveryHierarchy) {
  auto manager = OpenCgroupV1("/sys/fs/cgroup", fmt::format("ralph-test-v1-{}", ::getpid()));
  ASSERT_TRUE(manager) << manager.error().ToString();
  Limits limits;
  limits.memory_bytes = 100ull << 20;
  limits.pids = 42;
  limits.cpu_millis = 500;
  auto job = (*manager)->CreateJob("job", PlanCgroupSettings(limits, CgroupVersion::kV1));
  ASSERT_TRUE(job) << job.error().ToString();
  EXPECT_EQ((*job)->clone_into_fd(), -1);
  std::string memory, pids, cpu;
  for (const std::string& path : (*job)->paths()) {
    if (path.find("/memory/") != std::string::npos) memory = path;
    if (path.find("/pids/") != std::string::npos) pids = path;
    if (path.find("/cpu/") != std::string::npos) cpu = path;
  }
  EXPECT_EQ(SandboxFixture::ReadHostFile(memory + "/memory.limit_in_bytes"), "104857600\n");
  EXPECT_EQ(SandboxFixture::ReadHostFile(pids + "/pids.max"), "42\n");
  EXPECT_EQ(SandboxFixture::ReadHostFile(cpu + "/cpu.cfs_quota_us"), "50000\n");
  std::vector<std::string> paths = (*job)->paths();
  ASSERT_TRUE((*job)->Destroy());
  for (const std::string& path : paths) EXPECT_NE(::access(path.c_str(), F_OK), 0) << path;
}

// Volume images of the state dir, and how many of them are mounted.
struct Volumes {
  size_t images = 0;
  size_t mounted = 0;
};
Volumes CountVolumes(const std::string& state_dir) {
  std::string volumes = state_dir + "/images/volumes";
  Volumes count;
  DIR* dir = ::opendir(volumes.c_str());
  if (!dir) return count;
  std::string mountinfo = SandboxFixture::ReadHostFile("/proc/self/mountinfo");
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name.rfind("vol-", 0) != 0 || name.size() < 4 || name.substr(name.size() - 4) != ".img")
      continue;
    ++count.images;
    std::string mount_point = volumes + "/" + name.substr(0, name.size() - 4);
    if (mountinfo.find(" " + mount_point + " ") != std::string::npos) ++count.mounted;
  }
  ::closedir(dir);
  return count;
}
size_t CountParked(const std::string& state_dir) {
  Volumes count = CountVolumes(state_dir);
  return count.images - count.mounted;
}

TEST_F(ServiceTest, UpperImagesAreWipedParkedAndReusedAcrossServices) {
  const std::string state = work_ + "/state";
  JobResult result = RunJob(Spec({"sh", "-c", "echo secret > /work/left-behind"}));
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  service_.reset();  // unmounts the pooled volume and parks its image
  EXPECT_EQ(CountParked(state), 1u);
  std::string mountinfo = ReadHostFile("/proc/self/mountinfo");
  EXPECT_EQ(mountinfo.find(state), std::string::npos) << "a mount is left below " << state;
  // A new service (a new process, in the product) takes the parked image.
  auto cgroups = DetectCgroups(fmt::format("ralph-test-park-{}", ::getpid()));
  ASSERT_TRUE(cgroups);
  ServiceOptions options;
  options.state_dir = state;
  options.name = fmt::format("p{}", ::getpid());
  options.ids = ids_;
  auto service = SandboxService::Create(options, std::move(*cgroups), nullptr);
  ASSERT_TRUE(service) << service.error().ToString();
  service_ = std::move(*service);
  // The loop device that held it detaches asynchronously; until then the
  // image is not reused, and a fresh one is made instead.
  for (int i = 0; i < 200; ++i) {
    auto id = service_->CreateJob(Spec({"sh", "-c", "ls -A /work; cat /work/left-behind"}));
    ASSERT_TRUE(id) << id.error().ToString();
    bool reused = CountParked(state) == 0;
    ASSERT_TRUE(service_->Run(*id));
    auto waited = service_->Wait(*id);
    ASSERT_TRUE(waited);
    EXPECT_NE(waited->exit_code, 0) << Describe(*waited);  // the old file is gone
    EXPECT_EQ(waited->stdout_data, "") << Describe(*waited);
    ASSERT_TRUE(service_->Destroy(*id));
    if (reused) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(CountParked(state), 0u);  // taken (and pooled by this service)
}

// A service with max_shared_volumes (a launcher) leaves its emptied volume
// mounted for the next process, which takes it over without a mount; one
// without unmounts it when it ends.
TEST_F(ServiceTest, SharedMountedVolumeIsTakenOverByTheNextService) {
  const std::string state = work_ + "/state-shared";
  auto make = [&](size_t shared, const char* tag) {
    auto service = MakeServiceIn(
        state, tag, [&](ServiceOptions& options) { options.max_shared_volumes = shared; });
    EXPECT_TRUE(service) << service.error().ToString();
    return service ? std::move(*service) : nullptr;
  };
  service_ = make(1, "s");
  JobResult result = RunJob(Spec({"sh", "-c", "echo secret > /work/left-behind"}));
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  service_.reset();
  Volumes left = CountVolumes(state);
  EXPECT_EQ(left.images, 1u);
  EXPECT_EQ(left.mounted, 1u);
  service_ = make(0, "n");
  result = RunJob(Spec({"sh", "-c", "ls -A /work; cat /work/left-behind"}));
  EXPECT_NE(result.exit_code, 0) << Describe(result);  // the old file is gone
  EXPECT_EQ(result.stdout_data, "") << Describe(result);
  EXPECT_EQ(CountVolumes(state).images, 1u);  // taken over, not a new one
  service_.reset();
  left = CountVolumes(state);
  EXPECT_EQ(left.images, 1u);
  EXPECT_EQ(left.mounted, 0u);
}

// deferred_housekeeping (a launcher): a volume is let go warm as its job
// left it. The next service's job never sees those files: it takes a clean
// volume (a new one while the state dir has fewer than two warm ones), or
// wipes the one it takes; Housekeep() empties the ones nobody holds.
TEST_F(ServiceTest, DeferredHousekeepingLeavesTheWipeOffTheJobsPath) {
  const std::string state = work_ + "/state-deferred";
  auto make = [&](const char* tag) {
    auto service = MakeServiceIn(state, tag, [](ServiceOptions& options) {
      options.max_pooled_volumes = 0;
      options.max_shared_volumes = 2;
      options.deferred_housekeeping = true;
    });
    EXPECT_TRUE(service) << service.error().ToString();
    return service ? std::move(*service) : nullptr;
  };
  // How many of the state dir's volumes hold the file, as the host sees them.
  auto left_behind = [&] {
    size_t count = 0;
    for (const auto& entry : std::filesystem::directory_iterator(state + "/images/volumes")) {
      if (std::filesystem::exists(entry.path() / "upper/work/left-behind")) ++count;
    }
    return count;
  };
  const SandboxSpec write = Spec({"sh", "-c", "echo secret > /work/left-behind"});
  const SandboxSpec read = Spec({"sh", "-c", "ls -A /work; cat /work/left-behind"});
  auto expect_nothing_left = [&](const JobResult& result) {
    EXPECT_NE(result.exit_code, 0) << Describe(result);  // no such file
    EXPECT_EQ(result.stdout_data, "") << Describe(result);
  };

  service_ = make("d");
  ASSERT_EQ(RunJob(write).exit_code, 0);
  service_.reset();
  EXPECT_EQ(CountVolumes(state).mounted, 1u);
  EXPECT_EQ(left_behind(), 1u);  // not wiped

  // One warm volume, dirty: a second one is made.
  service_ = make("e");
  expect_nothing_left(RunJob(read));
  EXPECT_EQ(CountVolumes(state).images, 2u);
  EXPECT_EQ(left_behind(), 1u);
  ASSERT_TRUE(service_->Housekeep());  // nobody holds them: both are emptied
  EXPECT_EQ(left_behind(), 0u);
  ASSERT_EQ(RunJob(write).exit_code, 0);
  EXPECT_EQ(left_behind(), 1u);
  ASSERT_EQ(RunJob(read).exit_code != 0, true);  // took the other, clean one
  service_.reset();

  // Two warm volumes, both dirty: the job's start wipes the one it takes.
  service_ = make("f");
  expect_nothing_left(RunJob(read));
  expect_nothing_left(RunJob(read));
  EXPECT_EQ(CountVolumes(state).images, 2u);
  ASSERT_TRUE(service_->Housekeep());
  EXPECT_EQ(left_behind(), 0u);
  service_.reset();
  auto unmounted = UnmountIdleVolumes(state + "/images");
  ASSERT_TRUE(unmounted) << unmounted.error().ToString();
  EXPECT_EQ(*unmounted, 2u);
}

// The v2 spawn path (clone3 with CLONE_INTO_CGROUP | CLONE_NEWCGROUP) on this
// host's controller-less cgroup2: the limits cannot be set here (see
// CgroupV2.LimitsNeedTheirControllers), so a decorator drops them; what is
// shown is that the job is born in its v2 cgroup, which is the root of its
// cgroup namespace, and that teardown removes it.
class DropSettings final : public CgroupManagerInterface {
 public:
  explicit DropSettings(std::unique_ptr<CgroupManagerInterface> real) : real_(std::move(real)) {}
  CgroupVersion version() const override { return real_->version(); }
  Result<std::unique_ptr<JobCgroupInterface>> CreateJob(
      const std::string& name, const std::vector<CgroupSetting>&) override {
    auto job = TRY(real_->CreateJob(name, {}));
    last_paths_ = job->paths();
    return job;
  }
  std::vector<std::string> parent_paths() const override { return real_->parent_paths(); }
  std::vector<std::string> last_paths_;

 private:
  std::unique_ptr<CgroupManagerInterface> real_;
};

TEST_F(ServiceTest, CgroupV2JobIsBornInItsCgroup) {
  auto v2 = OpenCgroupV2("/sys/fs/cgroup/unified", fmt::format("ralph-test-v2s-{}", ::getpid()));
  ASSERT_TRUE(v2) << v2.error().ToString();
  auto cgroups = std::make_unique<DropSettings>(std::move(*v2));
  DropSettings* cgroups_view = cgroups.get();
  ServiceOptions options;
  options.state_dir = work_ + "/state-v2";
  options.name = fmt::format("v{}", ::getpid());
  options.ids = ids_;
  auto service = SandboxService::Create(options, std::move(cgroups), nullptr);
  ASSERT_TRUE(service) << service.error().ToString();
  EXPECT_EQ((*service)->cgroup_version(), CgroupVersion::kV2);
  auto id =
      (*service)->CreateJob(Spec({"sh", "-c", "grep '^0::' /proc/self/cgroup; exec sleep 2"}));
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_TRUE((*service)->Run(*id));
  ASSERT_EQ(cgroups_view->last_paths_.size(), 1u);
  std::string procs_file = cgroups_view->last_paths_[0] + "/cgroup.procs";
  std::string procs;
  for (int i = 0; i < 500 && procs.empty(); ++i) {
    procs = ReadHostFile(procs_file);
    if (procs.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(procs.empty()) << "no process in " << procs_file;
  auto result = (*service)->Wait(*id);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->termination, Termination::kExited) << Describe(*result);
  // Inside, its own cgroup is the namespace root.
  EXPECT_EQ(result->stdout_data, "0::/\n") << Describe(*result);
  ASSERT_TRUE((*service)->Destroy(*id));
  EXPECT_NE(::access(cgroups_view->last_paths_[0].c_str(), F_OK), 0);
}

// The service with fake cgroups and a fake network: injected failures leave
// nothing behind, and the service hands each dependency what the plan says.
class ServiceWithFakesTest : public SandboxFixture {
 protected:
  void SetUp() override {
    SandboxFixture::SetUp();
    service_.reset();
    auto cgroups = std::make_unique<FakeCgroupManager>(CgroupVersion::kV1);
    cgroups_ = cgroups.get();
    records_ = cgroups->records();
    auto network = std::make_unique<FakeNetworkProvider>();
    network_ = network.get();
    created_ = network->created();
    torn_down_ = network->torn_down();
    ServiceOptions options;
    options.state_dir = work_ + "/state-fakes";
    options.name = fmt::format("f{}", ::getpid());
    options.ids = ids_;
    auto service = SandboxService::Create(options, std::move(cgroups), std::move(network));
    ASSERT_TRUE(service) << service.error().ToString();
    service_ = std::move(*service);
  }
  size_t JobDirs() const {
    DIR* dir = ::opendir((work_ + "/state-fakes/jobs").c_str());
    if (!dir) return 0;
    size_t entries = 0;
    while (dirent* e = ::readdir(dir)) entries += e->d_name[0] != '.';
    ::closedir(dir);
    return entries;
  }
  FakeCgroupManager* cgroups_ = nullptr;
  FakeNetworkProvider* network_ = nullptr;
  std::shared_ptr<std::vector<FakeCgroupManager::Record>> records_;
  std::shared_ptr<int> created_, torn_down_;
};

TEST_F(ServiceWithFakesTest, CgroupFailureLeavesNothing) {
  cgroups_->FailNextCreate(Error::Make(ErrorCode::kBusy, "injected: cgroup busy"));
  auto id = service_->CreateJob(Spec({"true"}));
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().code(), ErrorCode::kBusy);
  EXPECT_NE(id.error().message().find("injected: cgroup busy"), std::string::npos)
      << id.error().ToString();
  EXPECT_EQ(JobDirs(), 0u);
  EXPECT_EQ(service_->job_count(), 0u);
}

TEST_F(ServiceWithFakesTest, TheJobGetsThePlannedLimitsAndIsAttached) {
  SandboxSpec spec = Spec({"true"});
  spec.limits.pids = 77;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  ASSERT_EQ(records_->size(), 1u);
  const auto& record = (*records_)[0];
  auto planned = PlanCgroupSettings(spec.limits, CgroupVersion::kV1);
  ASSERT_EQ(record.settings.size(), planned.size());
  for (size_t i = 0; i < planned.size(); ++i) {
    EXPECT_EQ(record.settings[i].file, planned[i].file);
    EXPECT_EQ(record.settings[i].value, planned[i].value);
  }
  EXPECT_EQ(record.attached.size(), 1u);  // v1: moved in after clone
  EXPECT_TRUE(record.destroyed);
}

TEST_F(ServiceWithFakesTest, NetworkFailureKillsTheChild) {
  network_->FailWith(Error::Make(ErrorCode::kIo, "injected: veth"));
  SandboxSpec spec = Spec({"sleep", "60"});
  spec.network.enabled = true;
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  auto run = service_->Run(*id);
  ASSERT_FALSE(run);
  EXPECT_NE(run.error().message().find("network: injected: veth"), std::string::npos)
      << run.error().ToString();
  // The child was killed and reaped: no process of the job's uid range.
  std::string uid = std::to_string(ids_.host_base);
  std::string command = fmt::format("ps -eo uid= | grep -qx ' *{}'", uid);
  EXPECT_NE(std::system(command.c_str()), 0) << "a process of uid " << uid << " is left";
  ASSERT_TRUE(service_->Destroy(*id));
  EXPECT_TRUE((*records_)[0].destroyed);
  EXPECT_EQ(JobDirs(), 0u);
}

// The service's default deletes a job's veth before Destroy returns; a
// launcher's kWithNamespace leaves it to the kernel once the job is reaped,
// also when Destroy had to kill the job first.
TEST_F(ServiceWithFakesTest, NetworkTeardownFollowsTheOption) {
  SandboxSpec spec = Spec({"true"});
  spec.network.enabled = true;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_EQ(*torn_down_, 1);
  EXPECT_EQ(*network_->torn_down_with_namespace(), 0);

  service_.reset();
  auto network = std::make_unique<FakeNetworkProvider>();
  auto with_namespace = network->torn_down_with_namespace();
  auto torn_down = network->torn_down();
  ServiceOptions options;
  options.state_dir = work_ + "/state-fakes";
  options.name = fmt::format("g{}", ::getpid());
  options.ids = ids_;
  options.network_teardown = NetworkTeardown::kWithNamespace;
  auto service = SandboxService::Create(
      options, std::make_unique<FakeCgroupManager>(CgroupVersion::kV1), std::move(network));
  ASSERT_TRUE(service) << service.error().ToString();
  for (const char* command : {"true", "sleep"}) {
    SandboxSpec job = Spec({command, "60"});
    job.network.enabled = true;
    auto id = (*service)->CreateJob(job);
    ASSERT_TRUE(id) << id.error().ToString();
    ASSERT_TRUE((*service)->Run(*id));
    if (std::string(command) == "true") {
      ASSERT_TRUE((*service)->Wait(*id));
    }
    ASSERT_TRUE((*service)->Destroy(*id));  // "sleep": killed and reaped first
  }
  EXPECT_EQ(*with_namespace, 2);
  EXPECT_EQ(*torn_down, 2);
}

TEST_F(ServiceWithFakesTest, TheResolverIsWhatTheNetworkSays) {
  SandboxSpec spec = Spec({"cat", "/etc/resolv.conf"});
  spec.network.enabled = true;
  JobResult result = RunJob(spec);
  EXPECT_EQ(result.stdout_data, "nameserver 192.0.2.1\n") << Describe(result);
  EXPECT_EQ(*created_, 1);
  EXPECT_EQ(*torn_down_, 1);
}

}  // namespace
}  // namespace ralph::sandbox::testing
