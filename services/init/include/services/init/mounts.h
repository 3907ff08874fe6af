// The file systems early boot and PID 1 mount, as plain data (decided here,
// applied by ApplyMount), with the hardened flags each gets.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::init {

struct MountSpec {
  std::string source;
  std::string target;
  std::string fstype;
  unsigned long flags = 0;
  std::string data;
  mode_t mode = 0755;     // of the target directory when it must be created
  bool optional = false;  // a failure is logged, not fatal (efivarfs on BIOS machines)
};

// Early boot (initramfs): /dev, /proc, /sys, /run.
std::vector<MountSpec> EarlyMounts();
// PID 1: the same set plus /dev/shm, /tmp, efivarfs and cgroup2; those early
// boot already moved into the new root are skipped by ApplyMounts.
std::vector<MountSpec> Pid1Mounts();

// Mount points listed in /proc/self/mountinfo text (field 5, unescaped).
std::vector<std::string> ParseMountPoints(std::string_view mountinfo);

// Creates the target and mounts each spec that is not mounted yet.
// Returns the first error of a non-optional spec (optional failures are
// returned in `optional_failures`).
Result<void> ApplyMounts(const std::vector<MountSpec>& specs,
                         std::vector<Error>* optional_failures);

// What the VAR partition holds, from its first 4 KiB.
enum class VarContent { kBlank, kExt4, kUnknown };
VarContent ClassifyVarHead(std::span<const uint8_t> head);

// e2fsck -p exit status (e2fsck(8)): 0 clean, 1/2 errors corrected, >= 4
// errors left, 8 operational error.
enum class FsckOutcome { kClean, kRepaired, kFailed };
FsckOutcome InterpretFsckStatus(int exit_status);

}  // namespace ralph::init
