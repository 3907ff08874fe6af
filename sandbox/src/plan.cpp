// Pure planning functions (see plan.h). No syscalls here.
#include "sandbox/plan.h"

#include <fcntl.h>
#include <linux/mount.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <string_view>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

// An absolute, normalised path inside the sandbox: starts with '/', no "."
// or ".." component, no empty component, not "/" itself.
Result<void> CheckSandboxPath(std::string_view what, const std::string& path) {
  if (path.empty() || path[0] != '/')
    return Invalid(fmt::format("{}: must be absolute, got '{}'", what, path));
  if (path == "/") return Invalid(fmt::format("{}: must not be '/'", what));
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string_view part(path.data() + start, end - start);
    if (part.empty() || part == "." || part == "..")
      return Invalid(fmt::format("{}: '{}' has an empty, '.' or '..' component", what, path));
    start = end + 1;
  }
  if (path.find('\0') != std::string::npos || path.find(',') != std::string::npos)
    return Invalid(fmt::format("{}: '{}' contains a NUL or ','", what, path));
  return {};
}

}  // namespace

Result<void> ValidateSpec(const SandboxSpec& spec) {
  if (spec.base.empty() || spec.base[0] != '/')
    return Invalid(fmt::format("base: must be an absolute path, got '{}'", spec.base));
  // Overlay options are comma- and colon-separated; such a path cannot be passed.
  if (spec.base.find_first_of(",:") != std::string::npos)
    return Invalid(fmt::format("base: '{}' contains ',' or ':'", spec.base));
  if (spec.argv.empty() || spec.argv[0].empty()) return Invalid("argv: the command is empty");
  for (size_t i = 0; i < spec.env.size(); ++i) {
    if (spec.env[i].find('=') == std::string::npos || spec.env[i][0] == '=')
      return Invalid(fmt::format("env[{}]: '{}' is not NAME=value", i, spec.env[i]));
  }
  if (spec.cwd.empty() || spec.cwd[0] != '/')
    return Invalid(fmt::format("cwd: must be absolute, got '{}'", spec.cwd));
  TRY(CheckSandboxPath("workspace", spec.workspace));
  static constexpr std::string_view kReserved[] = {"/proc", "/dev", "/sys", "/tmp"};
  for (size_t i = 0; i < spec.binds.size(); ++i) {
    const BindMount& bind = spec.binds[i];
    std::string what = fmt::format("binds[{}]", i);
    if (bind.source.empty() || bind.source[0] != '/')
      return Invalid(
          fmt::format("{}.source: must be an absolute host path, got '{}'", what, bind.source));
    TRY(CheckSandboxPath(what + ".destination", bind.destination));
    for (std::string_view reserved : kReserved) {
      if (bind.destination == reserved ||
          (bind.destination.size() > reserved.size() &&
           bind.destination.compare(0, reserved.size(), reserved) == 0 &&
           bind.destination[reserved.size()] == '/'))
        return Invalid(fmt::format("{}.destination: '{}' is reserved for the sandbox's own {}",
                                   what, bind.destination, reserved));
    }
  }
  const Limits& l = spec.limits;
  if (l.memory_bytes < (16ull << 20))
    return Invalid(fmt::format("limits.memory_bytes: {} is below 16 MiB", l.memory_bytes));
  if (l.pids < 1) return Invalid("limits.pids: must be at least 1");
  if (l.pids > 1'000'000) return Invalid(fmt::format("limits.pids: {} is above 1000000", l.pids));
  if (l.cpu_millis < 10)
    return Invalid(fmt::format("limits.cpu_millis: {} is below 10", l.cpu_millis));
  if (l.io_weight < 1 || l.io_weight > 10000)
    return Invalid(fmt::format("limits.io_weight: {} is outside 1..10000", l.io_weight));
  if (l.disk_bytes < (16ull << 20))
    return Invalid(fmt::format("limits.disk_bytes: {} is below 16 MiB", l.disk_bytes));
  if (l.tmp_bytes < (1ull << 20))
    return Invalid(fmt::format("limits.tmp_bytes: {} is below 1 MiB", l.tmp_bytes));
  if (l.open_files < 16 || l.open_files > (1ull << 20))
    return Invalid(fmt::format("limits.open_files: {} is outside 16..1048576", l.open_files));
  if (l.file_size_bytes == 0) return Invalid("limits.file_size_bytes: must be positive");
  if (spec.hostname.empty() || spec.hostname.size() > 64)
    return Invalid(fmt::format("hostname: '{}' must be 1..64 characters", spec.hostname));
  if (spec.timeout.count() < 0) return Invalid("timeout: must not be negative");
  for (auto [name, value] : {std::pair{"terminal_size.columns", spec.terminal_size.columns},
                             std::pair{"terminal_size.rows", spec.terminal_size.rows}}) {
    if (value < 1 || value > kMaxTerminalDimension)
      return Invalid(
          fmt::format("{}: {} is out of range 1..{}", name, value, kMaxTerminalDimension));
  }
  return {};
}

std::string IdMapLine(const IdMapping& mapping) {
  return fmt::format("0 {} {}\n", mapping.host_base, mapping.count);
}

Result<MountPlan> PlanMounts(const SandboxSpec& spec, const JobPaths& paths) {
  TRY(ValidateSpec(spec));
  for (const std::string* p : {&paths.lower, &paths.upper, &paths.work, &paths.root}) {
    if (p->empty() || (*p)[0] != '/' || p->find_first_of(",:") != std::string::npos)
      return Invalid(fmt::format("job paths: '{}' must be absolute without ',' or ':'", *p));
  }
  MountPlan plan;
  const std::string& root = paths.root;
  auto in_root = [&](std::string_view path) { return root + std::string(path); };

  // Mount points, created in the fresh upper so they exist whatever the base holds.
  plan.upper_entries.push_back({"proc", true, false, 0555});
  plan.upper_entries.push_back({"dev", true, false, 0755});
  plan.upper_entries.push_back({"tmp", true, false, 01777});
  plan.upper_entries.push_back({"etc", true, false, 0755});
  auto add_parents_and = [&](const std::string& path, bool directory, bool owned_by_job,
                             uint32_t mode) {
    // path is absolute and normalised (checked by ValidateSpec).
    size_t pos = 1;
    while ((pos = path.find('/', pos)) != std::string::npos) {
      std::string parent = path.substr(1, pos - 1);
      bool seen = std::any_of(plan.upper_entries.begin(), plan.upper_entries.end(),
                              [&](const UpperEntry& e) { return e.path == parent; });
      if (!seen) plan.upper_entries.push_back({parent, true, false, 0755});
      ++pos;
    }
    plan.upper_entries.push_back({path.substr(1), directory, owned_by_job, mode});
  };
  add_parents_and(spec.workspace, true, true, 0755);

  // 1. The root: overlay of the read-only base and the job's upper. userxattr:
  // the overlay is mounted inside the job's user namespace, where trusted.*
  // xattrs are not available (Documentation/filesystems/overlayfs.rst,
  // "Permission model" / "userxattr"). volatile (same file, "Volatile
  // mount"): no sync of the upper, neither the job's fsync()s nor the
  // overlay's own sync_filesystem when the job's mount namespace goes (a
  // writeback wait in Destroy). The upper lives as long as the job: its
  // files are collected from the page cache before Destroy wipes the volume
  // (work/ with it, where volatile leaves its marker; a reused volume gets a
  // fresh one).
  plan.ops.push_back({MountOpKind::kMount, "overlay", root, "overlay", MS_NOSUID | MS_NODEV,
                      fmt::format("lowerdir={},upperdir={},workdir={},userxattr,volatile",
                                  paths.lower, paths.upper, paths.work)});
  // 2. A fresh /proc for the job's pid namespace. hidepid=invisible hides
  // processes of other users; subset=pid drops everything but the process
  // directories (/proc/sys, /proc/kcore, /proc/sysrq-trigger...).
  std::string proc_data =
      spec.proc_subset_pid ? "hidepid=invisible,subset=pid" : "hidepid=invisible";
  plan.ops.push_back({MountOpKind::kMount, "proc", in_root("/proc"), "proc",
                      MS_NOSUID | MS_NODEV | MS_NOEXEC, proc_data});
  // 3. A minimal /dev: a small tmpfs with the harmless character devices
  // bind-mounted from the host (device nodes cannot be created in a user
  // namespace, which is also what keeps the job from making any).
  plan.ops.push_back({MountOpKind::kMount, "tmpfs", in_root("/dev"), "tmpfs", MS_NOSUID | MS_NOEXEC,
                      "mode=0755,size=64k,nr_inodes=64"});
  for (const char* dev : {"null", "zero", "full", "random", "urandom", "tty"}) {
    std::string target = in_root(std::string("/dev/") + dev);
    plan.ops.push_back({MountOpKind::kMakeFile, "", target});
    plan.ops.push_back({MountOpKind::kBind, std::string("/dev/") + dev, target});
    plan.ops.push_back(
        {MountOpKind::kSetAttr, "", target, "", 0, "", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC});
  }
  plan.ops.push_back({MountOpKind::kMakeDir, "", in_root("/dev/pts")});
  plan.ops.push_back({MountOpKind::kMount, "devpts", in_root("/dev/pts"), "devpts",
                      MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"});
  plan.ops.push_back({MountOpKind::kSymlink, "pts/ptmx", in_root("/dev/ptmx")});
  plan.ops.push_back({MountOpKind::kMakeDir, "", in_root("/dev/shm")});
  plan.ops.push_back({MountOpKind::kMount, "tmpfs", in_root("/dev/shm"), "tmpfs",
                      MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=16m"});
  plan.ops.push_back({MountOpKind::kSymlink, "/proc/self/fd", in_root("/dev/fd")});
  plan.ops.push_back({MountOpKind::kSymlink, "/proc/self/fd/0", in_root("/dev/stdin")});
  plan.ops.push_back({MountOpKind::kSymlink, "/proc/self/fd/1", in_root("/dev/stdout")});
  plan.ops.push_back({MountOpKind::kSymlink, "/proc/self/fd/2", in_root("/dev/stderr")});
  // 4. /tmp: a size-limited tmpfs (its pages are charged to the job's memory cgroup).
  plan.ops.push_back({MountOpKind::kMount, "tmpfs", in_root("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV,
                      fmt::format("mode=1777,size={}", spec.limits.tmp_bytes)});
  // 5. The spec's binds, in order; read-only unless asked, never suid or devices.
  for (const BindMount& bind : spec.binds) {
    // The mount point: a directory unless the source is a file. The service
    // decides (it can stat the source); the plan marks directory by default
    // and the service flips it for files before applying.
    add_parents_and(bind.destination, true, false, 0755);
    std::string target = in_root(bind.destination);
    plan.ops.push_back({MountOpKind::kBind, bind.source, target});
    uint64_t attr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if (bind.access == BindAccess::kReadOnly) attr |= MOUNT_ATTR_RDONLY;
    plan.ops.push_back({MountOpKind::kSetAttr, "", target, "", 0, "", attr});
  }
  // 6. The resolver the network code chose.
  if (!paths.resolv.empty()) {
    plan.upper_entries.push_back({"etc/resolv.conf", false, false, 0644});
    std::string target = in_root("/etc/resolv.conf");
    plan.ops.push_back({MountOpKind::kBind, paths.resolv, target});
    plan.ops.push_back(
        {MountOpKind::kSetAttr, "", target, "", 0, "",
         MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC});
  }
  return plan;
}

std::vector<CgroupSetting> PlanCgroupSettings(const Limits& limits, CgroupVersion version) {
  // CPU bandwidth: quota per 100 ms period.
  constexpr uint64_t kPeriodUs = 100000;
  uint64_t quota_us = static_cast<uint64_t>(limits.cpu_millis) * kPeriodUs / 1000;
  std::vector<CgroupSetting> out;
  if (version == CgroupVersion::kV2) {
    // Documentation/admin-guide/cgroup-v2.rst
    out.push_back({"", "memory.max", std::to_string(limits.memory_bytes)});
    out.push_back({"", "memory.swap.max", "0"});
    // One OOM kill takes the whole job down rather than leaving it half alive.
    out.push_back({"", "memory.oom.group", "1"});
    out.push_back({"", "pids.max", std::to_string(limits.pids)});
    out.push_back({"", "cpu.max", fmt::format("{} {}", quota_us, kPeriodUs)});
    // io.weight exists only with an I/O scheduler that supports it (BFQ) or
    // io.cost; it is a relative share, never a hard limit.
    out.push_back({"", "io.weight", fmt::format("default {}", limits.io_weight), false});
  } else {
    // Documentation/admin-guide/cgroup-v1/{memory,pids}.rst, scheduler/sched-bwc.rst
    out.push_back({"memory", "memory.limit_in_bytes", std::to_string(limits.memory_bytes)});
    // memsw = memory + swap; equal to the memory limit means no swap. Exists
    // only with swap accounting; swappiness 0 covers kernels without it.
    out.push_back(
        {"memory", "memory.memsw.limit_in_bytes", std::to_string(limits.memory_bytes), false});
    out.push_back({"memory", "memory.swappiness", "0", false});
    out.push_back({"pids", "pids.max", std::to_string(limits.pids)});
    out.push_back({"cpu", "cpu.cfs_period_us", std::to_string(kPeriodUs)});
    out.push_back({"cpu", "cpu.cfs_quota_us", std::to_string(quota_us)});
    // v1 blkio weights range 10..1000 (v2's 1..10000 scaled down).
    uint32_t weight = std::clamp<uint32_t>(limits.io_weight / 10, 10, 1000);
    out.push_back({"blkio", "blkio.bfq.weight", std::to_string(weight), false});
  }
  return out;
}

std::vector<RlimitSetting> PlanRlimits(const Limits& limits) {
  return {
      {RLIMIT_NOFILE, limits.open_files, limits.open_files},
      // Counted per user in the job's own user namespace (kernel >= 5.14
      // ucounts), so sandboxes do not share it; pids.max is the real bound.
      {RLIMIT_NPROC, limits.pids, limits.pids},
      {RLIMIT_CORE, 0, 0},
      {RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes},
      {RLIMIT_MEMLOCK, 64 << 10, 64 << 10},
  };
}

uint64_t NamespaceCloneFlags() {
  return CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
         CLONE_NEWPID | CLONE_NEWNET | 0x80 /* CLONE_NEWTIME, absent from older headers */;
}

const std::vector<std::string>& AlwaysDeniedSyscalls() {
  static const std::vector<std::string> kDenied = {"mount",
                                                   "umount",
                                                   "umount2",
                                                   "pivot_root",
                                                   "chroot",
                                                   "setns",
                                                   "keyctl",
                                                   "add_key",
                                                   "request_key",
                                                   "bpf",
                                                   "perf_event_open",
                                                   "ptrace",
                                                   "process_vm_readv",
                                                   "process_vm_writev",
                                                   "userfaultfd",
                                                   "io_uring_setup",
                                                   "io_uring_enter",
                                                   "io_uring_register",
                                                   "kexec_load",
                                                   "kexec_file_load",
                                                   "init_module",
                                                   "finit_module",
                                                   "delete_module",
                                                   "create_module",
                                                   "open_by_handle_at",
                                                   "name_to_handle_at",
                                                   "reboot",
                                                   "swapon",
                                                   "swapoff",
                                                   "acct",
                                                   "clock_settime",
                                                   "clock_adjtime",
                                                   "settimeofday",
                                                   "adjtimex",
                                                   "stime",
                                                   "syslog",
                                                   "quotactl",
                                                   "quotactl_fd",
                                                   "fsopen",
                                                   "fsconfig",
                                                   "fsmount",
                                                   "fspick",
                                                   "move_mount",
                                                   "open_tree",
                                                   "mount_setattr",
                                                   "iopl",
                                                   "ioperm",
                                                   "lookup_dcookie",
                                                   "nfsservctl",
                                                   "vhangup",
                                                   "uselib",
                                                   "_sysctl",
                                                   "sysfs",
                                                   "ustat",
                                                   "pidfd_getfd",
                                                   "process_madvise",
                                                   "memfd_secret",
                                                   "migrate_pages",
                                                   "move_pages",
                                                   "kcmp",
                                                   "unshare",
                                                   "clone",
                                                   "clone3",
                                                   "personality",
                                                   "socket",
                                                   "mknod",
                                                   "mknodat"};
  // unshare, clone, clone3, personality and socket are allowed only with the
  // argument conditions in DefaultSeccompPolicy(); mknod(at) only fail
  // without capabilities anyway and are denied outright.
  return kDenied;
}

SeccompPolicy DefaultSeccompPolicy() {
  // Based on the syscalls that shells, coreutils, git, node, python, gcc/clang
  // and their build tools use (compare Docker's default profile,
  // moby/profiles/seccomp/default.json), without anything that manages the
  // kernel, mounts, namespaces, keys, tracing or time.
  static constexpr const char* kAllowed[] = {"accept",
                                             "accept4",
                                             "access",
                                             "alarm",
                                             "arch_prctl",
                                             "bind",
                                             "brk",
                                             "capget",
                                             "capset",
                                             "chdir",
                                             "chmod",
                                             "chown",
                                             "chown32",
                                             "clock_getres",
                                             "clock_gettime",
                                             "clock_nanosleep",
                                             "close",
                                             "close_range",
                                             "connect",
                                             "copy_file_range",
                                             "creat",
                                             "dup",
                                             "dup2",
                                             "dup3",
                                             "epoll_create",
                                             "epoll_create1",
                                             "epoll_ctl",
                                             "epoll_pwait",
                                             "epoll_pwait2",
                                             "epoll_wait",
                                             "eventfd",
                                             "eventfd2",
                                             "execve",
                                             "execveat",
                                             "exit",
                                             "exit_group",
                                             "faccessat",
                                             "faccessat2",
                                             "fadvise64",
                                             "fallocate",
                                             "fchdir",
                                             "fchmod",
                                             "fchmodat",
                                             "fchmodat2",
                                             "fchown",
                                             "fchownat",
                                             "fcntl",
                                             "fdatasync",
                                             "fgetxattr",
                                             "flistxattr",
                                             "flock",
                                             "fork",
                                             "fremovexattr",
                                             "fsetxattr",
                                             "fstat",
                                             "fstatfs",
                                             "fsync",
                                             "ftruncate",
                                             "futex",
                                             "futex_waitv",
                                             "futimesat",
                                             "get_robust_list",
                                             "get_thread_area",
                                             "getcpu",
                                             "getcwd",
                                             "getdents",
                                             "getdents64",
                                             "getegid",
                                             "geteuid",
                                             "getgid",
                                             "getgroups",
                                             "getitimer",
                                             "getpeername",
                                             "getpgid",
                                             "getpgrp",
                                             "getpid",
                                             "getppid",
                                             "getpriority",
                                             "getrandom",
                                             "getresgid",
                                             "getresuid",
                                             "getrlimit",
                                             "getrusage",
                                             "getsid",
                                             "getsockname",
                                             "getsockopt",
                                             "gettid",
                                             "gettimeofday",
                                             "getuid",
                                             "getxattr",
                                             "get_mempolicy",
                                             "inotify_add_watch",
                                             "inotify_init",
                                             "inotify_init1",
                                             "inotify_rm_watch",
                                             "io_cancel",
                                             "io_destroy",
                                             "io_getevents",
                                             "io_pgetevents",
                                             "io_setup",
                                             "io_submit",
                                             "ioctl",
                                             "ioprio_get",
                                             "ioprio_set",
                                             "kill",
                                             "landlock_add_rule",
                                             "landlock_create_ruleset",
                                             "landlock_restrict_self",
                                             "lchown",
                                             "lgetxattr",
                                             "link",
                                             "linkat",
                                             "listen",
                                             "listxattr",
                                             "llistxattr",
                                             "lremovexattr",
                                             "lseek",
                                             "lsetxattr",
                                             "lstat",
                                             "madvise",
                                             "mbind",
                                             "membarrier",
                                             "memfd_create",
                                             "mincore",
                                             "mkdir",
                                             "mkdirat",
                                             "mlock",
                                             "mlock2",
                                             "mlockall",
                                             "mmap",
                                             "mprotect",
                                             "mq_getsetattr",
                                             "mq_notify",
                                             "mq_open",
                                             "mq_timedreceive",
                                             "mq_timedsend",
                                             "mq_unlink",
                                             "mremap",
                                             "msgctl",
                                             "msgget",
                                             "msgrcv",
                                             "msgsnd",
                                             "msync",
                                             "munlock",
                                             "munlockall",
                                             "munmap",
                                             "nanosleep",
                                             "newfstatat",
                                             "open",
                                             "openat",
                                             "openat2",
                                             "pause",
                                             "pidfd_open",
                                             "pidfd_send_signal",
                                             "pipe",
                                             "pipe2",
                                             "pkey_alloc",
                                             "pkey_free",
                                             "pkey_mprotect",
                                             "poll",
                                             "ppoll",
                                             "prctl",
                                             "pread64",
                                             "preadv",
                                             "preadv2",
                                             "prlimit64",
                                             "process_mrelease",
                                             "pselect6",
                                             "pwrite64",
                                             "pwritev",
                                             "pwritev2",
                                             "read",
                                             "readahead",
                                             "readlink",
                                             "readlinkat",
                                             "readv",
                                             "recvfrom",
                                             "recvmmsg",
                                             "recvmsg",
                                             "remap_file_pages",
                                             "removexattr",
                                             "rename",
                                             "renameat",
                                             "renameat2",
                                             "restart_syscall",
                                             "rmdir",
                                             "rseq",
                                             "rt_sigaction",
                                             "rt_sigpending",
                                             "rt_sigprocmask",
                                             "rt_sigqueueinfo",
                                             "rt_sigreturn",
                                             "rt_sigsuspend",
                                             "rt_sigtimedwait",
                                             "rt_tgsigqueueinfo",
                                             "sched_get_priority_max",
                                             "sched_get_priority_min",
                                             "sched_getaffinity",
                                             "sched_getattr",
                                             "sched_getparam",
                                             "sched_getscheduler",
                                             "sched_rr_get_interval",
                                             "sched_setaffinity",
                                             "sched_setattr",
                                             "sched_setparam",
                                             "sched_setscheduler",
                                             "sched_yield",
                                             "seccomp",
                                             "select",
                                             "semctl",
                                             "semget",
                                             "semop",
                                             "semtimedop",
                                             "send",
                                             "sendfile",
                                             "sendmmsg",
                                             "sendmsg",
                                             "sendto",
                                             "set_mempolicy",
                                             "set_robust_list",
                                             "set_thread_area",
                                             "set_tid_address",
                                             "setfsgid",
                                             "setfsuid",
                                             "setgid",
                                             "setgroups",
                                             "setitimer",
                                             "setpgid",
                                             "setpriority",
                                             "setregid",
                                             "setresgid",
                                             "setresuid",
                                             "setreuid",
                                             "setrlimit",
                                             "setsid",
                                             "setsockopt",
                                             "setuid",
                                             "setxattr",
                                             "shmat",
                                             "shmctl",
                                             "shmdt",
                                             "shmget",
                                             "shutdown",
                                             "sigaltstack",
                                             "signalfd",
                                             "signalfd4",
                                             "socketpair",
                                             "splice",
                                             "stat",
                                             "statfs",
                                             "statx",
                                             "symlink",
                                             "symlinkat",
                                             "sync",
                                             "sync_file_range",
                                             "syncfs",
                                             "sysinfo",
                                             "tee",
                                             "tgkill",
                                             "time",
                                             "timer_create",
                                             "timer_delete",
                                             "timer_getoverrun",
                                             "timer_gettime",
                                             "timer_settime",
                                             "timerfd_create",
                                             "timerfd_gettime",
                                             "timerfd_settime",
                                             "times",
                                             "tkill",
                                             "truncate",
                                             "umask",
                                             "uname",
                                             "unlink",
                                             "unlinkat",
                                             "utime",
                                             "utimensat",
                                             "utimes",
                                             "vfork",
                                             "wait4",
                                             "waitid",
                                             "write",
                                             "writev",
                                             "cachestat",
                                             "map_shadow_stack"};
  SeccompPolicy policy{EPERM, {}};
  for (const char* name : kAllowed) {
    policy.rules.push_back({name, {}, 0});
  }
  const uint64_t ns_flags = NamespaceCloneFlags();
  // clone(2) without namespace flags (threads, fork): flags are argument 0 on
  // x86_64 and aarch64 (not on s390, which RalphOS does not support).
  policy.rules.push_back({"clone", {{0, ns_flags, 0}}, 0});
  // unshare(2) of files/fs/sysvsem only.
  policy.rules.push_back({"unshare", {{0, ns_flags, 0}}, 0});
  // clone3 passes its flags in memory that seccomp cannot read: ENOSYS makes
  // glibc (>= 2.34) and other libcs fall back to clone(2), filtered above.
  policy.rules.push_back({"clone3", {}, ENOSYS});
  // personality(PER_LINUX) and the query personality(0xffffffff) only.
  policy.rules.push_back({"personality", {{0, 0xffffffffu, 0}, {0, 0xffffffffu, 0xffffffffu}}, 0});
  // Sockets: unix, IPv4, IPv6 and netlink (getifaddrs); no packet, raw-only
  // families, vsock, bluetooth, alg, key...
  policy.rules.push_back({"socket",
                          {{0, 0xffffffffu, AF_UNIX},
                           {0, 0xffffffffu, AF_INET},
                           {0, 0xffffffffu, AF_INET6},
                           {0, 0xffffffffu, AF_NETLINK}},
                          0});
  // Terminal injection: TIOCSTI pushes bytes into a terminal's input queue
  // (keystrokes the agent's user, or a shell reading the same tty, would
  // then "type"; CVE-2017-5226 in bubblewrap, CVE-2016-7545 in SELinux's
  // sandbox), TIOCLINUX can paste the console selection, TIOCSETD switches
  // the line discipline (the entry point of several kernel exploits), and
  // TIOCCONS redirects the kernel console. No agent tool needs them.
  policy.denials.push_back({"ioctl", 1, {TIOCSTI, TIOCLINUX, TIOCSETD, TIOCCONS}, EPERM});
  return policy;
}

std::vector<std::string> ExecCandidates(const SandboxSpec& spec) {
  const std::string& command = spec.argv[0];
  if (command.find('/') != std::string::npos) return {command};
  std::string path = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
  for (const std::string& entry : spec.env) {
    if (entry.rfind("PATH=", 0) == 0) path = entry.substr(5);
  }
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    // Relative PATH entries are meaningless before a cwd exists; skip them.
    if (!dir.empty() && dir[0] == '/')
      out.push_back(dir + (dir.back() == '/' ? "" : "/") + command);
    start = end + 1;
  }
  return out;
}

}  // namespace ralph::sandbox
