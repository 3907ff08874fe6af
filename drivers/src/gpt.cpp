#include "drivers/gpt.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <set>

#include <fmt/format.h>

#include "blkid_handles.h"
#include "platform/efi_vars.h"
#include "platform/unique_fd.h"

namespace ralph {
namespace {

// UEFI spec 2.10, 5.3: a GPT partition name is 36 CHAR16 units.
constexpr size_t kMaxLabelLength = 36;
// 128 entries of 128 bytes, the size every tool writes and the minimum the
// spec allows (5.3.2: "a minimum of 16,384 bytes").
constexpr uint64_t kEntryArrayBytes = 128 * 128;

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

uint64_t CeilDiv(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

Result<void> CheckGuid(const std::string& text, std::string_view what) {
  auto guid = EfiGuid::Parse(text);
  if (!guid) return Invalid(fmt::format("{}: {}", what, guid.error().message()));
  return {};
}

int NegativeErrno(int rc) {
  return rc < 0 ? -rc : EIO;
}

Result<DiskLayout> ApplyGpt(const std::string& disk, bool is_block, const GptSpec& spec) {
  handles::FdiskContext context(fdisk_new_context());
  if (!context) return Error::Make(ErrorCode::kInternal, "fdisk_new_context failed");
  // libfdisk functions return -errno.
  int rc = fdisk_assign_device(context.get(), disk.c_str(), /*readonly=*/0);
  if (rc < 0) return Error::FromErrno(fmt::format("opening {} with libfdisk", disk), -rc);

  uint64_t sector_size = fdisk_get_sector_size(context.get());
  uint64_t sectors = fdisk_get_nsectors(context.get());
  std::vector<PlannedPartition> plan =
      TRY_CTX(PlanGpt(sectors * sector_size, static_cast<uint32_t>(sector_size), spec),
              fmt::format("planning the GPT of {}", disk));

  // Wipe filesystem/RAID signatures an old layout left in the area the new
  // table covers, so nothing probes the disk as something else.
  fdisk_enable_wipe(context.get(), 1);
  rc = fdisk_create_disklabel(context.get(), "gpt");
  if (rc < 0) {
    return Error::FromErrno(fmt::format("creating a GPT on {}", disk), NegativeErrno(rc));
  }
  if (spec.disk_uuid) {
    rc = fdisk_set_disklabel_id_from_string(context.get(), spec.disk_uuid->c_str());
    if (rc < 0) {
      return Error::FromErrno(fmt::format("setting the disk GUID of {}", disk), NegativeErrno(rc));
    }
  }
  fdisk_label* label = fdisk_get_label(context.get(), nullptr);
  for (size_t i = 0; i < plan.size(); ++i) {
    const PartitionSpec& wanted = spec.partitions[i];
    const PlannedPartition& place = plan[i];
    std::string what =
        fmt::format("adding partition {} ({}) to {}", place.number, wanted.label, disk);
    handles::FdiskPartition partition(fdisk_new_partition());
    if (!partition) return Error::Make(ErrorCode::kInternal, what + ": out of memory");
    std::string type_text(PartitionTypeGuid(wanted.type));
    // A type from the label's table is static; one made up is refcounted.
    // fdisk_unref_parttype only frees the latter, so owning both is safe.
    handles::FdiskParttype type(fdisk_label_get_parttype_from_string(label, type_text.c_str()));
    if (!type) return Error::Make(ErrorCode::kInternal, what + ": unknown partition type");
    if (fdisk_partition_set_partno(partition.get(), place.number - 1) < 0 ||
        fdisk_partition_set_start(partition.get(), place.start_lba) < 0 ||
        fdisk_partition_set_size(partition.get(), place.size_lba) < 0 ||
        fdisk_partition_set_name(partition.get(), wanted.label.c_str()) < 0 ||
        fdisk_partition_set_type(partition.get(), type.get()) < 0 ||
        (wanted.part_uuid &&
         fdisk_partition_set_uuid(partition.get(), wanted.part_uuid->c_str()) < 0)) {
      return Error::Make(ErrorCode::kInternal, what + ": setting its fields failed");
    }
    size_t added = 0;
    rc = fdisk_add_partition(context.get(), partition.get(), &added);
    if (rc < 0) return Error::FromErrno(what, NegativeErrno(rc));
    if (added != place.number - 1) {
      return Error::Make(ErrorCode::kInternal,
                         fmt::format("{}: libfdisk used entry {}", what, added + 1));
    }
  }
  rc = fdisk_write_disklabel(context.get());
  if (rc < 0) {
    return Error::FromErrno(fmt::format("writing the GPT to {}", disk), NegativeErrno(rc));
  }
  // Closes the device after fsync().
  rc = fdisk_deassign_device(context.get(), /*nosync=*/0);
  if (rc < 0) return Error::FromErrno(fmt::format("syncing {}", disk), NegativeErrno(rc));
  if (is_block) {
    TRY_CTX(SyncKernelPartitions(disk),
            fmt::format("the GPT was written to {}, but the kernel's partitions were not updated",
                        disk));
  }
  return TRY_CTX(ProbeDisk(disk), fmt::format("reading back the GPT written to {}", disk));
}

}  // namespace

std::string_view PartitionTypeGuid(PartitionType type) {
  switch (type) {
    case PartitionType::kEfiSystem: return "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    case PartitionType::kLinuxFilesystem: return "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    case PartitionType::kLinuxRootX86_64: return "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    case PartitionType::kLinuxRootArm64: return "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
    case PartitionType::kLinuxVar: return "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
  }
  return "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
}

Result<std::vector<PlannedPartition>> PlanGpt(uint64_t disk_bytes, uint32_t sector_size,
                                              const GptSpec& spec) {
  if (sector_size < 512 || (sector_size & (sector_size - 1)) != 0 ||
      sector_size > kGptAlignmentBytes) {
    return Invalid(fmt::format("sector size {} is not a power of two from 512 up", sector_size));
  }
  if (spec.partitions.empty()) return Invalid("a GPT needs at least one partition");
  if (spec.partitions.size() > 128) {
    return Invalid(fmt::format("{} partitions; a GPT holds 128", spec.partitions.size()));
  }
  if (spec.disk_uuid) TRY(CheckGuid(*spec.disk_uuid, "disk GUID"));

  std::set<std::string> labels;
  std::set<std::string> uuids;
  for (size_t i = 0; i < spec.partitions.size(); ++i) {
    const PartitionSpec& p = spec.partitions[i];
    std::string which = fmt::format("partition {} ({})", i + 1, p.label);
    if (p.label.empty()) return Invalid(fmt::format("partition {} has no label", i + 1));
    if (p.label.size() > kMaxLabelLength) {
      return Invalid(fmt::format("{}: label is {} characters, a GPT name holds {}", which,
                                 p.label.size(), kMaxLabelLength));
    }
    for (unsigned char c : p.label) {
      if (c < 0x20 || c >= 0x7f) {
        return Invalid(fmt::format("{}: label must be printable ASCII", which));
      }
    }
    if (!labels.insert(p.label).second) {
      return Invalid(fmt::format("{}: label {} is used twice", which, p.label));
    }
    if (p.part_uuid) {
      TRY(CheckGuid(*p.part_uuid, which + ": partition GUID"));
      std::string lower = EfiGuid::Parse(*p.part_uuid)->ToString();
      if (!uuids.insert(lower).second) {
        return Invalid(fmt::format("{}: partition GUID {} is used twice", which, lower));
      }
    }
    if (p.size_bytes == 0 && i + 1 != spec.partitions.size()) {
      return Invalid(
          fmt::format("{}: size 0 (rest of the disk) is only allowed for the last "
                      "partition",
                      which));
    }
  }

  uint64_t total = disk_bytes / sector_size;
  uint64_t align = kGptAlignmentBytes / sector_size;
  uint64_t entry_sectors = CeilDiv(kEntryArrayBytes, sector_size);
  // Backup entries + backup header at the very end.
  if (total < align + entry_sectors + 2 + align) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("a disk of {} bytes is too small for a GPT with 1 MiB "
                                   "alignment",
                                   disk_bytes));
  }
  uint64_t last_usable = total - 2 - entry_sectors;

  std::vector<PlannedPartition> plan;
  uint64_t cursor = align;
  for (size_t i = 0; i < spec.partitions.size(); ++i) {
    const PartitionSpec& p = spec.partitions[i];
    uint64_t left = last_usable + 1 > cursor ? last_usable + 1 - cursor : 0;
    uint64_t size_lba;
    if (p.size_bytes == 0) {
      size_lba = left / align * align;
    } else {
      size_lba = CeilDiv(p.size_bytes, kGptAlignmentBytes) * align;
    }
    if (size_lba == 0 || size_lba > left) {
      return Error::Make(
          ErrorCode::kNoSpace,
          fmt::format("partition {} ({}) of {} MiB does not fit: {} MiB of the {}-byte disk "
                      "are left",
                      i + 1, p.label, size_lba * sector_size / kGptAlignmentBytes,
                      left * sector_size / kGptAlignmentBytes, disk_bytes));
    }
    plan.push_back(PlannedPartition{static_cast<uint32_t>(i + 1), cursor, size_lba});
    cursor += size_lba;
  }
  return plan;
}

Result<DiskLayout> CreateGptImage(const std::string& path, uint64_t size_bytes,
                                  const GptSpec& spec) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return Invalid(
        fmt::format("creating image {}: it exists and is not a regular file (use "
                    "WriteGpt for a device)",
                    path));
  }
  // Plan first so bad specs fail before anything is created.
  TRY_CTX(PlanGpt(size_bytes, 512, spec), fmt::format("planning image {}", path));
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return Error::FromErrno(fmt::format("creating image {}", path), errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(size_bytes)) < 0) {
    return Error::FromErrno(fmt::format("sizing image {} to {} bytes", path, size_bytes), errno);
  }
  fd.reset();
  return ApplyGpt(path, /*is_block=*/false, spec);
}

Result<DiskLayout> WriteGpt(const std::string& disk, const GptSpec& spec) {
  struct stat st;
  if (::stat(disk.c_str(), &st) < 0) {
    return Error::FromErrno(fmt::format("writing a GPT to {}", disk), errno);
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return Invalid(fmt::format("writing a GPT to {}: not a block device or image file", disk));
  }
  return ApplyGpt(disk, S_ISBLK(st.st_mode), spec);
}

}  // namespace ralph
