// The job's child between clone3() and execve(). See child.h for why this
// file only makes syscalls.
#include "child.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <linux/securebits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sandbox/landlock.h"
#include "sandbox/seccomp.h"

namespace ralph::sandbox {

std::string_view ChildStepName(ChildStep step) {
  switch (step) {
    case ChildStep::kWaitForParent: return "waiting for the parent";
    case ChildStep::kSignals: return "resetting signal dispositions";
    case ChildStep::kSetIds: return "switching to the mapped root user";
    case ChildStep::kCgroupNamespace: return "entering a cgroup namespace";
    case ChildStep::kMakePrivate: return "making the mount tree private";
    case ChildStep::kMount: return "mounting";
    case ChildStep::kPivotRoot: return "pivot_root";
    case ChildStep::kHostname: return "setting the hostname";
    case ChildStep::kLoopback: return "bringing up loopback";
    case ChildStep::kRlimits: return "setting rlimits";
    case ChildStep::kStdio: return "setting up stdio";
    case ChildStep::kCwd: return "changing to the working directory";
    case ChildStep::kCapabilities: return "dropping capabilities";
    case ChildStep::kNoNewPrivs: return "setting no_new_privs";
    case ChildStep::kLandlock: return "applying landlock";
    case ChildStep::kParentDeath: return "arming the parent-death signal";
    case ChildStep::kSeccomp: return "loading the seccomp filter";
    case ChildStep::kExec: return "executing the command";
    case ChildStep::kExecRecording: return "setting up exec recording";
  }
  return "unknown step";
}

namespace {

// Raw syscalls for glibc's cancellation points (see child.h).
long RawRead(int fd, void* buffer, size_t size) {
  return ::syscall(SYS_read, fd, buffer, size);
}
long RawWrite(int fd, const void* buffer, size_t size) {
  return ::syscall(SYS_write, fd, buffer, size);
}
int RawOpen(const char* path, int flags, mode_t mode) {
  return static_cast<int>(::syscall(SYS_openat, AT_FDCWD, path, flags, mode));
}
void RawClose(int fd) {
  ::syscall(SYS_close, fd);
}

// The kernel's struct sigaction (x86_64 and asm-generic: handler, flags,
// restorer, 64-bit mask), not glibc's; and the kernel's sigset size.
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)();
  uint64_t mask;
};
constexpr size_t kKernelSigsetBytes = sizeof(uint64_t);
constexpr int kMaxSignal = 64;  // _NSIG: SIGRTMAX on x86_64 and aarch64

// rt_sigprocmask directly: glibc's wrappers never block its two internal
// signals (SIGCANCEL, SIGSETXID).
int SetSignalMask(uint64_t mask) {
  return ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &mask, nullptr, kKernelSigsetBytes) == 0
             ? 0
             : errno;
}

// Every signal back to SIG_DFL, the ignored ones too (SIG_IGN survives
// execve; CLONE_CLEAR_SIGHAND left them ignored). rt_sigaction directly:
// glibc's sigaction() refuses its internal signals.
int ResetSignalDispositions() {
  KernelSigaction action{};
  action.handler = SIG_DFL;
  for (int sig = 1; sig <= kMaxSignal; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (::syscall(SYS_rt_sigaction, sig, &action, nullptr, kKernelSigsetBytes) != 0) return errno;
  }
  return 0;
}

// Sends `fd` to the parent as SCM_RIGHTS with one byte. Raw sendmsg (a
// cancellation point in glibc). Returns 0 or an errno.
int SendFd(int socket, int fd) {
  char byte = 0;
  iovec data{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &data;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
  long sent;
  do {
    sent = ::syscall(SYS_sendmsg, socket, &message, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  return sent == 1 ? 0 : (sent < 0 ? errno : EIO);
}

[[noreturn]] void Fail(const ChildPlan& plan, ChildStep step, int err, int op_index = -1) {
  ChildFailure failure{static_cast<int>(step), err, op_index};
  RawWrite(plan.error_fd, &failure, sizeof failure);
  ::_exit(127);
}

int ApplyMount(const MountOp& op) {
  switch (op.kind) {
    case MountOpKind::kMount:
      return ::mount(op.source.c_str(), op.target.c_str(), op.fstype.c_str(), op.flags,
                     op.data.c_str()) == 0
                 ? 0
                 : errno;
    case MountOpKind::kBind:
      return ::mount(op.source.c_str(), op.target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) == 0
                 ? 0
                 : errno;
    case MountOpKind::kSetAttr: {
      mount_attr attr{};
      attr.attr_set = op.attr_set;
      // Raw syscall: glibc 2.36 has no mount_setattr wrapper. Recursive, so
      // submounts of a bind become read-only too (a plain MS_REMOUNT would
      // miss them).
      return ::syscall(SYS_mount_setattr, AT_FDCWD, op.target.c_str(), AT_RECURSIVE, &attr,
                       sizeof attr) == 0
                 ? 0
                 : errno;
    }
    case MountOpKind::kMakeFile: {
      int fd = RawOpen(op.target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
      if (fd < 0) return errno;
      RawClose(fd);
      return 0;
    }
    case MountOpKind::kSymlink:
      return ::symlink(op.source.c_str(), op.target.c_str()) == 0 ? 0 : errno;
    case MountOpKind::kMakeDir: return ::mkdir(op.target.c_str(), 0755) == 0 ? 0 : errno;
  }
  return EINVAL;
}

int BringUpLoopback() {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  ifreq request;
  std::memset(&request, 0, sizeof request);
  std::memcpy(request.ifr_name, "lo", 3);
  int err = 0;
  if (::ioctl(fd, SIOCGIFFLAGS, &request) != 0) {
    err = errno;
  } else {
    request.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (::ioctl(fd, SIOCSIFFLAGS, &request) != 0) err = errno;
  }
  RawClose(fd);
  return err;
}

// One byte from the parent; EOF (the parent gave up or died) ends the child.
void AwaitParent(const ChildPlan& plan) {
  char go = 0;
  ssize_t n;
  do {
    n = RawRead(plan.sync_fd, &go, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) ::_exit(127);
}

}  // namespace

void ChildEntry(void* plan) {
  RunChild(*static_cast<const ChildPlan*>(plan));
}

void RunChild(const ChildPlan& plan) {
  // 0. Every signal blocked, glibc's internal ones too (the spawner's mask
  // has all others blocked already): no signal is delivered to us until the
  // job's mask is set right before execve, and none can run a handler (the
  // spawner cloned with CLONE_CLEAR_SIGHAND). Then tell the parent we exist
  // (it learns our pid from the kernel) and reset every disposition while it
  // writes our id maps. MSG_NOSIGNAL: a parent gone is EPIPE, not SIGPIPE.
  if (int err = SetSignalMask(~uint64_t{0}); err != 0) Fail(plan, ChildStep::kSignals, err);
  // Only the parent may hold the other end: its death is then our EOF.
  if (plan.parent_sync_fd >= 0) RawClose(plan.parent_sync_fd);
  char hello = 1;
  if (::syscall(SYS_sendto, plan.sync_fd, &hello, 1, MSG_NOSIGNAL, nullptr, 0) != 1) ::_exit(127);
  if (int err = ResetSignalDispositions(); err != 0) Fail(plan, ChildStep::kSignals, err);

  // 1. Wait until the parent has written our id maps. It attaches the
  // cgroups (v1) and sets up the network meanwhile, while we build the
  // filesystem (the resolv.conf we bind already exists, empty until then);
  // nothing of the job runs before the second byte (step 5).
  AwaitParent(plan);

  // 2. Become root of the new user namespace (mapped to the unprivileged host
  // range) and drop the host's supplementary groups. Raw syscalls: glibc's
  // wrappers apply the change to every thread of the process (nptl_setxid.c)
  // by signalling the threads on its thread list, which in this child that
  // shares the service's memory is the service's own. The kernel calls
  // change only this process, which is all there is.
  if (::syscall(SYS_setresgid, 0, 0, 0) != 0) Fail(plan, ChildStep::kSetIds, errno);
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) Fail(plan, ChildStep::kSetIds, errno);
  if (::syscall(SYS_setresuid, 0, 0, 0) != 0) Fail(plan, ChildStep::kSetIds, errno);

  // 3. Filesystem. Nothing we mount may propagate back to the host.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    Fail(plan, ChildStep::kMakePrivate, errno);
  for (size_t i = 0; i < plan.mounts->size(); ++i) {
    int err = ApplyMount((*plan.mounts)[i]);
    if (err != 0) Fail(plan, ChildStep::kMount, err, static_cast<int>(i));
  }
  // pivot_root(".", ".") stacks the old root under the new one; detaching it
  // leaves no path to the host tree (see pivot_root(2), "NOTES").
  if (::chdir(plan.root) != 0) Fail(plan, ChildStep::kPivotRoot, errno);
  if (::syscall(SYS_pivot_root, ".", ".") != 0) Fail(plan, ChildStep::kPivotRoot, errno);
  if (::umount2(".", MNT_DETACH) != 0) Fail(plan, ChildStep::kPivotRoot, errno);
  if (::chdir("/") != 0) Fail(plan, ChildStep::kPivotRoot, errno);

  if (::sethostname(plan.hostname, std::strlen(plan.hostname)) != 0)
    Fail(plan, ChildStep::kHostname, errno);
  if (int err = BringUpLoopback(); err != 0) Fail(plan, ChildStep::kLoopback, err);

  for (const RlimitSetting& setting : *plan.rlimits) {
    rlimit limit{setting.soft, setting.hard};
    if (::setrlimit(setting.resource, &limit) != 0) Fail(plan, ChildStep::kRlimits, errno);
  }

  // 4. stdio, a new session (no controlling terminal of the host), and with
  // a pty the slave as controlling terminal.
  if (::dup2(plan.stdin_fd, 0) < 0 || ::dup2(plan.stdout_fd, 1) < 0 ||
      ::dup2(plan.stderr_fd, 2) < 0)
    Fail(plan, ChildStep::kStdio, errno);
  if (::setsid() < 0) Fail(plan, ChildStep::kStdio, errno);
  if (plan.controlling_tty && ::ioctl(0, TIOCSCTTY, 0) != 0) Fail(plan, ChildStep::kStdio, errno);
  if (::chdir(plan.cwd) != 0) Fail(plan, ChildStep::kCwd, errno);

  // 5. The parent has attached us to the job's cgroups (v1) and set up the
  // network: the second byte. The cgroup namespace is made now, rooted at the
  // job's cgroup, while we still hold CAP_SYS_ADMIN in our user namespace.
  AwaitParent(plan);
  if (plan.unshare_cgroup_ns && ::unshare(CLONE_NEWCGROUP) != 0)
    Fail(plan, ChildStep::kCgroupNamespace, errno);

  // 6. Privileges. Securebits first (needs CAP_SETPCAP): root inside never
  // regains capabilities through execve or setuid. Then the bounding set,
  // the ambient set and finally inheritable/permitted/effective. prctl and
  // capset directly: libcap's cap_set_proc locks a mutex inside its cap_t,
  // memory of the service's.
  if (::prctl(PR_SET_SECUREBITS,
              SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                  SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                  SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
              0, 0, 0) != 0)
    Fail(plan, ChildStep::kCapabilities, errno);
  for (int cap = 0; cap <= plan.last_cap; ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) Fail(plan, ChildStep::kCapabilities, errno);
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
    Fail(plan, ChildStep::kCapabilities, errno);
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct no_caps[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capset, &header, no_caps) != 0) Fail(plan, ChildStep::kCapabilities, errno);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) Fail(plan, ChildStep::kNoNewPrivs, errno);
  if (int err = ApplyLandlockInChild(plan.landlock_abi); err != 0)
    Fail(plan, ChildStep::kLandlock, err);

  // 7. Die with the service: our parent is its spawner thread, which lives
  // as long as the service. Armed only now because any credential change
  // clears it (prctl(2), PR_SET_PDEATHSIG); then check the parent is still
  // there (it keeps its end of the sync socket open until we have exec'd).
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) Fail(plan, ChildStep::kParentDeath, errno);
  pollfd parent{plan.sync_fd, POLLIN, 0};
  timespec now{0, 0};
  if (::syscall(SYS_ppoll, &parent, 1, &now, nullptr, 0) < 0 || (parent.revents & POLLHUP))
    ::_exit(127);

  // 8. Every fd above stdio closes on execve (the error pipe included, which
  // is how the parent learns the exec worked).
  if (::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0)
    Fail(plan, ChildStep::kStdio, errno);

  // 9. Seccomp last: the filter itself denies the mount/pivot_root above.
  // The exec-recording filter first: from here on every exec, ours below
  // included, waits for the parent, which has its listener.
  if (plan.exec_notify) {
    int listener = -1;
    if (int err = LoadExecNotifyFilter(plan.exec_notify, &listener); err != 0)
      Fail(plan, ChildStep::kExecRecording, err);
    int err = SendFd(plan.sync_fd, listener);
    RawClose(listener);
    if (err != 0) Fail(plan, ChildStep::kExecRecording, err);
  }
  if (int err = LoadSeccompProgram(plan.seccomp); err != 0) Fail(plan, ChildStep::kSeccomp, err);

  // 10. The job starts with an empty signal mask (a mask survives execve;
  // so do ignored dispositions, reset in step 0). A signal pending from
  // now on is delivered with its default action.
  if (int err = SetSignalMask(0); err != 0) Fail(plan, ChildStep::kSignals, err);
  int first_error = ENOENT;
  for (const char* candidate : *plan.exec_candidates) {
    ::execve(candidate, plan.argv, plan.envp);
    if (errno != ENOENT && errno != ENOTDIR && first_error == ENOENT) first_error = errno;
  }
  Fail(plan, ChildStep::kExec, first_error);
}

}  // namespace ralph::sandbox
