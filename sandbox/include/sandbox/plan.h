// Pure planning: from a SandboxSpec (plus the host paths the service chose)
// to plain lists of what the apply step does. Nothing here touches the
// system, so all of it is unit-tested.
#pragma once

#include <sys/resource.h>

#include <cstdint>
#include <string>
#include <vector>

#include "platform/result.h"
#include "sandbox/spec.h"

namespace ralph::sandbox {

// ---- user namespace ----

// The job runs as uid/gid 0..count-1 inside, mapped to host_base..; the host
// range is unprivileged (no host account, above the normal user ranges).
struct IdMapping {
  uint32_t host_base = 1u << 20;
  uint32_t count = 65536;
};
// "0 <host_base> <count>\n", the content of uid_map and gid_map.
std::string IdMapLine(const IdMapping& mapping);

// ---- filesystem ----

// Host paths for one job, chosen by the service.
struct JobPaths {
  std::string lower;   // the base directory (a directory, or where the image is mounted)
  std::string upper;   // overlay upperdir (on the job's size-limited filesystem)
  std::string work;    // overlay workdir (same filesystem as upper)
  std::string root;    // empty directory where the new root is assembled
  std::string resolv;  // host file bind-mounted on /etc/resolv.conf, or empty
};

enum class MountOpKind {
  kMount,     // mount(source, target, fstype, flags, data)
  kBind,      // recursive bind of source on target
  kSetAttr,   // mount_setattr(target, AT_RECURSIVE, attr_set)
  kMakeFile,  // create an empty regular file (a bind target in a tmpfs)
  kSymlink,   // symlink(source, target)
  kMakeDir,   // mkdir(target) inside a tmpfs the child mounted
};

struct MountOp {
  MountOpKind kind;
  std::string source;
  std::string target;  // absolute host path below JobPaths::root (before pivot_root)
  std::string fstype;
  unsigned long flags = 0;
  std::string data;
  uint64_t attr_set = 0;  // MOUNT_ATTR_* for kSetAttr
};

// Entries the service creates in the (fresh, empty) upper layer before the
// job starts: mount points that the base may lack, the workspace. Creating
// them in the upper also shadows any symlink the base has at those paths, so
// mount targets never resolve through a path the base controls.
struct UpperEntry {
  std::string path;  // relative to the upper dir, no leading '/'
  bool directory = true;
  bool owned_by_job = false;  // chown to the job's mapped root
  uint32_t mode = 0755;
};

struct MountPlan {
  std::vector<UpperEntry> upper_entries;
  std::vector<MountOp> ops;  // in order, all before pivot_root
};

// The mount plan: overlay root, /proc, minimal /dev, /dev/pts, /dev/shm, /tmp,
// the spec's binds (read-only unless rw; always nosuid,nodev), resolv.conf.
// /sys is not mounted. kInvalidArgument names a bad bind.
Result<MountPlan> PlanMounts(const SandboxSpec& spec, const JobPaths& paths);

// ---- cgroups ----

enum class CgroupVersion { kV1, kV2 };

struct CgroupSetting {
  std::string controller;  // v1: the hierarchy ("memory"); v2: empty
  std::string file;        // "memory.max", "memory.limit_in_bytes"
  std::string value;
  bool required = true;  // false: written only if the file exists (kernel options)
};

// The same limits expressed for either cgroup version.
std::vector<CgroupSetting> PlanCgroupSettings(const Limits& limits, CgroupVersion version);

// ---- rlimits ----

struct RlimitSetting {
  int resource;
  rlim_t soft;
  rlim_t hard;
};
std::vector<RlimitSetting> PlanRlimits(const Limits& limits);

// ---- seccomp ----

// One condition on a syscall argument: (arg[index] & mask) == value.
struct ArgMaskedEq {
  unsigned index;
  uint64_t mask;
  uint64_t value;
};

struct SeccompRule {
  std::string syscall;
  // Allowed when conditions is empty, or when any one of `alternatives`
  // holds (each alternative is one masked-equality condition).
  std::vector<ArgMaskedEq> alternatives;
  // 0: allow. Otherwise the errno returned (clone3 gets ENOSYS so libc falls
  // back to clone(2), whose flags the filter can inspect).
  int errno_value = 0;
};

// Calls of a syscall that fail with `errno_value` (logged) when argument
// `index`, truncated to its low 32 bits, equals one of `values` — even though
// `rules` allow the syscall otherwise. The truncation is the kernel's own:
// ioctl's request is an `unsigned int`, so a filter that compared all 64
// bits would let TIOCSTI | (1 << 32) through. (libseccomp cannot express
// this: its comparisons always include the upper half, and it refuses
// rules whose action equals the default one.)
struct SeccompArgumentDenial {
  std::string syscall;
  unsigned index;
  std::vector<uint32_t> values;
  int errno_value;
};

struct SeccompPolicy {
  // Every syscall not listed fails with this errno and is logged.
  int default_errno;
  std::vector<SeccompRule> rules;
  // Checked before `rules`.
  std::vector<SeccompArgumentDenial> denials = {};
};

// The default allowlist for agents and their tools (shells, coreutils, git,
// node, python, compilers). Syscall names that an architecture lacks are
// skipped when the policy is compiled for it.
SeccompPolicy DefaultSeccompPolicy();

// Syscalls the policy must never allow unconditionally (checked by tests and
// by CompileSeccomp).
const std::vector<std::string>& AlwaysDeniedSyscalls();

// The clone flags a job may never pass (new namespaces).
uint64_t NamespaceCloneFlags();

// ---- job environment ----

// The candidate absolute paths for argv[0] inside the sandbox: itself when it
// contains '/', else each directory of PATH (from env, else a default).
std::vector<std::string> ExecCandidates(const SandboxSpec& spec);

}  // namespace ralph::sandbox
