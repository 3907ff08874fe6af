// The code the job's child runs between clone3() and execve() (private).
//
// The child shares the service's memory until execve (CLONE_VM, spawned by
// the Spawner: see spawner.h) and runs on the spawner thread's TLS, so it
// must not allocate, lock, log or write anything of the service's: every
// string and array it needs is prepared by the parent in a ChildPlan, which
// the parent keeps unchanged until the child has exec'd or been reaped, and
// the child only makes syscalls. Blocking calls that are cancellation points
// in glibc (read, write, open, close, poll) are raw syscalls: glibc's
// wrappers would switch the spawner thread's cancellation type and leave it
// switched if the child were killed inside one. A failure is reported to the
// parent as one ChildFailure record on `error_fd`; a successful execve closes
// that fd (O_CLOEXEC), which the parent reads as EOF.
#pragma once

#include <linux/filter.h>

#include <string_view>
#include <vector>

#include "sandbox/plan.h"

namespace ralph::sandbox {

enum class ChildStep : int {
  kWaitForParent = 1,
  kSignals,
  kSetIds,
  kCgroupNamespace,
  kMakePrivate,
  kMount,
  kPivotRoot,
  kHostname,
  kLoopback,
  kRlimits,
  kStdio,
  kCwd,
  kCapabilities,
  kNoNewPrivs,
  kLandlock,
  kParentDeath,
  kSeccomp,
  kExec,
  kExecRecording,
};
std::string_view ChildStepName(ChildStep step);

struct ChildFailure {
  int step;
  int err;
  int op_index;  // the mount op that failed, for kMount
};

struct ChildPlan {
  // write: one byte as the child's first act (it exists: the spawner's
  // AwaitChild reads it); read: a byte from the parent = go (twice: id maps
  // written, then cgroups (v1) attached and network ready); EOF = give up.
  int sync_fd = -1;
  // The parent's end of that socketpair, which the child's copy of the fd
  // table holds too: closed first, or a parent killed before its "go" would
  // leave the child waiting on a socket it keeps open itself (with every fd
  // of the parent's, before the parent-death signal is armed).
  int parent_sync_fd = -1;
  int error_fd = -1;  // write: ChildFailure on error
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
  bool controlling_tty = false;    // stdio is a pty slave: setsid + TIOCSCTTY
  bool unshare_cgroup_ns = false;  // v1: enter a cgroup namespace after attach
  const std::vector<MountOp>* mounts = nullptr;
  const char* root = nullptr;
  const char* hostname = nullptr;
  const std::vector<RlimitSetting>* rlimits = nullptr;
  const char* cwd = nullptr;
  int last_cap = 0;
  int landlock_abi = 0;
  const sock_fprog* seccomp = nullptr;
  // SandboxSpec::record_exec: loaded with a new listener before `seccomp`,
  // the listener sent to the parent over `sync_fd` (SCM_RIGHTS) and closed.
  const sock_fprog* exec_notify = nullptr;
  const std::vector<const char*>* exec_candidates = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
};

[[noreturn]] void RunChild(const ChildPlan& plan);
// The Spawner's entry: RunChild(*static_cast<const ChildPlan*>(plan)).
void ChildEntry(void* plan);

}  // namespace ralph::sandbox
