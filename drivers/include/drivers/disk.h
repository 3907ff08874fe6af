// The appliance disk: GPT partitions found by PARTLABEL with libblkid.
//
// Works on a real disk (/dev/vda), on a loop-attached image (/dev/loop3), and
// on a plain image file (libblkid reads the partition table from a file too;
// partition `device` is then empty and I/O goes through the image at
// start_lba * sector_size).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph {

// The partition labels RalphOS uses, in disk order.
inline constexpr std::string_view kPartEfi = "EFI";
inline constexpr std::string_view kPartSystemA = "SYSTEM_A";
inline constexpr std::string_view kPartSystemB = "SYSTEM_B";
inline constexpr std::string_view kPartVar = "VAR";
inline constexpr std::string_view kPartRecovery = "RECOVERY";

struct PartitionInfo {
  std::string label;       // PARTLABEL
  uint32_t number = 0;     // 1-based GPT entry number
  uint64_t start_lba = 0;  // in sectors of `sector_size`
  uint64_t size_lba = 0;
  uint32_t sector_size = 512;
  std::string part_uuid;                // PARTUUID, lower-case text
  std::array<uint8_t, 16> part_guid{};  // the same, EFI_GUID memory order
  // "/dev/vda2", "/dev/loop3p2": the kernel's device for the partition, from
  // sysfs. Empty for an image file, and for a block device whose partitions
  // the kernel has not added (a loop device attached without -P).
  std::string device;

  uint64_t offset_bytes() const { return start_lba * sector_size; }
  uint64_t size_bytes() const { return size_lba * sector_size; }
};

struct DiskLayout {
  std::string disk;       // the whole disk or image file that was probed
  std::string disk_uuid;  // GPT disk GUID
  uint32_t sector_size = 512;
  std::vector<PartitionInfo> partitions;

  // nullptr when no partition has that PARTLABEL.
  const PartitionInfo* Find(std::string_view label) const;
};

// Reads the GPT of a whole disk, loop device or image file. kNotFound when
// the path does not exist, kCorrupt when it holds no GPT.
Result<DiskLayout> ProbeDisk(const std::string& disk);

// Makes the kernel's partition devices of the block device `disk` match the
// GPT on it (after the table was rewritten): asks for a full re-read
// (BLKRRPART), then adds, removes or resizes single partitions with BLKPG,
// as partx does. The BLKPG step covers a disk with mounted partitions
// (BLKRRPART fails with EBUSY) and kernels built without the GPT parser.
// kBusy naming the partition when one that must go is in use;
// kInvalidArgument for a file or a device without partition support (a
// loop device attached without -P).
Result<void> SyncKernelPartitions(const std::string& disk);

// The whole disks ("/dev/vda", "/dev/loop3") that hold a partition labelled
// `label`, found by libblkid tag evaluation (PARTLABEL=<label>) over every
// block device in /proc/partitions, each partition mapped to its disk through
// sysfs. Sorted; empty when there is none.
Result<std::vector<std::string>> FindDisksByPartLabel(std::string_view label);

// Finds the disk holding a partition labelled SYSTEM_A among the system's
// block devices (the booted appliance) and probes it. kNotFound when no disk
// has one; kAlreadyExists naming every candidate when several do (a second
// appliance disk attached: refuse to guess which one we run from).
Result<DiskLayout> DiscoverApplianceDisk();

// Checks that EFI, SYSTEM_A, SYSTEM_B, VAR and RECOVERY are all present;
// kNotFound naming every missing label otherwise.
Result<void> CheckApplianceLayout(const DiskLayout& layout);

}  // namespace ralph
