#include "drivers/disk.h"

#include <fcntl.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "blkid_handles.h"
#include "platform/efi_vars.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph {
namespace {

// libblkid reports partition start and size in 512-byte units whatever the
// device's logical sector size (libblkid/src/partitions/partitions.c).
constexpr uint64_t kBlkidUnit = 512;

std::string ReadSysfsLine(const std::filesystem::path& path) {
  std::string text = ReadWholeFile(path.string()).value_or(std::string());
  return text.substr(0, text.find('\n'));
}

// The kernel's partitions of the block device `disk_rdev`, by number:
// {2: "/dev/loop3p2"}. Read from /sys/dev/block/<major>:<minor>/<part>/partition.
std::map<uint32_t, std::string> KernelPartitions(dev_t disk_rdev) {
  std::map<uint32_t, std::string> out;
  std::error_code error;
  std::filesystem::path sys =
      fmt::format("/sys/dev/block/{}:{}", major(disk_rdev), minor(disk_rdev));
  for (const auto& entry : std::filesystem::directory_iterator(sys, error)) {
    std::string number = ReadSysfsLine(entry.path() / "partition");
    if (number.empty()) continue;
    char* end = nullptr;
    unsigned long value = std::strtoul(number.c_str(), &end, 10);
    if (end == number.c_str() || value == 0 || value > UINT32_MAX) continue;
    out[static_cast<uint32_t>(value)] = "/dev/" + entry.path().filename().string();
  }
  return out;
}

struct KernelPartition {
  std::string device;
  uint64_t start = 0;  // 512-byte units, as sysfs reports them
  uint64_t size = 0;
};

uint64_t ReadSysfsNumber(const std::filesystem::path& path) {
  return std::strtoull(ReadSysfsLine(path).c_str(), nullptr, 10);
}

std::map<uint32_t, KernelPartition> KernelPartitionsWithPlaces(dev_t disk_rdev) {
  std::map<uint32_t, KernelPartition> out;
  std::error_code error;
  std::filesystem::path sys =
      fmt::format("/sys/dev/block/{}:{}", major(disk_rdev), minor(disk_rdev));
  for (const auto& entry : std::filesystem::directory_iterator(sys, error)) {
    uint64_t number = ReadSysfsNumber(entry.path() / "partition");
    if (number == 0 || number > UINT32_MAX) continue;
    out[static_cast<uint32_t>(number)] = KernelPartition{"/dev/" + entry.path().filename().string(),
                                                         ReadSysfsNumber(entry.path() / "start"),
                                                         ReadSysfsNumber(entry.path() / "size")};
  }
  return out;
}

// BLKPG_ADD_PARTITION / BLKPG_DEL_PARTITION; start and length in bytes.
int Blkpg(int fd, int op, uint32_t number, uint64_t start, uint64_t length) {
  struct blkpg_partition partition {};
  partition.start = static_cast<long long>(start);
  partition.length = static_cast<long long>(length);
  partition.pno = static_cast<int>(number);
  struct blkpg_ioctl_arg arg {};
  arg.op = op;
  arg.datalen = sizeof(partition);
  arg.data = &partition;
  int rc;
  do {
    rc = ::ioctl(fd, BLKPG, &arg);
  } while (rc < 0 && errno == EINTR);
  return rc;
}

}  // namespace

Result<void> SyncKernelPartitions(const std::string& disk) {
  struct stat st;
  if (::stat(disk.c_str(), &st) < 0) {
    return Error::FromErrno(fmt::format("updating the kernel's partitions of {}", disk), errno);
  }
  if (!S_ISBLK(st.st_mode)) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("updating the kernel's partitions of {}: not a block device", disk));
  }
  UniqueFd fd(::open(disk.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("opening {}", disk), errno);
  // A full re-read is the normal way; EBUSY (a partition is in use) and a
  // kernel without a GPT parser are handled by the per-partition step below.
  if (::ioctl(fd.get(), BLKRRPART) < 0 && errno == EINVAL) {
    return Error::FromErrno(ErrorCode::kInvalidArgument,
                            fmt::format("{} does not support partitions (a loop device attached "
                                        "without -P?): BLKRRPART",
                                        disk),
                            EINVAL);
  }
  DiskLayout layout = TRY(ProbeDisk(disk));
  std::map<uint32_t, KernelPartition> kernel = KernelPartitionsWithPlaces(st.st_rdev);
  std::map<uint32_t, const PartitionInfo*> wanted;
  for (const PartitionInfo& partition : layout.partitions) wanted[partition.number] = &partition;

  for (const auto& [number, current] : kernel) {
    auto it = wanted.find(number);
    bool same = it != wanted.end() && current.start * 512 == it->second->offset_bytes() &&
                current.size * 512 == it->second->size_bytes();
    if (same) continue;
    // Something that probes every block device (udev, blkid, another
    // process's FindDisksByPartLabel) holds a partition open for a moment;
    // only a partition that stays busy is really in use.
    int rc = -1;
    for (int attempt = 0; attempt < 200; ++attempt) {
      rc = Blkpg(fd.get(), BLKPG_DEL_PARTITION, number, 0, 0);
      if (rc == 0 || errno != EBUSY) break;
      ::usleep(10 * 1000);
    }
    if (rc < 0) {
      int err = errno;
      if (err == EBUSY) {
        return Error::FromErrno(
            ErrorCode::kBusy,
            fmt::format("removing the old partition {} of {}: it is in use", current.device, disk),
            err);
      }
      return Error::FromErrno(fmt::format("BLKPG_DEL_PARTITION {}", current.device), err);
    }
  }
  for (const auto& [number, partition] : wanted) {
    auto it = kernel.find(number);
    if (it != kernel.end() && it->second.start * 512 == partition->offset_bytes() &&
        it->second.size * 512 == partition->size_bytes()) {
      continue;
    }
    if (Blkpg(fd.get(), BLKPG_ADD_PARTITION, number, partition->offset_bytes(),
              partition->size_bytes()) < 0) {
      return Error::FromErrno(
          fmt::format("BLKPG_ADD_PARTITION {} partition {} ({})", disk, number, partition->label),
          errno);
    }
  }
  return {};
}

const PartitionInfo* DiskLayout::Find(std::string_view label) const {
  for (const PartitionInfo& partition : partitions) {
    if (partition.label == label) return &partition;
  }
  return nullptr;
}

Result<DiskLayout> ProbeDisk(const std::string& disk) {
  struct stat st;
  if (::stat(disk.c_str(), &st) < 0) {
    return Error::FromErrno(fmt::format("probing {}", disk), errno);
  }
  bool is_block = S_ISBLK(st.st_mode);
  if (!is_block && !S_ISREG(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("probing {}: not a block device or image file", disk));
  }
  errno = 0;
  handles::BlkidProbe probe(blkid_new_probe_from_filename(disk.c_str()));
  if (!probe) {
    return Error::FromErrno(fmt::format("probing {}: opening it with libblkid", disk),
                            errno ? errno : EIO);
  }
  // Only the partition table: no filesystem superblocks.
  blkid_probe_enable_superblocks(probe.get(), 0);
  blkid_probe_enable_partitions(probe.get(), 1);
  blkid_probe_set_partitions_flags(probe.get(), BLKID_PARTS_ENTRY_DETAILS);
  blkid_partlist list = blkid_probe_get_partitions(probe.get());
  blkid_parttable table = list ? blkid_partlist_get_table(list) : nullptr;
  if (!table) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("probing {}: no partition table found", disk));
  }
  const char* table_type = blkid_parttable_get_type(table);
  if (!table_type || std::string_view(table_type) != "gpt") {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("probing {}: the partition table is {}, not GPT", disk,
                                   table_type ? table_type : "of unknown type"));
  }

  DiskLayout layout;
  layout.disk = disk;
  const char* disk_id = blkid_parttable_get_id(table);
  layout.disk_uuid = disk_id ? disk_id : "";
  unsigned int sector_size = blkid_probe_get_sectorsize(probe.get());
  layout.sector_size = sector_size ? sector_size : 512;

  std::map<uint32_t, std::string> devices;
  if (is_block) devices = KernelPartitions(st.st_rdev);

  int count = blkid_partlist_numof_partitions(list);
  for (int i = 0; i < count; ++i) {
    blkid_partition partition = blkid_partlist_get_partition(list, i);
    if (!partition) continue;
    PartitionInfo info;
    const char* name = blkid_partition_get_name(partition);
    info.label = name ? name : "";
    int number = blkid_partition_get_partno(partition);
    if (number <= 0) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("probing {}: partition {} has no number", disk, i));
    }
    info.number = static_cast<uint32_t>(number);
    info.sector_size = layout.sector_size;
    auto start = static_cast<uint64_t>(blkid_partition_get_start(partition));
    auto size = static_cast<uint64_t>(blkid_partition_get_size(partition));
    info.start_lba = start * kBlkidUnit / info.sector_size;
    info.size_lba = size * kBlkidUnit / info.sector_size;
    const char* uuid = blkid_partition_get_uuid(partition);
    info.part_uuid = uuid ? uuid : "";
    std::transform(info.part_uuid.begin(), info.part_uuid.end(), info.part_uuid.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    auto guid = EfiGuid::Parse(info.part_uuid);
    if (!guid) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("probing {}: partition {} ({}) has an invalid PARTUUID: {}",
                                     disk, info.number, info.label, guid.error().message()));
    }
    info.part_guid = guid->bytes;
    auto device = devices.find(info.number);
    if (device != devices.end()) info.device = device->second;
    layout.partitions.push_back(std::move(info));
  }
  std::sort(layout.partitions.begin(), layout.partitions.end(),
            [](const PartitionInfo& a, const PartitionInfo& b) { return a.number < b.number; });
  return layout;
}

Result<std::vector<std::string>> FindDisksByPartLabel(std::string_view label) {
  // A private, in-memory cache ("/dev/null" as the cache file): no stale
  // /run/blkid/blkid.tab, and nothing written.
  blkid_cache raw_cache = nullptr;
  if (blkid_get_cache(&raw_cache, "/dev/null") < 0 || !raw_cache) {
    return Error::Make(ErrorCode::kIo, "libblkid: cannot create a cache");
  }
  handles::BlkidCache cache(raw_cache);
  // Probes every device in /proc/partitions; partition probing in libblkid's
  // cache fills PARTLABEL/PARTUUID tags.
  if (blkid_probe_all(cache.get()) < 0) {
    return Error::Make(ErrorCode::kIo, "libblkid: probing the block devices failed");
  }
  handles::BlkidDevIterate iterate(blkid_dev_iterate_begin(cache.get()));
  if (!iterate) return Error::Make(ErrorCode::kIo, "libblkid: cannot iterate the devices");
  std::string value(label);
  blkid_dev_set_search(iterate.get(), "PARTLABEL", value.c_str());
  std::set<std::string> disks;
  blkid_dev dev = nullptr;
  while (blkid_dev_next(iterate.get(), &dev) == 0) {
    const char* devname = blkid_dev_devname(dev);
    if (!devname) continue;
    // libblkid verifies each match (blkid_verify) before returning it.
    struct stat st;
    if (::stat(devname, &st) < 0 || !S_ISBLK(st.st_mode)) continue;
    // /sys/dev/block/M:m of a partition is .../block/<disk>/<partition>.
    std::error_code error;
    std::filesystem::path sys = std::filesystem::canonical(
        fmt::format("/sys/dev/block/{}:{}", major(st.st_rdev), minor(st.st_rdev)), error);
    if (error) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("resolving {} in sysfs: {}", devname, error.message()));
    }
    if (!std::filesystem::exists(sys / "partition")) {
      // A whole device whose filesystem label matched is not what we look for.
      continue;
    }
    disks.insert("/dev/" + sys.parent_path().filename().string());
  }
  return std::vector<std::string>(disks.begin(), disks.end());
}

Result<DiskLayout> DiscoverApplianceDisk() {
  std::vector<std::string> disks = TRY_CTX(FindDisksByPartLabel(kPartSystemA),
                                           fmt::format("finding PARTLABEL={}", kPartSystemA));
  if (disks.empty()) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("no disk has a partition labelled {}", kPartSystemA));
  }
  if (disks.size() > 1) {
    std::string list;
    for (const std::string& d : disks) list += (list.empty() ? "" : ", ") + d;
    return Error::Make(ErrorCode::kAlreadyExists,
                       fmt::format("several disks have a partition labelled {}: {}; name the "
                                   "appliance disk explicitly",
                                   kPartSystemA, list));
  }
  return TRY_CTX(ProbeDisk(disks.front()), "probing the appliance disk");
}

Result<void> CheckApplianceLayout(const DiskLayout& layout) {
  static constexpr std::string_view kLabels[] = {kPartEfi, kPartSystemA, kPartSystemB, kPartVar,
                                                 kPartRecovery};
  std::string missing;
  for (std::string_view label : kLabels) {
    if (!layout.Find(label)) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", label);
  }
  if (!missing.empty()) {
    return Error::Make(
        ErrorCode::kNotFound,
        fmt::format("{} is not an appliance disk: no partition labelled {}", layout.disk, missing));
  }
  // Two partitions with one of our labels: which one is the slot? Refuse.
  for (std::string_view label : kLabels) {
    std::string numbers;
    int count = 0;
    for (const PartitionInfo& partition : layout.partitions) {
      if (partition.label != label) continue;
      ++count;
      numbers += fmt::format("{}{}", numbers.empty() ? "" : ", ", partition.number);
    }
    if (count > 1) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("{}: {} partitions are labelled {} (numbers {})", layout.disk,
                                     count, label, numbers));
    }
  }
  return {};
}

}  // namespace ralph
