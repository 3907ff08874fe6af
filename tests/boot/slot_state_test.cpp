// RalphSlotState encoding: round trip and strict rejection of every kind of
// corruption, each with a message naming what failed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "boot/slot_state.h"
#include "platform/crc32.h"

namespace ralph::boot {
namespace {

using ::testing::HasSubstr;

SlotState Sample() {
  SlotState state;
  state.a = SlotRecord{SlotStatus::kGood, 0, {1, 2, 3}, {}};
  state.a.digest.fill(0xab);
  state.b = SlotRecord{SlotStatus::kTrial, 3, {1, 3, 0}, {}};
  state.b.digest.fill(0xcd);
  state.committed = Slot::kA;
  state.minimum_version = {1, 2, 3};
  return state;
}

// Rewrites the CRC so a test can corrupt a field behind it.
void Reseal(std::vector<uint8_t>& bytes) {
  uint32_t crc = Crc32(std::span<const uint8_t>(bytes).subspan(0, 120));
  for (int i = 0; i < 4; ++i) bytes[120 + i] = static_cast<uint8_t>(crc >> (8 * i));
}

std::string DecodeError(const std::vector<uint8_t>& bytes) {
  Result<SlotState> decoded = DecodeSlotState(bytes);
  EXPECT_FALSE(decoded.has_value());
  if (decoded) return "";
  EXPECT_EQ(decoded.error().code(), ErrorCode::kCorrupt);
  return decoded.error().message();
}

TEST(SlotStateTest, RoundTrip) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  ASSERT_EQ(bytes.size(), kSlotStateSize);
  Result<SlotState> decoded = DecodeSlotState(bytes);
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(*decoded, Sample());
  EXPECT_EQ(EncodeSlotState(*decoded), bytes);
}

TEST(SlotStateTest, EmptyRecordRoundTrips) {
  Result<SlotState> decoded = DecodeSlotState(EncodeSlotState(SlotState{}));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_FALSE(decoded->committed.has_value());
}

TEST(SlotStateTest, RejectsBadLength) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes.resize(100);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("bad length: 100 bytes"));
  EXPECT_THAT(DecodeError({1, 2, 3}), HasSubstr("bad length: 3 bytes, expected 124"));
  bytes = EncodeSlotState(Sample());
  bytes.push_back(0);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("bad length: 125 bytes"));
}

TEST(SlotStateTest, RejectsBadMagic) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[0] ^= 0xff;
  EXPECT_THAT(DecodeError(bytes), HasSubstr("bad magic"));
}

TEST(SlotStateTest, RejectsUnknownFormatVersion) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[4] = 7;
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("unknown format version 7"));
}

TEST(SlotStateTest, RejectsBadCrc) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[30] ^= 0x01;  // a bit flip in slot A's version
  EXPECT_THAT(DecodeError(bytes), HasSubstr("bad CRC: stored 0x"));
}

TEST(SlotStateTest, RejectsUnknownSlotState) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[72] = 9;  // slot B's state byte
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("slot B: unknown state 9"));
}

TEST(SlotStateTest, RejectsCommittedSlotThatIsNotGood) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[8] = 2;  // committed = B, which is on trial
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("committed slot B is not good (trial)"));
}

TEST(SlotStateTest, RejectsUnknownCommittedSlot) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[8] = 3;
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("unknown committed slot 3"));
}

TEST(SlotStateTest, RejectsTriesOutsideTrial) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[25] = 2;  // slot A (good) with tries
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("slot A: 2 tries left while good"));
  bytes = EncodeSlotState(Sample());
  bytes[73] = 200;
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("slot B: 200 tries left, at most 15"));
}

TEST(SlotStateTest, RejectsNonZeroReserved) {
  std::vector<uint8_t> bytes = EncodeSlotState(Sample());
  bytes[10] = 1;
  Reseal(bytes);
  EXPECT_THAT(DecodeError(bytes), HasSubstr("reserved bytes not zero"));
}

TEST(SlotStateTest, VersionParsing) {
  Result<SlotVersion> v = SlotVersion::Parse("1.10.2");
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(*v, (SlotVersion{1, 10, 2}));
  EXPECT_GT(*v, (SlotVersion{1, 9, 99}));
  EXPECT_EQ(v->ToString(), "1.10.2");
  for (const char* bad : {"", "1", "1.2", "1.2.3.4", "v1.2.3", "1.2.x", "-1.2.3", "01.2.3", "1..3",
                          "1.2.3 ", "99999999999.0.0"}) {
    Result<SlotVersion> parsed = SlotVersion::Parse(bad);
    ASSERT_FALSE(parsed.has_value()) << bad;
    EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(parsed.error().message(), HasSubstr("is not MAJOR.MINOR.PATCH")) << bad;
  }
}

TEST(SlotStateTest, SlotNames) {
  EXPECT_EQ(*ParseSlot("a"), Slot::kA);
  EXPECT_EQ(*ParseSlot("B"), Slot::kB);
  Result<Slot> bad = ParseSlot("c");
  ASSERT_FALSE(bad.has_value());
  EXPECT_THAT(bad.error().message(), HasSubstr("unknown slot \"c\": expected A or B"));
  EXPECT_EQ(*ParseBootTarget("recovery"), BootTarget::kRecovery);
  EXPECT_FALSE(ParseSlot("recovery").has_value());
}

TEST(SlotStateTest, DigestHex) {
  Sha256Digest digest{};
  digest[0] = 0xde;
  digest[31] = 0x01;
  std::string hex = DigestToHex(digest);
  EXPECT_EQ(hex.substr(0, 2), "de");
  EXPECT_EQ(*ParseSha256Hex(hex), digest);
  EXPECT_FALSE(ParseSha256Hex("zz").has_value());
  EXPECT_FALSE(ParseSha256Hex(std::string(64, 'g')).has_value());
}

}  // namespace
}  // namespace ralph::boot
