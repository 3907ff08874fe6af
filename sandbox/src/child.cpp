// The job's child between clone3() and execve(). See child.h for why this
// file only makes syscalls.
#include "child.h"

#include <fcntl.h>
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
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sandbox/landlock.h"
#include "sandbox/seccomp.h"

namespace ralph::sandbox {

std::string_view ChildStepName(ChildStep step) {
  switch (step) {
    case ChildStep::kWaitForParent: return "waiting for the parent";
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
  }
  return "unknown step";
}

namespace {

[[noreturn]] void Fail(const ChildPlan& plan, ChildStep step, int err, int op_index = -1) {
  ChildFailure failure{static_cast<int>(step), err, op_index};
  ssize_t ignored = ::write(plan.error_fd, &failure, sizeof failure);
  (void)ignored;
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
      int fd = ::open(op.target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
      if (fd < 0) return errno;
      ::close(fd);
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
  ::close(fd);
  return err;
}

// One byte from the parent; EOF (the parent gave up or died) ends the child.
void AwaitParent(const ChildPlan& plan) {
  char go = 0;
  ssize_t n;
  do {
    n = ::read(plan.sync_fd, &go, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) ::_exit(127);
}

}  // namespace

void RunChild(const ChildPlan& plan) {
  // 1. Wait until the parent has written our id maps. It attaches the
  // cgroups (v1) and sets up the network meanwhile, while we build the
  // filesystem (the resolv.conf we bind already exists, empty until then);
  // nothing of the job runs before the second byte (step 5).
  AwaitParent(plan);

  // 2. Become root of the new user namespace (mapped to the unprivileged host
  // range) and drop the host's supplementary groups. Raw syscalls: glibc's
  // wrappers apply the change to every thread of the process (nptl_setxid.c)
  // from a thread list copied from the parent, and wait for any thread the
  // parent was creating at clone time, which never comes in this copy (a
  // deadlock seen with the network service's threads starting). The kernel
  // calls change only this thread, which is all there is.
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
  // the ambient set and finally inheritable/permitted/effective.
  if (cap_set_secbits(SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                      SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                      SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED) != 0)
    Fail(plan, ChildStep::kCapabilities, errno);
  for (int cap = 0; cap <= plan.last_cap; ++cap) {
    if (cap_drop_bound(static_cast<cap_value_t>(cap)) != 0)
      Fail(plan, ChildStep::kCapabilities, errno);
  }
  // One prctl (libcap's cap_reset_ambient() tests every capability first).
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
    Fail(plan, ChildStep::kCapabilities, errno);
  if (cap_set_proc(plan.empty_caps) != 0) Fail(plan, ChildStep::kCapabilities, errno);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) Fail(plan, ChildStep::kNoNewPrivs, errno);
  if (int err = ApplyLandlockInChild(plan.landlock_abi); err != 0)
    Fail(plan, ChildStep::kLandlock, err);

  // 7. Die with the service. Armed only now because any credential change
  // clears it (prctl(2), PR_SET_PDEATHSIG); then check the parent is still
  // there (it keeps its end of the sync socket open until we have exec'd).
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) Fail(plan, ChildStep::kParentDeath, errno);
  pollfd parent{plan.sync_fd, POLLIN, 0};
  if (::poll(&parent, 1, 0) < 0 || (parent.revents & POLLHUP)) ::_exit(127);

  // 8. Every fd above stdio closes on execve (the error pipe included, which
  // is how the parent learns the exec worked).
  if (::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0)
    Fail(plan, ChildStep::kStdio, errno);

  // 9. Seccomp last: the filter itself denies the mount/pivot_root above.
  if (int err = LoadSeccompProgram(plan.seccomp); err != 0) Fail(plan, ChildStep::kSeccomp, err);

  int first_error = ENOENT;
  for (const char* candidate : *plan.exec_candidates) {
    ::execve(candidate, plan.argv, plan.envp);
    if (errno != ENOENT && errno != ENOTDIR && first_error == ENOENT) first_error = errno;
  }
  Fail(plan, ChildStep::kExec, first_error);
}

}  // namespace ralph::sandbox
