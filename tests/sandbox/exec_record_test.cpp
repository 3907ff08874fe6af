// Exec recording (SandboxSpec::record_exec) against the real kernel: the
// execs of a job in order with their argv, one record per process of a
// loop, no listener left to the job, none when off, the limits visible as truncation, PATH-search
// misses marked, and what happens to an exec whose supervisor goes away.
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include <fmt/ranges.h>

#include "sandbox/seccomp.h"
#include "sandbox_fixture.h"

namespace ralph::sandbox::testing {
namespace {

class ExecRecordTest : public SandboxFixture {};

std::string Show(const std::vector<ExecRecord>& execs) {
  std::string out;
  for (const ExecRecord& record : execs) {
    out += fmt::format("{} [{}]{}{}{}\n", record.path, fmt::join(record.argv, " "),
                       record.missing ? " missing" : "", record.path_truncated ? " path-cut" : "",
                       record.argv_truncated ? " argv-cut" : "");
  }
  return out;
}

TEST_F(ExecRecordTest, ExecsOfAShellComeInOrderWithTheirArgv) {
  SandboxSpec spec =
      Spec({"/bin/sh", "-c", "/bin/true; /bin/echo a b; /usr/bin/env -i X=1 /bin/true 'c d'"});
  spec.record_exec = true;
  JobResult result = RunJob(spec);
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_EQ(result.stdout_data, "a b\n");
  EXPECT_EQ(Show(result.execs),
            "/bin/sh [/bin/sh -c /bin/true; /bin/echo a b; /usr/bin/env -i X=1 /bin/true 'c d']\n"
            "/bin/true [/bin/true]\n"
            "/bin/echo [/bin/echo a b]\n"
            "/usr/bin/env [/usr/bin/env -i X=1 /bin/true c d]\n"
            "/bin/true [/bin/true c d]\n");
  EXPECT_EQ(result.execs_dropped, 0u);
  for (const ExecRecord& record : result.execs) {
    EXPECT_GT(record.pid, 0);
    EXPECT_GT(record.time.time_since_epoch().count(), 0);
  }
}

TEST_F(ExecRecordTest, EveryProcessOfALoopIsOneRecordDeliveredToTheCallback) {
  // RALPH_EXEC_TEST_PROCESSES overrides the count (a longer run by hand).
  const char* env = std::getenv("RALPH_EXEC_TEST_PROCESSES");
  const size_t n = env ? std::strtoul(env, nullptr, 10) : 500;
  SandboxSpec spec =
      Spec({"/bin/sh", "-c",
            fmt::format("i=0; while [ $i -lt {} ]; do /bin/true $i; i=$((i+1)); done", n)});
  spec.record_exec = true;
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_TRUE(service_->Run(*id));
  std::vector<ExecRecord> execs;
  auto result =
      service_->Wait(*id, {}, [&](ExecRecord record) { execs.push_back(std::move(record)); });
  ASSERT_TRUE(result) << result.error().ToString();
  EXPECT_EQ(result->exit_code, 0) << Describe(*result);
  EXPECT_TRUE(result->execs.empty());  // the callback had them all
  ASSERT_EQ(execs.size(), n + 1) << Show(execs);
  EXPECT_EQ(execs[0].path, "/bin/sh");
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(execs[i + 1].path, "/bin/true");
    ASSERT_EQ(execs[i + 1].argv, (std::vector<std::string>{"/bin/true", std::to_string(i)}));
  }
  ASSERT_TRUE(service_->Destroy(*id));
}

TEST_F(ExecRecordTest, TheJobHoldsNoListener) {
  // The child sends the listener to the service and closes it (it is
  // close-on-exec as well): nothing of the job can answer (or swallow) its
  // own notifications.
  // (The glob's own directory fd is gone by the time readlink runs.)
  SandboxSpec spec =
      Spec({"/bin/sh", "-c", "for f in /proc/self/fd/*; do readlink $f; done; true"});
  spec.record_exec = true;
  JobResult result = RunJob(spec);
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_NE(result.stdout_data.find("pipe:"), std::string::npos) << result.stdout_data;
  EXPECT_EQ(result.stdout_data.find("seccomp"), std::string::npos) << result.stdout_data;
}

TEST_F(ExecRecordTest, NothingIsRecordedWhenOff) {
  JobResult result = RunJob(Spec({"/bin/sh", "-c", "/bin/true; /bin/echo a"}));
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_TRUE(result.execs.empty());
  EXPECT_EQ(result.execs_dropped, 0u);
}

TEST_F(ExecRecordTest, LimitsTruncateVisibly) {
  auto service = MakeServiceIn(work_ + "/state-limits", "-limits", [](ServiceOptions& options) {
    options.exec_limits.max_path_bytes = 12;
    options.exec_limits.max_args = 3;
    options.exec_limits.max_argv_bytes = 20;
    options.exec_limits.max_kept = 4;
  });
  ASSERT_TRUE(service) << service.error().ToString();
  service_ = std::move(*service);
  SandboxSpec spec =
      Spec({"/bin/sh", "-c",
            "/bin/echo 1 2 3 4 >/dev/null; /bin/echo 0123456789abcdefghij >/dev/null; "
            "/usr/bin/../bin/true; /bin/true; /bin/true; /bin/true"});
  spec.record_exec = true;
  JobResult result = RunJob(spec);
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  // 12 bytes of path, 3 arguments, 20 bytes of argv; 4 records kept.
  EXPECT_EQ(Show(result.execs),
            "/bin/sh [/bin/sh -c /bin/echo 1] argv-cut\n"
            "/bin/echo [/bin/echo 1 2] argv-cut\n"
            "/bin/echo [/bin/echo 0123456789a] argv-cut\n"
            "/usr/bin/../ [/usr/bin/../bin/true] path-cut\n");
  EXPECT_EQ(result.execs_dropped, 3u);
}

TEST_F(ExecRecordTest, PathSearchMissesAreMarkedMissing) {
  SandboxSpec spec = Spec({"/usr/bin/env", "true"});
  spec.env = {"PATH=/nowhere:/usr/bin"};
  spec.record_exec = true;
  JobResult result = RunJob(spec);
  ASSERT_EQ(result.exit_code, 0) << Describe(result);
  EXPECT_EQ(Show(result.execs),
            "/usr/bin/env [/usr/bin/env true]\n"
            "/nowhere/true [true] missing\n"
            "/usr/bin/true [true]\n");
}

TEST_F(ExecRecordTest, AJobLeftUnwaitedIsDestroyedNotHung) {
  SandboxSpec spec = Spec({"/bin/sh", "-c", "while :; do /bin/true; done"});
  spec.record_exec = true;
  auto id = service_->CreateJob(spec);
  ASSERT_TRUE(id) << id.error().ToString();
  ASSERT_TRUE(service_->Run(*id));
  // Nobody answers its next exec; Destroy kills it all the same.
  ASSERT_TRUE(service_->Destroy(*id));
}

// The kernel's side of a supervisor that goes away: an exec waiting for an
// answer when the listener closes fails with ENOSYS, and so does every later
// one (the job is never left stopped).
TEST(ExecNotifyFilter, ClosingTheListenerFailsWaitingAndLaterExecsWithEnosys) {
  auto filter = ExecNotifyFilter(0);
  ASSERT_TRUE(filter) << filter.error().ToString();
  sock_fprog program{static_cast<unsigned short>(filter->size()), filter->data()};
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int listener = -1;
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        LoadExecNotifyFilter(&program, &listener) != 0)
      ::_exit(10);
    if (::write(pair[1], &listener, sizeof listener) != sizeof listener) ::_exit(11);
    // The parent takes its own copy (pidfd_getfd), then says go.
    char go;
    if (::read(pair[1], &go, 1) != 1) ::_exit(12);
    ::close(listener);
    ::execve("/bin/true", argv, environ);  // waits; fails once the listener closes
    int first = errno;
    ::execve("/bin/true", argv, environ);  // no listener at all by now
    int second = errno;
    ::_exit(first == ENOSYS && second == ENOSYS ? 0 : 13);
  }
  ::close(pair[1]);
  int number = -1;
  ASSERT_EQ(::read(pair[0], &number, sizeof number), static_cast<ssize_t>(sizeof number));
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  ASSERT_TRUE(pidfd) << std::strerror(errno);
  UniqueFd listener(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0)));
  ASSERT_TRUE(listener) << std::strerror(errno);
  ASSERT_EQ(::write(pair[0], "g", 1), 1);
  // Receiving it proves the exec is waiting; then the supervisor goes away
  // without an answer.
  seccomp_notif_sizes sizes{};
  ASSERT_EQ(::syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes), 0);
  std::vector<unsigned char> notif(std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif)));
  ASSERT_EQ(::ioctl(listener.get(), SECCOMP_IOCTL_NOTIF_RECV, notif.data()), 0)
      << std::strerror(errno);
  EXPECT_EQ(reinterpret_cast<seccomp_notif*>(notif.data())->pid, static_cast<uint32_t>(pid));
  listener.reset();
  ::close(pair[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: no filter, 11-12: handshake, 13: not ENOSYS";
}

}  // namespace
}  // namespace ralph::sandbox::testing
