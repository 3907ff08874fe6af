// Unit tests of the drivers' fakes (which the layers above rely on to behave
// like the real thing), of range hashing/verification over them, and of the
// real Watchdog's refusal of things that are not watchdogs (never a real
// /dev/watchdog: it would reboot this machine).
#include <fcntl.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "drivers/block_device.h"
#include "drivers/testing/fake_block_device.h"
#include "drivers/testing/fake_watchdog.h"
#include "drivers/watchdog.h"

namespace ralph {
namespace {

using testing::FakeBlockDevice;
using testing::FakeWatchdog;
using ::testing::HasSubstr;

std::vector<uint8_t> Pattern(size_t size, uint8_t seed) {
  std::vector<uint8_t> out(size);
  for (size_t i = 0; i < size; ++i) out[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return out;
}

TEST(FakeBlockDeviceTest, ReadsWhatWasWritten) {
  FakeBlockDevice device(4096);
  auto data = Pattern(1000, 3);
  ASSERT_TRUE(device.WriteAt(100, data));
  std::vector<uint8_t> back(1000);
  ASSERT_TRUE(device.ReadAt(100, back));
  EXPECT_EQ(back, data);
  EXPECT_EQ(device.writes(), 1);
  EXPECT_EQ(device.bytes_written(), 1000u);
  auto outside = device.WriteAt(4000, data);
  ASSERT_FALSE(outside);
  EXPECT_EQ(outside.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(outside.error().message(), HasSubstr("outside its 4096 bytes"));
}

TEST(FakeBlockDeviceTest, EioAtAnOffsetTearsTheWrite) {
  FakeBlockDevice device(4096);
  device.FailWritesAt(600);
  auto data = Pattern(1000, 1);
  auto written = device.WriteAt(100, data);
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().code(), ErrorCode::kIo);
  EXPECT_EQ(written.error().sys_errno(), EIO);
  EXPECT_THAT(written.error().message(), HasSubstr("offset 600"));
  // Bytes before the bad offset landed, the rest did not.
  EXPECT_EQ(device.data()[599], data[499]);
  EXPECT_EQ(device.data()[600], 0);
  // A write not touching it succeeds.
  EXPECT_TRUE(device.WriteAt(0, std::span(data).first(100)));

  device.FailReadsAt(50);
  std::vector<uint8_t> out(10);
  auto read = device.ReadAt(45, out);
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().code(), ErrorCode::kIo);
  EXPECT_TRUE(device.ReadAt(60, out));
}

TEST(FakeBlockDeviceTest, ShortWriteAndNoSpace) {
  FakeBlockDevice device(4096);
  device.ShortNextWrite(10);
  auto data = Pattern(100, 9);
  auto torn = device.WriteAt(0, data);
  ASSERT_FALSE(torn);
  EXPECT_EQ(device.bytes_written(), 10u);
  EXPECT_EQ(device.data()[9], data[9]);
  EXPECT_EQ(device.data()[10], 0);
  EXPECT_TRUE(device.WriteAt(0, data));  // only the next write was short

  device.SetCapacity(1024);
  auto full = device.WriteAt(1000, data);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), ErrorCode::kNoSpace);
  EXPECT_EQ(device.data()[1023], data[23]);
}

TEST(FakeBlockDeviceTest, PowerCutLosesUnflushedWrites) {
  FakeBlockDevice device(1024);
  ASSERT_TRUE(device.WriteAt(0, Pattern(10, 1)));
  ASSERT_TRUE(device.Flush());
  ASSERT_TRUE(device.WriteAt(0, Pattern(10, 50)));
  device.PowerCut();
  std::vector<uint8_t> back(10);
  ASSERT_TRUE(device.ReadAt(0, back));
  EXPECT_EQ(back, Pattern(10, 1));
  device.FailFlush(EIO);
  auto flush = device.Flush();
  ASSERT_FALSE(flush);
  EXPECT_EQ(flush.error().code(), ErrorCode::kIo);
}

TEST(VerifyRangeTest, CatchesSilentCorruption) {
  FakeBlockDevice device(3 * 1024 * 1024);
  auto data = Pattern(2 * 1024 * 1024 + 17, 5);
  ASSERT_TRUE(device.WriteAt(4096, data));
  auto expected = Sha256::Of(data);
  ASSERT_TRUE(expected);
  EXPECT_TRUE(VerifyRange(device, 4096, data.size(), *expected));
  auto digest = HashRange(device, 4096, data.size());
  ASSERT_TRUE(digest);
  EXPECT_EQ(*digest, *expected);

  device.CorruptByte(4096 + 1024 * 1024 + 3);
  auto verified = VerifyRange(device, 4096, data.size(), *expected);
  ASSERT_FALSE(verified);
  EXPECT_EQ(verified.error().code(), ErrorCode::kVerificationFailed);
  EXPECT_THAT(verified.error().message(),
              HasSubstr("digest mismatch: expected " + DigestToHex(*expected) + ", read "));
  // A read error during verification is an I/O error, not a mismatch.
  device.FailReadsAt(4096 + 10);
  auto unreadable = VerifyRange(device, 4096, data.size(), *expected);
  ASSERT_FALSE(unreadable);
  EXPECT_EQ(unreadable.error().code(), ErrorCode::kIo);
  EXPECT_THAT(unreadable.error().message(), HasSubstr("verifying"));
}

TEST(FakeWatchdogTest, StartPetStop) {
  FakeWatchdog watchdog;
  EXPECT_EQ(watchdog.Pet().error().code(), ErrorCode::kInvalidState);
  watchdog.SetGranularity(std::chrono::seconds(4));
  ASSERT_TRUE(watchdog.Start(std::chrono::seconds(30)));
  EXPECT_TRUE(watchdog.armed());
  EXPECT_EQ(watchdog.timeout(), std::chrono::seconds(28));
  EXPECT_EQ(watchdog.Start(std::chrono::seconds(30)).error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE(watchdog.Pet());
  ASSERT_TRUE(watchdog.Pet());
  EXPECT_EQ(watchdog.pets(), 2);
  watchdog.FailNext(FakeWatchdog::Op::kPet, EIO);
  EXPECT_EQ(watchdog.Pet().error().code(), ErrorCode::kIo);
  ASSERT_TRUE(watchdog.Stop());
  EXPECT_FALSE(watchdog.armed());
  EXPECT_EQ(watchdog.magic_closes(), 1);
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/ralph-drivers-unit-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::string dir_;
};

using WatchdogTest = TempDir;

TEST_F(WatchdogTest, RefusesWhatIsNotAWatchdog) {
  Watchdog missing(dir_ + "/watchdog");
  auto start = missing.Start(std::chrono::seconds(10));
  ASSERT_FALSE(start);
  EXPECT_EQ(start.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(start.error().message(), HasSubstr("opening watchdog " + dir_ + "/watchdog"));

  std::string file = dir_ + "/not-a-watchdog";
  { std::ofstream(file) << "data"; }
  Watchdog regular(file);
  auto refused = regular.Start(std::chrono::seconds(10));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), ErrorCode::kUnsupported);
  EXPECT_THAT(refused.error().message(), HasSubstr("is not a watchdog device"));
  // Nothing was written to it (no magic 'V' into a random file).
  EXPECT_EQ(std::filesystem::file_size(file), 4u);
  EXPECT_EQ(regular.Pet().error().code(), ErrorCode::kInvalidState);
  EXPECT_EQ(regular.Stop().error().code(), ErrorCode::kInvalidState);
  EXPECT_EQ(regular.Start(std::chrono::seconds(0)).error().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ralph
