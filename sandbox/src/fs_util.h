// Small file helpers for sysfs/cgroupfs/procfs style files (private).
#pragma once

#include <cstdint>
#include <string>

#include "platform/result.h"

namespace ralph::sandbox {

// Writes `value` with one write(2) (cgroup files need a single write).
Result<void> WriteFileString(const std::string& path, const std::string& value);
Result<std::string> ReadFileString(const std::string& path);
bool PathExists(const std::string& path);
// mkdir -p with `mode`; existing directories are fine, and the last one is
// chmod'ed to `mode`.
Result<void> MakeDirs(const std::string& path, unsigned mode);
// rm -rf that does not cross mount points and does not follow symlinks.
Result<void> RemoveTree(const std::string& path);
// The start time of process `pid` (field 22 of /proc/<pid>/stat, clock
// ticks since boot), or 0 when there is no such process: with the pid, it
// names a process for good (a recycled pid starts later).
uint64_t ProcessStartTime(int pid);

}  // namespace ralph::sandbox
