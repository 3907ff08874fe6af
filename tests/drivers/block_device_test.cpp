// Integration tests of BlockDevice on the real kernel: a range inside a GPT
// image file and a loop partition device, with O_DIRECT (the default where
// supported) and buffered I/O, re-read SHA-256 verification, discard.
#include <fcntl.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "drivers/block_device.h"
#include "drivers/disk.h"
#include "drivers/gpt.h"
#include "platform/unique_fd.h"
#include "tests/support/loop_device.h"
#include "tests/support/temp_dir.h"

namespace ralph {
namespace {

using ::testing::HasSubstr;
using testing::LoopDevice;
using testing::TempDir;

constexpr uint64_t kMiB = 1024 * 1024;

std::vector<uint8_t> RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 generator(seed);
  std::vector<uint8_t> out(size);
  for (auto& byte : out) byte = static_cast<uint8_t>(generator());
  return out;
}

std::vector<uint8_t> ReadFile(const std::string& path, uint64_t offset, size_t size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  std::vector<uint8_t> out(size);
  if (!fd || ::pread(fd.get(), out.data(), size, static_cast<off_t>(offset)) !=
                 static_cast<ssize_t>(size)) {
    out.clear();
  }
  return out;
}

void WriteFile(const std::string& path, uint64_t offset, const std::vector<uint8_t>& data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd);
  ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(data.size()));
}

class BlockDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    image_ = dir_ / "disk.img";
    GptSpec spec;
    spec.partitions = {{"EFI", 4 * kMiB, PartitionType::kEfiSystem, std::nullopt},
                       {"SYSTEM_A", 16 * kMiB, PartitionType::kLinuxFilesystem, std::nullopt},
                       {"SYSTEM_B", 0, PartitionType::kLinuxFilesystem, std::nullopt}};
    auto layout = CreateGptImage(image_, 40 * kMiB, spec);
    ASSERT_TRUE(layout) << layout.error().ToString();
    layout_ = *layout;
    slot_ = *layout_.Find("SYSTEM_A");
    // Markers right outside the slot: a write must never touch them.
    before_ = RandomBytes(4096, 1);
    after_ = RandomBytes(4096, 2);
    WriteFile(image_, slot_.offset_bytes() - before_.size(), before_);
    WriteFile(image_, slot_.offset_bytes() + slot_.size_bytes(), after_);
  }
  void ExpectNeighboursIntact() {
    EXPECT_EQ(ReadFile(image_, slot_.offset_bytes() - before_.size(), before_.size()), before_);
    EXPECT_EQ(ReadFile(image_, slot_.offset_bytes() + slot_.size_bytes(), after_.size()), after_);
  }

  TempDir dir_{"ralph-block-test"};
  std::string image_;
  DiskLayout layout_;
  PartitionInfo slot_;
  std::vector<uint8_t> before_;
  std::vector<uint8_t> after_;
};

TEST_F(BlockDeviceTest, ImageRangeWritesAndVerifiesWithODirect) {
  auto device = BlockDevice::OpenRange(image_, slot_.offset_bytes(), slot_.size_bytes());
  ASSERT_TRUE(device) << device.error().ToString();
  EXPECT_TRUE((*device)->direct_io()) << "ext4 image files support O_DIRECT";
  EXPECT_FALSE((*device)->is_block_device());
  EXPECT_EQ((*device)->size(), 16 * kMiB);

  // Unaligned offset and length: exercises the read-modify-write edges and
  // several bounce-buffer chunks.
  auto data = RandomBytes(3 * kMiB + 123, 7);
  ASSERT_TRUE((*device)->WriteAt(1000, data));
  ASSERT_TRUE((*device)->Flush());
  auto digest = Sha256::Of(data);
  ASSERT_TRUE(digest);
  auto verified = VerifyRange(**device, 1000, data.size(), *digest);
  EXPECT_TRUE(verified) << verified.error().ToString();
  // The bytes are in the image where the partition is, read independently.
  EXPECT_EQ(ReadFile(image_, slot_.offset_bytes() + 1000, data.size()), data);
  // Writing at the very end of the range: still inside.
  auto tail = RandomBytes(777, 8);
  ASSERT_TRUE((*device)->WriteAt(slot_.size_bytes() - tail.size(), tail));
  std::vector<uint8_t> back(tail.size());
  ASSERT_TRUE((*device)->ReadAt(slot_.size_bytes() - tail.size(), back));
  EXPECT_EQ(back, tail);
  ExpectNeighboursIntact();

  auto outside = (*device)->WriteAt(slot_.size_bytes() - 10, tail);
  ASSERT_FALSE(outside);
  EXPECT_EQ(outside.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(outside.error().message(), HasSubstr("outside its 16777216 bytes"));
  ExpectNeighboursIntact();
}

TEST_F(BlockDeviceTest, VerificationCatchesCorruptionOnTheMedia) {
  auto device = BlockDevice::OpenRange(image_, slot_.offset_bytes(), slot_.size_bytes());
  ASSERT_TRUE(device);
  auto data = RandomBytes(2 * kMiB, 9);
  ASSERT_TRUE((*device)->WriteAt(0, data));
  ASSERT_TRUE((*device)->Flush());
  auto digest = Sha256::Of(data);
  ASSERT_TRUE(digest);
  ASSERT_TRUE(VerifyRange(**device, 0, data.size(), *digest));
  // Somebody else flips a byte in the image.
  WriteFile(image_, slot_.offset_bytes() + 1234567, {static_cast<uint8_t>(data[1234567] ^ 1)});
  auto verified = VerifyRange(**device, 0, data.size(), *digest);
  ASSERT_FALSE(verified);
  EXPECT_EQ(verified.error().code(), ErrorCode::kVerificationFailed);
  EXPECT_THAT(verified.error().message(), HasSubstr("digest mismatch"));
}

TEST_F(BlockDeviceTest, BufferedModeWritesAndVerifies) {
  auto device =
      BlockDevice::OpenRange(image_, slot_.offset_bytes(), slot_.size_bytes(), IoMode::kBuffered);
  ASSERT_TRUE(device);
  EXPECT_FALSE((*device)->direct_io());
  auto data = RandomBytes(kMiB + 5, 10);
  ASSERT_TRUE((*device)->WriteAt(3, data));
  ASSERT_TRUE((*device)->Flush());
  auto digest = Sha256::Of(data);
  ASSERT_TRUE(digest);
  EXPECT_TRUE(VerifyRange(**device, 3, data.size(), *digest));
  EXPECT_EQ(ReadFile(image_, slot_.offset_bytes() + 3, data.size()), data);
  ExpectNeighboursIntact();
}

TEST_F(BlockDeviceTest, UnalignedRangeFallsBackToBuffered) {
  auto automatic = BlockDevice::OpenRange(image_, slot_.offset_bytes() + 512, kMiB);
  ASSERT_TRUE(automatic);
  EXPECT_FALSE((*automatic)->direct_io());
  auto data = RandomBytes(kMiB, 11);
  ASSERT_TRUE((*automatic)->WriteAt(0, data));
  EXPECT_EQ(ReadFile(image_, slot_.offset_bytes() + 512, data.size()), data);

  auto direct = BlockDevice::OpenRange(image_, slot_.offset_bytes() + 512, kMiB, IoMode::kDirect);
  ASSERT_FALSE(direct);
  EXPECT_EQ(direct.error().code(), ErrorCode::kUnsupported);
  EXPECT_THAT(direct.error().message(), HasSubstr("not aligned to 4096 bytes for O_DIRECT"));
}

TEST_F(BlockDeviceTest, OpenErrors) {
  auto missing = BlockDevice::Open(dir_ / "nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  auto too_long = BlockDevice::OpenRange(image_, 39 * kMiB, 2 * kMiB);
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(too_long.error().message(), HasSubstr("lies outside its 41943040 bytes"));
}

TEST_F(BlockDeviceTest, DiscardPunchesAHoleInAnImage) {
  auto device = BlockDevice::OpenRange(image_, slot_.offset_bytes(), slot_.size_bytes());
  ASSERT_TRUE(device);
  ASSERT_TRUE((*device)->WriteAt(0, RandomBytes(2 * kMiB, 12)));
  ASSERT_TRUE((*device)->Flush());
  ASSERT_TRUE((*device)->Discard(0, kMiB));
  std::vector<uint8_t> back(kMiB);
  ASSERT_TRUE((*device)->ReadAt(0, back));
  EXPECT_EQ(back, std::vector<uint8_t>(kMiB, 0));
  ExpectNeighboursIntact();
}

TEST_F(BlockDeviceTest, LoopPartitionWritesAndVerifiesWithODirect) {
  auto loop = LoopDevice::Attach(image_);
  ASSERT_TRUE(loop) << loop.error().ToString();
  auto layout = ProbeDisk(loop->device());
  ASSERT_TRUE(layout) << layout.error().ToString();
  const PartitionInfo* slot = layout->Find("SYSTEM_A");
  ASSERT_NE(slot, nullptr);
  ASSERT_FALSE(slot->device.empty());
  {
    auto device = BlockDevice::Open(slot->device);
    ASSERT_TRUE(device) << device.error().ToString();
    EXPECT_TRUE((*device)->is_block_device());
    EXPECT_TRUE((*device)->direct_io());
    EXPECT_EQ((*device)->alignment(), 512u);
    EXPECT_EQ((*device)->size(), 16 * kMiB);
    auto data = RandomBytes(5 * kMiB + 321, 13);
    ASSERT_TRUE((*device)->WriteAt(700, data));
    ASSERT_TRUE((*device)->Flush());
    auto digest = Sha256::Of(data);
    ASSERT_TRUE(digest);
    auto verified = VerifyRange(**device, 700, data.size(), *digest);
    EXPECT_TRUE(verified) << verified.error().ToString();

    // BLKDISCARD on the loop partition (loop devices pass it to the file).
    auto discarded = (*device)->Discard(8 * kMiB, kMiB);
    if (discarded) {
      std::vector<uint8_t> back(kMiB);
      ASSERT_TRUE((*device)->ReadAt(8 * kMiB, back));
      EXPECT_EQ(back, std::vector<uint8_t>(kMiB, 0));
    } else {
      EXPECT_EQ(discarded.error().code(), ErrorCode::kUnsupported) << discarded.error().ToString();
    }
    auto unaligned = (*device)->Discard(100, kMiB);
    ASSERT_FALSE(unaligned);
    EXPECT_EQ(unaligned.error().code(), ErrorCode::kInvalidArgument);

    device->reset();  // a partition held open keeps the loop device attached
    auto detached = loop->Detach();
    ASSERT_TRUE(detached) << detached.error().ToString();
    // The bytes reached the image file through the loop device.
    EXPECT_EQ(ReadFile(image_, slot_.offset_bytes() + 700, data.size()), data);
  }
  ExpectNeighboursIntact();
}

}  // namespace
}  // namespace ralph
