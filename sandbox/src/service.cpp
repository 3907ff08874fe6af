// SandboxService: create / run / wait / kill / destroy (see service.h).
#include "sandbox/service.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/capability.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "child.h"
#include "exec_monitor.h"
#include "fs_util.h"
#include "platform/unique_fd.h"
#include "sandbox/landlock.h"
#include "spawner.h"

namespace ralph::sandbox {

struct SandboxService::Job {
  JobId id;
  SandboxSpec spec;
  std::string dir;
  std::string base_mount;  // BaseKind::kImage: where the image is mounted
  std::unique_ptr<UpperVolume> volume;
  std::unique_ptr<JobCgroupInterface> cgroup;
  std::unique_ptr<JobNetwork> network;
  JobPaths paths;
  MountPlan mounts;
  std::vector<RlimitSetting> rlimits;
  std::vector<std::string> exec_candidates;
  std::vector<const char*> exec_pointers;
  std::vector<char*> argv_pointers;
  std::vector<char*> env_pointers;

  enum class State { kCreated, kRunning, kReaped };
  State state = State::kCreated;
  UniqueFd pidfd;
  // The job's mount namespace, held until Teardown: when the job's last
  // process exits, its exit then does not wait for the namespace's mounts
  // to be torn down (an RCU grace period: umount_tree), so Wait returns that
  // much sooner; Teardown drops it before the volume is wiped.
  UniqueFd mount_ns;
  pid_t pid = -1;
  UniqueFd out;  // stdout, or the pty master
  UniqueFd err;
  bool killed = false;
  bool timed_out = false;
  bool waited = false;
  bool start_failed = false;
  std::chrono::steady_clock::time_point started;
  JobResult result;
  // SandboxSpec::record_exec: the listener, once the child has sent it, and
  // the execs answered while Run waited for the job's start (Wait delivers
  // them first).
  std::unique_ptr<ExecMonitor> exec_monitor;
  std::vector<ExecRecord> start_execs;
};

namespace {

Error Io(std::string_view what) {
  return Error::FromErrno(what, errno);
}

// waitid(P_PIDFD) with the rusage argument: raw syscall because glibc's
// waitid() has no rusage parameter.
int WaitPidFd(int pidfd, siginfo_t* info, rusage* usage, int options) {
  std::memset(info, 0, sizeof *info);
  long rc;
  do {
    rc = ::syscall(SYS_waitid, P_PIDFD, pidfd, info, WEXITED | options, usage);
  } while (rc < 0 && errno == EINTR);
  return rc < 0 ? errno : 0;
}

// pidfd_send_signal: raw syscall (no wrapper in glibc 2.36). Signals through
// the pidfd cannot hit a recycled pid.
int SignalPidFd(int pidfd, int sig) {
  return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0 ? 0 : errno;
}

Result<void> CreateUpperEntries(const std::string& upper, const std::vector<UpperEntry>& entries,
                                uint32_t job_uid) {
  for (const UpperEntry& entry : entries) {
    std::string path = upper + "/" + entry.path;
    if (entry.directory) {
      if (::mkdir(path.c_str(), entry.mode) != 0 && errno != EEXIST)
        return Io(fmt::format("mkdir {}", path));
      // mkdir applies the umask; the mode must be exact (/tmp's 1777).
      if (::chmod(path.c_str(), entry.mode) != 0) return Io(fmt::format("chmod {}", path));
    } else {
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, entry.mode));
      if (!fd) return Io(fmt::format("create {}", path));
    }
    // Owned by the job's root: overlayfs mounted in a user namespace refuses
    // (EACCES) merged directories whose upper part has an owner that is not
    // mapped there. The base's own files stay host-owned and read-only.
    (void)entry.owned_by_job;
    if (::lchown(path.c_str(), job_uid, job_uid) != 0) return Io(fmt::format("chown {}", path));
  }
  return {};
}

}  // namespace

Result<void> ResizeTerminal(int fd, TerminalSize size) {
  for (auto [name, value] : {std::pair{"columns", size.columns}, std::pair{"rows", size.rows}}) {
    if (value < 1 || value > kMaxTerminalDimension)
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("terminal {}: {} is out of range 1..{}", name, value, kMaxTerminalDimension));
  }
  winsize window{.ws_row = size.rows, .ws_col = size.columns, .ws_xpixel = 0, .ws_ypixel = 0};
  if (::ioctl(fd, TIOCSWINSZ, &window) != 0) return Io("TIOCSWINSZ");
  return {};
}

std::string_view TerminationName(Termination termination) {
  switch (termination) {
    case Termination::kExited: return "exited";
    case Termination::kSignaled: return "signaled";
    case Termination::kTimedOut: return "timed-out";
    case Termination::kKilled: return "killed";
  }
  return "unknown";
}

SandboxService::SandboxService(ServiceOptions options,
                               std::unique_ptr<CgroupManagerInterface> cgroups,
                               std::unique_ptr<NetworkProviderInterface> network,
                               std::unique_ptr<Spawner> spawner, SeccompProgram seccomp,
                               std::vector<sock_filter> exec_notify, int landlock_abi)
    : options_(std::move(options)),
      cgroups_(std::move(cgroups)),
      network_(std::move(network)),
      spawner_(std::move(spawner)),
      seccomp_(std::move(seccomp)),
      exec_notify_filter_(std::move(exec_notify)),
      landlock_abi_(landlock_abi),
      last_cap_(cap_max_bits() - 1) {
  exec_notify_.len = static_cast<unsigned short>(exec_notify_filter_.size());
  exec_notify_.filter = exec_notify_filter_.data();
}

SandboxService::~SandboxService() {
  while (!jobs_.empty()) IgnoreError(Destroy(jobs_.begin()->first));
  volumes_.reset();
}

Result<std::unique_ptr<SandboxService>> SandboxService::Create(
    ServiceOptions options, std::unique_ptr<CgroupManagerInterface> cgroups,
    std::unique_ptr<NetworkProviderInterface> network) {
  if (options.state_dir.empty() || options.state_dir[0] != '/')
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("state_dir: must be an absolute path, got '{}'", options.state_dir));
  if (options.name.empty() || options.name.find('/') != std::string::npos)
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("name: '{}' is empty or has '/'", options.name));
  if (!cgroups)
    return Error::Make(ErrorCode::kInvalidArgument, "cgroups: a cgroup manager is required");
  // Compiled when the build ran: nothing to compile per service.
  SeccompProgram seccomp =
      TRY_CTX(SeccompProgram::Default(options.seccomp_audit_arch), "the seccomp program");
  std::vector<sock_filter> exec_notify = TRY(ExecNotifyFilter(options.seccomp_audit_arch));
  // 0711: the job's mapped root must traverse to its volume, list nothing.
  TRY(MakeDirs(options.state_dir + "/images", 0711));
  int abi = LandlockAbiVersion();
  std::unique_ptr<Spawner> spawner = TRY(Spawner::Create());
  std::unique_ptr<SandboxService> service(
      new SandboxService(std::move(options), std::move(cgroups), std::move(network),
                         std::move(spawner), std::move(seccomp), std::move(exec_notify), abi));
  VolumeOptions volume_options;
  volume_options.max_pooled = service->options_.max_pooled_volumes;
  volume_options.max_shared_mounted = service->options_.max_shared_volumes;
  volume_options.sweep_at_open = false;  // Housekeep
  volume_options.defer_wipe = service->options_.deferred_housekeeping;
  service->volumes_ =
      TRY(LoopVolumeFactory::Open(service->options_.state_dir + "/images", volume_options));
  if (!service->options_.deferred_housekeeping) {
    // Not fatal: what it cannot remove costs space, not this service's jobs.
    auto housekept = service->Housekeep();
    if (!housekept && service->options_.log) {
      service->options_.log(LogLevel::kWarning, housekept.error().ToString());
    }
  }
  return service;
}

Result<void> SandboxService::Housekeep() {
  Result<size_t> cgroups = SweepDeadOwnerCgroups(*cgroups_);
  Result<void> volumes = volumes_->Sweep();
  if (!cgroups && !volumes) {
    return Error::Make(cgroups.error().code(),
                       fmt::format("{}; {}", cgroups.error().message(), volumes.error().message()));
  }
  if (!cgroups) return cgroups.error();
  return volumes;
}

Result<SandboxService::Job*> SandboxService::Find(const JobId& id) const {
  auto it = jobs_.find(id);
  if (it == jobs_.end())
    return Error::Make(ErrorCode::kNotFound, fmt::format("no sandbox job '{}'", id));
  return it->second.get();
}

Result<JobId> SandboxService::CreateJob(const SandboxSpec& spec) {
  TRY(ValidateSpec(spec));
  auto job = std::make_unique<Job>();
  job->id = fmt::format("{}-{}", options_.name, next_job_++);
  job->spec = spec;
  // From here on Teardown() cleans up whatever exists.
  Job& j = *job;
  auto result = [&]() -> Result<void> {
    struct stat st;
    if (spec.base_kind == BaseKind::kDirectory &&
        (::stat(spec.base.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)))
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("base: '{}' is not a directory", spec.base));
    j.volume =
        TRY_CTX(volumes_->Acquire(spec.limits.disk_bytes, options_.ids.host_base), "upper volume");
    // Everything of the job lives in its volume (see storage.h): nothing is
    // created or deleted on the state dir's own filesystem per job.
    j.dir = j.volume->mount_point();
    if (spec.base_kind == BaseKind::kDirectory) {
      j.paths.lower = spec.base;
    } else {
      j.base_mount = j.dir + "/base";
      if (::mkdir(j.base_mount.c_str(), 0755) != 0)
        return Io(fmt::format("mkdir {}", j.base_mount));
      TRY_CTX(MountImageReadOnly(spec.base, j.base_mount), "base");
      j.paths.lower = j.base_mount;
    }
    j.paths.upper = j.volume->mount_point() + "/upper";
    j.paths.work = j.volume->mount_point() + "/work";
    for (const std::string& path : {j.paths.upper, j.paths.work}) {
      if (::mkdir(path.c_str(), 0755) != 0) return Io(fmt::format("mkdir {}", path));
      // The overlay is mounted inside the job's user namespace: its root
      // (the mapped host_base) must own upper and work.
      if (::chown(path.c_str(), options_.ids.host_base, options_.ids.host_base) != 0)
        return Io(fmt::format("chown {}", path));
    }
    // The overlay's mount point; kept (empty) when the volume is reused.
    j.paths.root = j.dir + "/root";
    if (::mkdir(j.paths.root.c_str(), 0755) != 0 && errno != EEXIST)
      return Io(fmt::format("mkdir {}", j.paths.root));
    if (spec.network.enabled) {
      if (!network_)
        return Error::Make(ErrorCode::kUnsupported,
                           "network.enabled: this build has no network support (sandbox/net); "
                           "disable the network");
      j.paths.resolv = j.dir + "/resolv.conf";
      UniqueFd fd(::open(j.paths.resolv.c_str(),
                         O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
      if (!fd) return Io(fmt::format("create {}", j.paths.resolv));
    }
    j.mounts = TRY(PlanMounts(spec, j.paths));
    // Bind mount points are files when the source is a file.
    for (size_t i = 0; i < spec.binds.size(); ++i) {
      if (::stat(spec.binds[i].source.c_str(), &st) != 0)
        return Error::FromErrno(ErrorCode::kInvalidArgument,
                                fmt::format("binds[{}].source: {}", i, spec.binds[i].source),
                                errno);
      for (UpperEntry& entry : j.mounts.upper_entries) {
        if (entry.path == spec.binds[i].destination.substr(1))
          entry.directory = S_ISDIR(st.st_mode);
      }
    }
    TRY_CTX(CreateUpperEntries(j.paths.upper, j.mounts.upper_entries, options_.ids.host_base),
            "preparing the upper");
    j.cgroup = TRY(cgroups_->CreateJob(j.id, PlanCgroupSettings(spec.limits, cgroups_->version())));
    j.rlimits = PlanRlimits(spec.limits);
    j.exec_candidates = ExecCandidates(spec);
    for (const std::string& candidate : j.exec_candidates)
      j.exec_pointers.push_back(candidate.c_str());
    for (std::string& arg : j.spec.argv) j.argv_pointers.push_back(arg.data());
    j.argv_pointers.push_back(nullptr);
    for (std::string& entry : j.spec.env) j.env_pointers.push_back(entry.data());
    j.env_pointers.push_back(nullptr);
    return {};
  }();
  if (!result) {
    IgnoreError(Teardown(j));
    return std::move(result).error().WithContext(fmt::format("creating sandbox {}", j.id));
  }
  JobId id = job->id;
  jobs_.emplace(id, std::move(job));
  return id;
}

Result<void> SandboxService::Run(const JobId& id) {
  Job& job = *TRY(Find(id));
  if (job.state != Job::State::kCreated)
    return Error::Make(ErrorCode::kInvalidState, fmt::format("sandbox {} was already started", id));
  int fds[2];
  // A socketpair, not a pipe: send(MSG_NOSIGNAL) to a child that already
  // died returns EPIPE instead of raising SIGPIPE in the service.
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return Io("socketpair");
  UniqueFd sync_read(fds[0]), sync_write(fds[1]);
  if (::pipe2(fds, O_CLOEXEC) != 0) return Io("pipe2");
  UniqueFd error_read(fds[0]), error_write(fds[1]);
  UniqueFd child_in, child_out, child_err;
  if (job.spec.stdio == StdioMode::kPty) {
    UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master) return Io("posix_openpt");
    if (::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0) return Io("unlockpt");
    char name[64];
    if (::ptsname_r(master.get(), name, sizeof name) != 0) return Io("ptsname_r");
    child_in.reset(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!child_in) return Io(fmt::format("open {}", name));
    child_out.reset(::fcntl(child_in.get(), F_DUPFD_CLOEXEC, 3));
    child_err.reset(::fcntl(child_in.get(), F_DUPFD_CLOEXEC, 3));
    if (!child_out || !child_err) return Io("dup pty slave");
    if (auto sized = ResizeTerminal(master.get(), job.spec.terminal_size); !sized)
      return std::move(sized).error();
    // Wait polls before it reads; writers of TerminalFd must never block.
    int flags = ::fcntl(master.get(), F_GETFL);
    if (flags < 0 || ::fcntl(master.get(), F_SETFL, flags | O_NONBLOCK) != 0)
      return Io("making the pty master non-blocking");
    job.out = std::move(master);
  } else {
    child_in.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!child_in) return Io("open /dev/null");
    if (::pipe2(fds, O_CLOEXEC) != 0) return Io("pipe2");
    job.out.reset(fds[0]);
    child_out.reset(fds[1]);
    if (::pipe2(fds, O_CLOEXEC) != 0) return Io("pipe2");
    job.err.reset(fds[0]);
    child_err.reset(fds[1]);
  }

  ChildPlan plan;
  plan.sync_fd = sync_read.get();
  plan.parent_sync_fd = sync_write.get();
  plan.error_fd = error_write.get();
  plan.stdin_fd = child_in.get();
  plan.stdout_fd = child_out.get();
  plan.stderr_fd = child_err.get();
  plan.controlling_tty = job.spec.stdio == StdioMode::kPty;
  plan.mounts = &job.mounts.ops;
  plan.root = job.paths.root.c_str();
  plan.hostname = job.spec.hostname.c_str();
  plan.rlimits = &job.rlimits;
  plan.cwd = job.spec.cwd.c_str();
  plan.last_cap = last_cap_;
  plan.landlock_abi = landlock_abi_;
  plan.seccomp = seccomp_.program();
  if (job.spec.record_exec) plan.exec_notify = &exec_notify_;
  plan.exec_candidates = &job.exec_pointers;
  plan.argv = job.argv_pointers.data();
  plan.envp = job.env_pointers.data();

  SpawnRequest request;
  request.flags =
      CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
  int cgroup_fd = job.cgroup->clone_into_fd();
  if (cgroup_fd >= 0) {
    // v2: born in its cgroup (no window outside the limits), with that
    // cgroup as the root of its cgroup namespace.
    request.flags |= CLONE_INTO_CGROUP | CLONE_NEWCGROUP;
    request.cgroup_fd = cgroup_fd;
  } else {
    plan.unshare_cgroup_ns = true;  // after the parent attached it (v1)
  }
  request.entry = &ChildEntry;
  request.arg = &plan;
  // The child runs on the spawner's stack and shares our memory until it
  // has exec'd (EOF on the error pipe, below) or been reaped (fail): `plan`
  // and everything it points to stay as they are until then, and every path
  // out of this function passes one of the two.
  spawner_->Spawn(request);
  // While the spawner clones the child (new namespaces: most of a
  // millisecond), the network service starts if it has not and the job's
  // nft table is committed unless it is ready: Create below then only
  // makes the veth, while the child builds its filesystem.
  Result<void> network_prepared;
  if (job.spec.network.enabled) network_prepared = network_->Prepare(job.spec.network);
  auto child = spawner_->AwaitChild(sync_write.get());
  if (!child) return std::move(child).error().WithContext(fmt::format("starting sandbox {}", id));
  pid_t pid = child->pid;
  job.pid = pid;
  job.pidfd = std::move(child->pidfd);
  // Best effort: without it the namespace goes with the job's exit instead.
  job.mount_ns.reset(
      ::open(fmt::format("/proc/{}/ns/mnt", pid).c_str(), O_RDONLY | O_NOCTTY | O_CLOEXEC));
  job.state = Job::State::kRunning;
  job.started = std::chrono::steady_clock::now();
  sync_read.reset();
  error_write.reset();
  child_in.reset();
  child_out.reset();
  child_err.reset();

  // The child's own report, "in the sandbox: <step>: <errno>", when it sent one.
  auto describe = [&](const ChildFailure& failure) {
    std::string step(ChildStepName(static_cast<ChildStep>(failure.step)));
    if (failure.op_index >= 0 && static_cast<size_t>(failure.op_index) < job.mounts.ops.size()) {
      const MountOp& op = job.mounts.ops[static_cast<size_t>(failure.op_index)];
      step +=
          fmt::format(" {} ({} {})", op.target, op.fstype.empty() ? "bind" : op.fstype, op.source);
    }
    if (static_cast<ChildStep>(failure.step) == ChildStep::kExec)
      step += fmt::format(" '{}'", job.spec.argv[0]);
    return Error::FromErrno(fmt::format("in the sandbox: {}", step), failure.err);
  };
  auto fail = [&](Error error) -> Result<void> {
    sync_write.reset();  // the child sees EOF and exits
    SignalPidFd(job.pidfd.get(), SIGKILL);
    siginfo_t info;
    rusage usage;
    WaitPidFd(job.pidfd.get(), &info, &usage, 0);
    job.state = Job::State::kReaped;
    job.start_failed = true;
    // The child builds its filesystem while the parent sets up the network:
    // if it failed first, its report is the cause, the parent's error only a
    // consequence (its namespaces vanished).
    pollfd report{error_read.get(), POLLIN, 0};
    ChildFailure failure;
    if (::poll(&report, 1, 0) == 1 && (report.revents & POLLIN) &&
        ::read(error_read.get(), &failure, sizeof failure) == static_cast<ssize_t>(sizeof failure))
      error = describe(failure);
    return std::move(error).WithContext(fmt::format("starting sandbox {}", id));
  };

  if (!network_prepared) return fail(std::move(network_prepared).error().WithContext("network"));
  std::string map = IdMapLine(options_.ids);
  if (auto r = WriteFileString(fmt::format("/proc/{}/uid_map", pid), map); !r)
    return fail(std::move(r).error());
  if (auto r = WriteFileString(fmt::format("/proc/{}/gid_map", pid), map); !r)
    return fail(std::move(r).error());
  auto release = [&]() -> Result<void> {
    char go = 1;
    ssize_t sent;
    do {
      sent = ::send(sync_write.get(), &go, 1, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent != 1) return Io("releasing the child");
    return {};
  };
  // The child builds its filesystem while the cgroups (v1) are attached and
  // the network is set up here; it waits for the second byte before it
  // enters its cgroup namespace and runs anything of the job.
  if (auto r = release(); !r) return fail(std::move(r).error());
  if (cgroup_fd < 0) {
    if (auto r = job.cgroup->Attach(job.pid); !r) return fail(std::move(r).error());
  }
  if (job.spec.network.enabled) {
    auto network = network_->Create(job.id, job.pid, job.spec.network);
    if (!network) return fail(std::move(network).error().WithContext("network"));
    job.network = std::move(*network);
    if (auto r = WriteFileString(job.paths.resolv,
                                 fmt::format("nameserver {}\n", job.network->resolver_address()));
        !r)
      return fail(std::move(r).error());
  }
  // A child that failed meanwhile has reported it; release() then fails
  // with EPIPE and the report below is read either way.
  bool released = static_cast<bool>(release());
  if (job.spec.record_exec) {
    // The child's own exec waits for its answer: until the exec closes the
    // error pipe, this thread supervises it.
    if (auto r = SuperviseStart(job, sync_write.get(), error_read.get()); !r)
      return fail(std::move(r).error());
  }
  ChildFailure failure;
  ssize_t n;
  do {
    n = ::read(error_read.get(), &failure, sizeof failure);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return fail(Io("reading the child's status"));
  if (n == static_cast<ssize_t>(sizeof failure)) return fail(describe(failure));
  if (n != 0) return fail(Error::Make(ErrorCode::kInternal, "short status record from the child"));
  if (!released) return fail(Error::Make(ErrorCode::kInternal, "the child vanished before exec"));
  return {};
}

Result<void> SandboxService::SuperviseStart(Job& job, int sync_fd, int error_fd) {
  bool sync_open = true;
  for (;;) {
    pollfd fds[3];
    nfds_t count = 0;
    fds[count++] = {error_fd, POLLIN, 0};
    int sync_index = -1, exec_index = -1;
    if (sync_open && !job.exec_monitor) {
      sync_index = static_cast<int>(count);
      fds[count++] = {sync_fd, POLLIN, 0};
    }
    if (job.exec_monitor) {
      exec_index = static_cast<int>(count);
      fds[count++] = {job.exec_monitor->fd(), POLLIN, 0};
    }
    if (::poll(fds, count, -1) < 0) {
      if (errno == EINTR) continue;
      return Io("poll");
    }
    // The error pipe closes once the job's first exec ran (or carries the
    // child's failure): an exec waiting from then on is the job's, for Wait.
    if (fds[0].revents) return {};
    if (exec_index >= 0 && (fds[exec_index].revents & POLLIN)) {
      std::optional<ExecRecord> record = TRY(job.exec_monitor->HandleOne());
      // Before the job runs, its execs are the sandbox's own tries of
      // ExecCandidates: one whose file is missing is no process of the job.
      if (record && !record->missing) {
        if (job.start_execs.size() < options_.exec_limits.max_kept) {
          job.start_execs.push_back(std::move(*record));
        } else {
          ++job.result.execs_dropped;
        }
      }
      continue;
    }
    if (sync_index >= 0 && fds[sync_index].revents) {
      char byte;
      iovec data{&byte, 1};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msghdr message{};
      message.msg_iov = &data;
      message.msg_iovlen = 1;
      message.msg_control = control;
      message.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(sync_fd, &message, MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {  // the child is gone: its report is on the error pipe
        sync_open = false;
        continue;
      }
      cmsghdr* header = CMSG_FIRSTHDR(&message);
      if (!header || header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS ||
          header->cmsg_len != CMSG_LEN(sizeof(int)))
        return Error::Make(ErrorCode::kInternal, "the child sent no exec listener");
      int fd;
      std::memcpy(&fd, CMSG_DATA(header), sizeof fd);
      // Sent after pivot_root: the child's root is the job's.
      job.exec_monitor = TRY(ExecMonitor::Create(UniqueFd(fd), job.pid, options_.seccomp_audit_arch,
                                                 options_.exec_limits));
      continue;
    }
  }
}

Result<JobResult> SandboxService::Wait(const JobId& id, const OutputCallback& on_output,
                                       const ExecCallback& on_exec) {
  Job& job = *TRY(Find(id));
  if (job.state == Job::State::kCreated)
    return Error::Make(ErrorCode::kInvalidState, fmt::format("sandbox {} was not started", id));
  if (job.waited)
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("sandbox {} was already waited for", id));
  if (job.start_failed)
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("sandbox {} failed to start; nothing to wait for", id));
  JobResult& result = job.result;
  bool has_deadline = job.spec.timeout.count() > 0;
  const auto deadline = job.started + job.spec.timeout;
  siginfo_t info{};
  auto deliver = [&](ExecRecord record) {
    if (on_exec) {
      on_exec(std::move(record));
    } else if (result.execs.size() < options_.exec_limits.max_kept) {
      result.execs.push_back(std::move(record));
    } else {
      ++result.execs_dropped;
    }
  };
  for (ExecRecord& record : job.start_execs) deliver(std::move(record));
  job.start_execs.clear();
  auto drain = [&](UniqueFd& fd, std::string& into, OutputStream stream) {
    char buffer[65536];
    ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {  // EOF, or EIO from a pty master whose slave is gone
      fd.reset();
      return;
    }
    if (on_output) {
      on_output(stream, std::string_view(buffer, static_cast<size_t>(n)));
      return;
    }
    size_t room = options_.output_limit_bytes - std::min(options_.output_limit_bytes, into.size());
    size_t keep = std::min(room, static_cast<size_t>(n));
    into.append(buffer, keep);
    result.output_dropped_bytes += static_cast<size_t>(n) - keep;
  };
  while (job.state == Job::State::kRunning || job.out || job.err) {
    pollfd fds[4];
    int count = 0;
    int pid_index = -1, out_index = -1, err_index = -1, exec_index = -1;
    if (job.state == Job::State::kRunning) {
      pid_index = count;
      fds[count++] = {job.pidfd.get(), POLLIN, 0};
      if (job.exec_monitor) {
        exec_index = count;
        fds[count++] = {job.exec_monitor->fd(), POLLIN, 0};
      }
    }
    if (job.out) {
      out_index = count;
      fds[count++] = {job.out.get(), POLLIN, 0};
    }
    if (job.err) {
      err_index = count;
      fds[count++] = {job.err.get(), POLLIN, 0};
    }
    int timeout_ms = -1;
    if (has_deadline && job.state == Job::State::kRunning) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      timeout_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    int ready = ::poll(fds, static_cast<nfds_t>(count), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return Io("poll");
    }
    if (ready == 0) {  // deadline
      job.timed_out = true;
      SignalPidFd(job.pidfd.get(), SIGKILL);
      IgnoreError(job.cgroup->KillAll());
      has_deadline = false;
      continue;
    }
    if (exec_index >= 0 && fds[exec_index].revents) {
      if (fds[exec_index].revents & POLLIN) {
        std::optional<ExecRecord> record = TRY(job.exec_monitor->HandleOne());
        if (record) deliver(std::move(*record));
      } else {
        job.exec_monitor.reset();  // POLLHUP: no process of the job is left
      }
    }
    if (out_index >= 0 && fds[out_index].revents)
      drain(job.out, result.stdout_data, OutputStream::kStdout);
    if (err_index >= 0 && fds[err_index].revents)
      drain(job.err, result.stderr_data, OutputStream::kStderr);
    if (pid_index >= 0 && fds[pid_index].revents) {
      if (int err = WaitPidFd(job.pidfd.get(), &info, &result.usage, 0); err != 0)
        return Error::FromErrno(fmt::format("waitid sandbox {}", id), err);
      job.state = Job::State::kReaped;
      result.wall = std::chrono::steady_clock::now() - job.started;
    }
  }
  job.waited = true;
  if (info.si_code == CLD_EXITED) {
    result.termination = Termination::kExited;
    result.exit_code = info.si_status;
  } else {
    result.termination = Termination::kSignaled;
    result.signal = info.si_status;
  }
  if (job.timed_out) result.termination = Termination::kTimedOut;
  if (job.killed) result.termination = Termination::kKilled;
  result.cgroup = job.cgroup->Usage().value_or(CgroupUsage{});
  return result;
}

Result<void> SandboxService::Kill(const JobId& id) {
  Job& job = *TRY(Find(id));
  if (job.state != Job::State::kRunning) return {};
  job.killed = true;
  // Killing PID 1 of the pid namespace kills every process in it
  // (pid_namespaces(7)); the cgroup kill covers anything racing with it.
  if (int err = SignalPidFd(job.pidfd.get(), SIGKILL); err != 0 && err != ESRCH)
    return Error::FromErrno(fmt::format("killing sandbox {}", id), err);
  return job.cgroup->KillAll();
}

Result<void> SandboxService::Teardown(Job& job) {
  Result<void> first;
  auto keep = [&](Result<void> r) {
    if (!r && first) first = std::move(r);
  };
  if (job.state == Job::State::kRunning) {
    job.killed = true;
    SignalPidFd(job.pidfd.get(), SIGKILL);
    siginfo_t info;
    rusage usage;
    if (int err = WaitPidFd(job.pidfd.get(), &info, &usage, 0); err != 0)
      keep(Error::FromErrno(fmt::format("reaping sandbox {}", job.id), err));
    job.state = Job::State::kReaped;
  }
  job.pidfd.reset();
  job.exec_monitor.reset();
  // The overlay and the rest of the job's mounts go now, before its volume
  // is wiped or reused.
  job.mount_ns.reset();
  job.out.reset();
  job.err.reset();
  if (job.network) {
    // Reaped (above, or by Wait): every process of the job is gone, so its
    // network namespace is being released and the kernel deletes the veth
    // pair with it.
    bool with_namespace = options_.network_teardown == NetworkTeardown::kWithNamespace &&
                          job.state == Job::State::kReaped;
    keep(with_namespace ? job.network->TeardownWithNamespace() : job.network->Teardown());
    job.network.reset();
  }
  if (job.cgroup) {
    keep(job.cgroup->Destroy());
    job.cgroup.reset();
  }
  if (!job.base_mount.empty()) {
    if (::umount2(job.base_mount.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
      keep(Io(fmt::format("umount {}", job.base_mount)));
  }
  // Wipes the job's files (upper, work, resolv.conf, base) with it.
  if (job.volume) keep(volumes_->Release(std::move(job.volume)));
  return first;
}

Result<void> SandboxService::Destroy(const JobId& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end())
    return Error::Make(ErrorCode::kNotFound, fmt::format("no sandbox job '{}'", id));
  auto result = Teardown(*it->second);
  jobs_.erase(it);
  if (!result)
    return std::move(result).error().WithContext(fmt::format("destroying sandbox {}", id));
  return {};
}

Result<std::string> SandboxService::WorkspacePath(const JobId& id) const {
  Job& job = *TRY(Find(id));
  return job.paths.upper + job.spec.workspace;
}

Result<int> SandboxService::PidFd(const JobId& id) const {
  Job& job = *TRY(Find(id));
  if (!job.pidfd)
    return Error::Make(ErrorCode::kInvalidState, fmt::format("sandbox {} is not running", id));
  return job.pidfd.get();
}

Result<UniqueFd> SandboxService::TerminalFd(const JobId& id) const {
  Job& job = *TRY(Find(id));
  if (job.spec.stdio != StdioMode::kPty)
    return Error::Make(ErrorCode::kInvalidState, fmt::format("sandbox {} has no pty", id));
  if (!job.out)
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("sandbox {}'s pty is not open (not run yet, or drained)", id));
  UniqueFd fd(::fcntl(job.out.get(), F_DUPFD_CLOEXEC, 3));
  if (!fd) return Io("dup pty master");
  return fd;
}

}  // namespace ralph::sandbox
