// Job cgroups behind one interface with a cgroup v2 implementation (the
// appliance kernel) and a cgroup v1 one (hosts whose memory/pids/cpu
// controllers sit on v1 hierarchies), chosen at run time by DetectCgroups().
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "platform/result.h"
#include "sandbox/plan.h"

namespace ralph::sandbox {

struct CgroupUsage {
  uint64_t memory_peak_bytes = 0;
  uint64_t cpu_usage_ns = 0;
  uint64_t oom_kills = 0;
};

// One job's cgroup (v2: one directory; v1: one directory per hierarchy).
class JobCgroupInterface {
 public:
  virtual ~JobCgroupInterface() = default;
  // A directory fd for clone3(CLONE_INTO_CGROUP), or -1 when the job must be
  // moved in with Attach() after clone (v1 has no CLONE_INTO_CGROUP).
  virtual int clone_into_fd() const = 0;
  // Moves `pid` into the job cgroup (every hierarchy on v1). No-op on v2
  // when the job was cloned into it.
  virtual Result<void> Attach(pid_t pid) = 0;
  // SIGKILLs every process in the cgroup (v2: cgroup.kill).
  virtual Result<void> KillAll() = 0;
  virtual Result<CgroupUsage> Usage() const = 0;
  // Removes the directories; the processes must be gone (a short wait covers
  // tasks still exiting). Idempotent; also run by the destructor.
  virtual Result<void> Destroy() = 0;
  // The path(s), for diagnostics and tests.
  virtual std::vector<std::string> paths() const = 0;
};

class CgroupManagerInterface {
 public:
  virtual ~CgroupManagerInterface() = default;
  virtual CgroupVersion version() const = 0;
  // Creates the job cgroup `name` below the manager's parent and writes the
  // settings (required ones must succeed; optional ones only if the file
  // exists). Nothing is left behind on failure.
  virtual Result<std::unique_ptr<JobCgroupInterface>> CreateJob(
      const std::string& name, const std::vector<CgroupSetting>& settings) = 0;
  // The parent directories the manager made (removed by its destructor).
  virtual std::vector<std::string> parent_paths() const = 0;
};

// cgroup v2 mounted at `mount` (normally /sys/fs/cgroup): job cgroups live in
// <mount>/<parent>/ (created, with the available memory/pids/cpu/io
// controllers enabled for its children).
Result<std::unique_ptr<CgroupManagerInterface>> OpenCgroupV2(const std::string& mount,
                                                             const std::string& parent);

// cgroup v1 with hierarchies under `root` (normally /sys/fs/cgroup): for each
// of memory, pids, cpu, cpuacct, blkio (blkio optional), job cgroups live in
// <root>/<ctrl>/<this process's cgroup>/<parent>/, so they stay inside
// whatever limits the service itself runs under.
Result<std::unique_ptr<CgroupManagerInterface>> OpenCgroupV1(const std::string& root,
                                                             const std::string& parent);

// v2 when /sys/fs/cgroup is a cgroup2 mount offering the memory, pids and cpu
// controllers, else v1 when those controllers are v1 hierarchies there; else
// kUnsupported naming what is missing.
Result<std::unique_ptr<CgroupManagerInterface>> DetectCgroups(const std::string& parent);

// "<base>@<pid>.<start>": a cgroup parent name that says which process owns
// it (this one: its pid and start time, so that a recycled pid is not taken
// for the owner). A launcher names its parent this way.
std::string OwnedCgroupName(const std::string& base);

// The dead owners' sweep (SandboxService::Housekeep): for each parent of
// `manager` named OwnedCgroupName(base), the sibling parents of the same base
// whose owner process is gone (SIGKILLed mid-job) are removed, with the job
// cgroups below them (any task still in one is SIGKILLed first). Parents
// named otherwise are left alone.
// Returns how many parent directories were removed.
Result<size_t> SweepDeadOwnerCgroups(const CgroupManagerInterface& manager);

}  // namespace ralph::sandbox
