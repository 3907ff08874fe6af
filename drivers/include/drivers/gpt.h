// GPT writing with libfdisk: the image builder, recovery's reflash and every
// test that needs a disk make their partition tables here.
//
// Deciding is separate from doing: PlanGpt() computes every partition's
// place (1 MiB aligned) as a pure function; WriteGpt()/CreateGptImage()
// apply a plan with libfdisk and return the layout as libblkid reads it back.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "drivers/disk.h"
#include "platform/result.h"

namespace ralph {

enum class PartitionType {
  kEfiSystem,        // C12A7328-F81F-11D2-BA4B-00A0C93EC93B
  kLinuxFilesystem,  // 0FC63DAF-8483-4772-8E79-3D69D8477DE4
  kLinuxRootX86_64,  // 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 (Discoverable Partitions Spec)
  kLinuxRootArm64,   // B921B045-1DF0-41C3-AF44-4C6F280D3FAE
  kLinuxVar,         // 4D21B016-B534-45C2-A9FB-5C16E091FD2D
};

// The type GUID in upper-case text, as libfdisk and sfdisk spell it.
std::string_view PartitionTypeGuid(PartitionType type);

inline constexpr uint64_t kGptAlignmentBytes = 1024 * 1024;

struct PartitionSpec {
  std::string label;        // PARTLABEL, at most 36 UTF-16 units (ASCII here)
  uint64_t size_bytes = 0;  // rounded up to 1 MiB; 0 = the rest of the disk (last entry only)
  PartitionType type = PartitionType::kLinuxFilesystem;
  std::optional<std::string> part_uuid;  // fixed PARTUUID; random when unset
};

struct GptSpec {
  std::vector<PartitionSpec> partitions;  // numbered 1, 2, ... in this order
  std::optional<std::string> disk_uuid;   // fixed disk GUID; random when unset
};

struct PlannedPartition {
  uint32_t number = 0;
  uint64_t start_lba = 0;
  uint64_t size_lba = 0;
};

// Where each partition goes on a disk of `disk_bytes` with `sector_size`
// byte sectors: the first at 1 MiB, each start and size a multiple of 1 MiB,
// all inside the usable area (before the 33-sector backup GPT at the end).
// kInvalidArgument for an empty list, an empty/duplicate/over-long/non-ASCII
// label, a malformed GUID, or size 0 anywhere but last; kNoSpace naming the
// first partition that does not fit.
Result<std::vector<PlannedPartition>> PlanGpt(uint64_t disk_bytes, uint32_t sector_size,
                                              const GptSpec& spec);

// Creates (or replaces) the image file `path` at `size_bytes` (sparse) and
// writes a fresh GPT (protective MBR, primary and backup headers) onto it.
// Refuses a path that is a block device (kInvalidArgument).
Result<DiskLayout> CreateGptImage(const std::string& path, uint64_t size_bytes,
                                  const GptSpec& spec);

// Writes a fresh GPT onto an existing image file or whole block device,
// replacing any partition table and wiping old signatures in the table area.
// On a block device the kernel's partitions are then updated with
// SyncKernelPartitions() (kBusy when a partition that changed is in use; the
// new table is on the disk by then). Returns the layout read back with
// libblkid.
Result<DiskLayout> WriteGpt(const std::string& disk, const GptSpec& spec);

}  // namespace ralph
