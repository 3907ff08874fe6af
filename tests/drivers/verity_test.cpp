// Unit tests of the dm-verity parameters (drivers/verity.h): the command-line
// keys round-trip, anything partial, repeated, malformed or overlapping is
// refused by name, and the table line is the kernel's format. Opening a
// mapping needs device-mapper in the kernel: the e2e boots do that.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "drivers/verity.h"

namespace ralph {
namespace {

using ::testing::HasSubstr;

VerityParams Sample() {
  VerityParams params;
  for (size_t i = 0; i < params.root_hash.size(); ++i) {
    params.root_hash[i] = static_cast<uint8_t>(i);
    params.salt[i] = static_cast<uint8_t>(0xff - i);
  }
  params.data_blocks = 7424;
  params.hash_offset = 7424 * 4096;
  return params;
}

constexpr const char* kRoot = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
constexpr const char* kSalt = "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0";

std::string Words(const std::string& root, const std::string& salt, const std::string& blocks,
                  const std::string& offset) {
  return "ralph.verity.roothash=" + root + " ralph.verity.salt=" + salt +
         " ralph.verity.data_blocks=" + blocks + " ralph.verity.hash_offset=" + offset;
}

TEST(VerityCmdlineTest, RendersAndParsesBack) {
  std::string words = RenderVerityCmdline(Sample());
  EXPECT_EQ(words, Words(kRoot, kSalt, "7424", "30408704"));
  auto parsed = ParseVerityCmdline("ro panic=5 console=ttyS0 " + words + " quiet");
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  ASSERT_TRUE(parsed->has_value());
  EXPECT_EQ(**parsed, Sample());
}

TEST(VerityCmdlineTest, NoKeysIsNoParameters) {
  auto parsed = ParseVerityCmdline("ro panic=5 console=ttyS0 ralph.watchdog=10");
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_FALSE(parsed->has_value());
}

TEST(VerityCmdlineTest, RefusesWhatIsNotExactlyFourGoodKeys) {
  struct Case {
    std::string cmdline;
    std::string error;
  };
  const std::string good = Words(kRoot, kSalt, "7424", "30408704");
  const std::vector<Case> cases = {
      {"ralph.verity.roothash=" + std::string(kRoot), "ralph.verity.salt is missing"},
      {Words(kRoot, kSalt, "7424", "30408704") + " ralph.verity.salt=" + kSalt,
       "ralph.verity.salt is given twice"},
      {Words(std::string(kRoot).substr(2), kSalt, "7424", "30408704"), "ralph.verity.roothash"},
      {Words(kRoot, std::string(kSalt, 63) + "x", "7424", "30408704"), "ralph.verity.salt"},
      {Words(kRoot, kSalt, "-1", "30408704"), "data_blocks=-1 is not a decimal number"},
      {Words(kRoot, kSalt, "7424x", "30408704"), "data_blocks=7424x is not a decimal number"},
      {Words(kRoot, kSalt, "0", "30408704"), "data_blocks=0 maps nothing"},
      {Words(kRoot, kSalt, "7424", "30408705"), "hash_offset=30408705 is not a multiple"},
      {Words(kRoot, kSalt, "7424", "30404608"), "at or after the 7424 data blocks"},
      {Words(kRoot, kSalt, "7424", ""), "hash_offset= is not a decimal number"},
      {good + " ralph.verity.mode=panic", "ralph.verity.mode=panic is not one of"},
      {good + " ralph.verity.roothash", "ralph.verity.roothash is not one of"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseVerityCmdline(c.cmdline);
    ASSERT_FALSE(parsed) << c.cmdline;
    EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument) << c.cmdline;
    EXPECT_THAT(parsed.error().ToString(), HasSubstr(c.error)) << c.cmdline;
  }
}

TEST(VerityCmdlineTest, TableIsTheKernelsVerityFormat) {
  EXPECT_EQ(VerityTableParams(Sample(), 254, 3),
            std::string("1 254:3 254:3 4096 4096 7424 7424 sha256 ") + kRoot + " " + kSalt);
  VerityParams later = Sample();
  later.hash_offset = 8000 * 4096;
  EXPECT_THAT(VerityTableParams(later, 8, 1), HasSubstr(" 7424 8000 sha256 "));
}

TEST(VerityTreeBytesTest, LevelsOf128HashesUpToOneBlock) {
  EXPECT_EQ(VerityTreeBytes(1), 0u);  // the one block's hash is the root hash
  EXPECT_EQ(VerityTreeBytes(2), 4096u);
  EXPECT_EQ(VerityTreeBytes(128), 4096u);
  EXPECT_EQ(VerityTreeBytes(129), 3u * 4096);              // 2 blocks + the top
  EXPECT_EQ(VerityTreeBytes(7649), 61u * 4096);            // a slot image: 60 + 1
  EXPECT_EQ(VerityTreeBytes(128 * 128 + 1), 132u * 4096);  // 129 + 2 + 1
}

}  // namespace
}  // namespace ralph
