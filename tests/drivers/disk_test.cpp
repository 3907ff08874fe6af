// Integration tests: GPT images written with libfdisk, read back with
// libblkid from the image file and from a loop device (`losetup -f -P
// --show`), and found among the system's block devices by PARTLABEL.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "drivers/disk.h"
#include "drivers/gpt.h"
#include "platform/unique_fd.h"
#include "tests/support/loop_device.h"
#include "tests/support/temp_dir.h"

namespace ralph {
namespace {

using ::testing::HasSubstr;
using testing::LoopDevice;
using testing::RunCommand;
using testing::TempDir;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr char kDiskGuid[] = "5e4b2d6a-1c1f-4f6e-9a55-3a2b1c0d9e8f";
constexpr char kSystemAGuid[] = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

GptSpec ApplianceSpec(bool with_recovery = true) {
  GptSpec spec;
  spec.disk_uuid = kDiskGuid;
  spec.partitions = {
      {"EFI", 8 * kMiB, PartitionType::kEfiSystem, std::nullopt},
      {"SYSTEM_A", 16 * kMiB, PartitionType::kLinuxRootX86_64, kSystemAGuid},
      {"SYSTEM_B", 16 * kMiB, PartitionType::kLinuxRootX86_64, std::nullopt},
      {"VAR", 8 * kMiB, PartitionType::kLinuxVar, std::nullopt},
  };
  if (with_recovery) {
    spec.partitions.push_back({"RECOVERY", 0, PartitionType::kLinuxFilesystem, std::nullopt});
  }
  return spec;
}

class DiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    image_ = dir_ / "disk.img";
  }
  TempDir dir_{"ralph-disk-test"};
  std::string image_;
};

TEST_F(DiskTest, CreatedImageProbesWithLibblkid) {
  auto written = CreateGptImage(image_, 64 * kMiB, ApplianceSpec());
  ASSERT_TRUE(written) << written.error().ToString();
  EXPECT_EQ(std::filesystem::file_size(image_), 64 * kMiB);

  auto layout = ProbeDisk(image_);
  ASSERT_TRUE(layout) << layout.error().ToString();
  EXPECT_EQ(layout->disk, image_);
  EXPECT_EQ(layout->disk_uuid, kDiskGuid);
  EXPECT_EQ(layout->sector_size, 512u);
  ASSERT_EQ(layout->partitions.size(), 5u);
  EXPECT_TRUE(CheckApplianceLayout(*layout));
  const PartitionInfo* efi = layout->Find("EFI");
  ASSERT_NE(efi, nullptr);
  EXPECT_EQ(efi->number, 1u);
  EXPECT_EQ(efi->start_lba, 2048u);
  EXPECT_EQ(efi->size_bytes(), 8 * kMiB);
  EXPECT_TRUE(efi->device.empty());
  const PartitionInfo* a = layout->Find("SYSTEM_A");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->number, 2u);
  EXPECT_EQ(a->offset_bytes(), 9 * kMiB);
  EXPECT_EQ(a->part_uuid, kSystemAGuid);
  // EFI_GUID memory order: first field little-endian.
  EXPECT_EQ(a->part_guid[0], 0xd4);
  EXPECT_EQ(a->part_guid[3], 0xa1);
  EXPECT_EQ(a->part_guid[8], 0x8c);
  const PartitionInfo* recovery = layout->Find("RECOVERY");
  ASSERT_NE(recovery, nullptr);
  EXPECT_EQ(recovery->offset_bytes(), 49 * kMiB);
  EXPECT_EQ(recovery->size_bytes(), 14 * kMiB);  // rest of disk, 1 MiB aligned
  // What the writer returned is what a later probe sees.
  ASSERT_EQ(written->partitions.size(), layout->partitions.size());
  for (size_t i = 0; i < layout->partitions.size(); ++i) {
    EXPECT_EQ(written->partitions[i].part_uuid, layout->partitions[i].part_uuid);
    EXPECT_EQ(written->partitions[i].start_lba, layout->partitions[i].start_lba);
  }
}

// An independent reader (sfdisk) agrees on types, names and places.
TEST_F(DiskTest, SfdiskAgreesWithTheWriter) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto json = RunCommand({"sfdisk", "--json", image_});
  ASSERT_TRUE(json) << json.error().ToString();
  auto table = nlohmann::json::parse(*json, nullptr, false);
  ASSERT_FALSE(table.is_discarded()) << *json;
  auto& pt = table["partitiontable"];
  EXPECT_EQ(pt["label"], "gpt");
  EXPECT_EQ(pt["id"], "5E4B2D6A-1C1F-4F6E-9A55-3A2B1C0D9E8F");
  ASSERT_EQ(pt["partitions"].size(), 5u);
  EXPECT_EQ(pt["partitions"][0]["name"], "EFI");
  EXPECT_EQ(pt["partitions"][0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
  EXPECT_EQ(pt["partitions"][0]["start"], 2048);
  EXPECT_EQ(pt["partitions"][1]["uuid"], "A1B2C3D4-E5F6-4A7B-8C9D-0E1F2A3B4C5D");
  EXPECT_EQ(pt["partitions"][3]["type"], "4D21B016-B534-45C2-A9FB-5C16E091FD2D");
  EXPECT_EQ(pt["partitions"][4]["name"], "RECOVERY");
}

TEST_F(DiskTest, RecreatingAnImageReplacesTheTable) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  GptSpec small;
  small.partitions = {{"ONLY", 4 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt}};
  auto layout = CreateGptImage(image_, 32 * kMiB, small);
  ASSERT_TRUE(layout) << layout.error().ToString();
  ASSERT_EQ(layout->partitions.size(), 1u);
  EXPECT_EQ(layout->partitions[0].label, "ONLY");
  EXPECT_NE(layout->disk_uuid, kDiskGuid);
  EXPECT_EQ(std::filesystem::file_size(image_), 32 * kMiB);
}

TEST_F(DiskTest, BadSpecCreatesNothing) {
  GptSpec spec = ApplianceSpec();
  spec.partitions[2].label = "SYSTEM_A";
  auto layout = CreateGptImage(image_, 64 * kMiB, spec);
  ASSERT_FALSE(layout);
  EXPECT_EQ(layout.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(layout.error().message(), HasSubstr("label SYSTEM_A is used twice"));
  EXPECT_FALSE(std::filesystem::exists(image_));
}

TEST_F(DiskTest, ProbeErrors) {
  auto missing = ProbeDisk(dir_ / "nope.img");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(missing.error().message(), HasSubstr("nope.img"));

  {
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 8 * kMiB), 0);
  }
  auto blank = ProbeDisk(image_);
  ASSERT_FALSE(blank);
  EXPECT_EQ(blank.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(blank.error().message(), HasSubstr("no partition table"));

  // An MBR disk is not ours.
  ASSERT_TRUE(RunCommand({"sh", "-c", "echo 'label: dos' | sfdisk -q " + image_}));
  auto dos = ProbeDisk(image_);
  ASSERT_FALSE(dos);
  EXPECT_EQ(dos.error().code(), ErrorCode::kCorrupt);

  auto dir = ProbeDisk(dir_.path());
  ASSERT_FALSE(dir);
  EXPECT_EQ(dir.error().code(), ErrorCode::kInvalidArgument);
}

// Both GPT copies destroyed: corrupt. Only the primary destroyed: libblkid
// falls back to the backup, as firmware does.
TEST_F(DiskTest, DamagedGpt) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  std::vector<char> zeros(512, 0);
  {
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::pwrite(fd.get(), zeros.data(), zeros.size(), 512), 512);  // primary header
  }
  auto from_backup = ProbeDisk(image_);
  ASSERT_TRUE(from_backup) << from_backup.error().ToString();
  EXPECT_EQ(from_backup->partitions.size(), 5u);
  {
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::pwrite(fd.get(), zeros.data(), zeros.size(), 64 * kMiB - 512), 512);
  }
  auto broken = ProbeDisk(image_);
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().code(), ErrorCode::kCorrupt);
}

uint64_t BlockDeviceSize(const std::string& device) {
  UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
  uint64_t size = 0;
  if (!fd || ::ioctl(fd.get(), BLKGETSIZE64, &size) < 0) return 0;
  return size;
}

TEST_F(DiskTest, LoopDeviceProbesWithPartitionDevices) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  auto layout = ProbeDisk(loop->device());
  ASSERT_TRUE(layout) << layout.error().ToString();
  EXPECT_EQ(layout->disk, loop->device());
  EXPECT_EQ(layout->disk_uuid, kDiskGuid);
  EXPECT_TRUE(CheckApplianceLayout(*layout));
  for (const PartitionInfo& p : layout->partitions) {
    EXPECT_EQ(p.device, fmt::format("{}p{}", loop->device(), p.number)) << p.label;
    struct stat st;
    ASSERT_EQ(::stat(p.device.c_str(), &st), 0) << p.device;
    EXPECT_TRUE(S_ISBLK(st.st_mode));
    EXPECT_EQ(BlockDeviceSize(p.device), p.size_bytes()) << p.device;
  }
  std::string device = loop->device();
  auto detached = loop->Detach();
  ASSERT_TRUE(detached) << detached.error().ToString();
  auto gone = RunCommand({"losetup", "-j", image_});
  ASSERT_TRUE(gone);
  EXPECT_EQ(*gone, "") << "still attached";
}

TEST_F(DiskTest, DiscoversTheApplianceDiskByPartlabel) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  auto disks = FindDisksByPartLabel(kPartSystemA);
  ASSERT_TRUE(disks) << disks.error().ToString();
  EXPECT_THAT(*disks, ::testing::Contains(loop->device()));
  auto none = FindDisksByPartLabel("RALPH_NO_SUCH_LABEL");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());

  // Other tests on this machine may have appliance images attached at the
  // same time: then discovery must refuse to guess, naming ours among them.
  auto found = DiscoverApplianceDisk();
  if (found) {
    EXPECT_EQ(found->disk, loop->device());
    EXPECT_EQ(found->disk_uuid, kDiskGuid);
    ASSERT_NE(found->Find("SYSTEM_A"), nullptr);
    EXPECT_EQ(found->Find("SYSTEM_A")->device, loop->device() + "p2");
  } else {
    EXPECT_EQ(found.error().code(), ErrorCode::kAlreadyExists) << found.error().ToString();
    EXPECT_THAT(found.error().message(), HasSubstr(loop->device()));
    EXPECT_THAT(found.error().message(), HasSubstr("several disks"));
  }
  // After detaching, our disk is not found any more (the loop device's name
  // may already belong to another test's image: check the disk GUID).
  std::string device = loop->device();
  auto detached = loop->Detach();
  ASSERT_TRUE(detached) << detached.error().ToString();
  auto after = FindDisksByPartLabel(kPartSystemA);
  ASSERT_TRUE(after);
  for (const std::string& disk : *after) {
    auto layout = ProbeDisk(disk);
    if (layout) {
      EXPECT_NE(layout->disk_uuid, kDiskGuid) << disk;
    }
  }
}

TEST_F(DiskTest, MissingPartitionIsNamed) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec(/*with_recovery=*/false)));
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  auto layout = ProbeDisk(loop->device());
  ASSERT_TRUE(layout) << layout.error().ToString();
  auto check = CheckApplianceLayout(*layout);
  ASSERT_FALSE(check);
  EXPECT_EQ(check.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(check.error().message(), HasSubstr(loop->device()));
  EXPECT_THAT(check.error().message(), HasSubstr("no partition labelled RECOVERY"));
}

TEST_F(DiskTest, WriteGptOnALoopDevice) {
  {
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 64 * kMiB), 0);
  }
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  auto written = WriteGpt(loop->device(), ApplianceSpec());
  ASSERT_TRUE(written) << written.error().ToString();
  EXPECT_EQ(written->disk, loop->device());
  EXPECT_TRUE(CheckApplianceLayout(*written));
  // WriteGpt brought the kernel's partitions up to date itself.
  EXPECT_EQ(written->Find("VAR")->device, loop->device() + "p4");
  EXPECT_EQ(BlockDeviceSize(loop->device() + "p4"), 8 * kMiB);
  ASSERT_TRUE(loop->Detach());
  // The table is in the image file itself.
  auto from_file = ProbeDisk(image_);
  ASSERT_TRUE(from_file) << from_file.error().ToString();
  EXPECT_EQ(from_file->disk_uuid, kDiskGuid);
}

TEST_F(DiskTest, RewritingTheTableUpdatesTheKernelPartitions) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  ASSERT_EQ(BlockDeviceSize(loop->device() + "p5"), 15 * kMiB - kMiB);
  GptSpec two;
  two.partitions = {{"BIG", 40 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt},
                    {"REST", 0, PartitionType::kLinuxFilesystem, std::nullopt}};
  auto written = WriteGpt(loop->device(), two);
  ASSERT_TRUE(written) << written.error().ToString();
  EXPECT_EQ(BlockDeviceSize(loop->device() + "p1"), 40 * kMiB);
  EXPECT_EQ(BlockDeviceSize(loop->device() + "p2"), 22 * kMiB);
  EXPECT_FALSE(std::filesystem::exists(loop->device() + "p3"));
  EXPECT_FALSE(std::filesystem::exists(loop->device() + "p5"));
}

TEST_F(DiskTest, PartitionInUseIsBusy) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  std::string busy = loop->device() + "p1";
  UniqueFd holder(::open(busy.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(holder) << busy;
  GptSpec moved;
  moved.partitions = {{"OTHER", 20 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt}};
  auto written = WriteGpt(loop->device(), moved);
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().code(), ErrorCode::kBusy);
  EXPECT_THAT(written.error().message(), HasSubstr("removing the old partition " + busy + " of " +
                                                   loop->device() + ": it is in use"));
  EXPECT_THAT(written.error().message(), HasSubstr("the GPT was written"));
  holder.reset();
  EXPECT_TRUE(SyncKernelPartitions(loop->device()));
  EXPECT_EQ(BlockDeviceSize(busy), 20 * kMiB);
}

TEST_F(DiskTest, SyncRefusesFilesAndLoopsWithoutPartitions) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto file = SyncKernelPartitions(image_);
  ASSERT_FALSE(file);
  EXPECT_EQ(file.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(file.error().message(), HasSubstr("not a block device"));

  auto attached = RunCommand({"losetup", "-f", "--show", image_});  // no -P
  ASSERT_TRUE(attached) << attached.error().ToString();
  std::string device = attached->substr(0, attached->find('\n'));
  auto sync = SyncKernelPartitions(device);
  auto detached = RunCommand({"losetup", "-d", device});
  ASSERT_FALSE(sync);
  EXPECT_EQ(sync.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(sync.error().message(), HasSubstr("attached without -P"));
  EXPECT_TRUE(detached) << detached.error().ToString();
}

TEST_F(DiskTest, CreateRefusesABlockDevice) {
  ASSERT_TRUE(CreateGptImage(image_, 64 * kMiB, ApplianceSpec()));
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop);
  auto refused = CreateGptImage(loop->device(), 64 * kMiB, ApplianceSpec());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(refused.error().message(), HasSubstr("use WriteGpt"));
}

}  // namespace
}  // namespace ralph
