// The slot image is reproducible: built twice from the same inputs (in
// different staging directories, at different times) it has the same
// SHA-256; a different input changes it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "tools/mkimage/builder.h"

namespace ralph::mkimage {
namespace {

class SlotImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(bin, nullptr);
    bin_dir_ = std::string(bin) + "/bin";
    dir_ = fmt::format("{}/mkimage-repro-{}", std::filesystem::temp_directory_path().string(),
                       ::getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string bin_dir_;
  std::string dir_;
};

TEST_F(SlotImageTest, SameInputsSameDigest) {
  SlotImageInputs inputs{bin_dir_, false, SlotVariant::kGood, 1700000000, "1.2.3"};
  auto first = BuildSlotImage(inputs, dir_ + "/stage1", dir_ + "/one.squashfs");
  ASSERT_TRUE(first) << first.error().ToString();
  sleep(1);  // a different wall clock must not matter
  auto second = BuildSlotImage(inputs, dir_ + "/stage2", dir_ + "/two.squashfs");
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(*first, *FileSha256(dir_ + "/two.squashfs"));

  inputs.version = "1.2.4";
  auto changed = BuildSlotImage(inputs, dir_ + "/stage3", dir_ + "/three.squashfs");
  ASSERT_TRUE(changed) << changed.error().ToString();
  EXPECT_NE(*first, *changed);
  inputs.version = "1.2.3";
  inputs.source_date_epoch = 1700000001;
  auto later = BuildSlotImage(inputs, dir_ + "/stage4", dir_ + "/four.squashfs");
  ASSERT_TRUE(later) << later.error().ToString();
  EXPECT_NE(*first, *later);
}

TEST_F(SlotImageTest, MissingProjectBinaryIsNamed) {
  SlotImageInputs inputs{dir_ + "/empty-bin", false, SlotVariant::kGood, 1700000000, "1.0.0"};
  auto built = BuildSlotImage(inputs, dir_ + "/stage", dir_ + "/x.squashfs");
  ASSERT_FALSE(built);
  EXPECT_EQ(built.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(built.error().message().find("ralph-init not found"), std::string::npos)
      << built.error().ToString();
}

}  // namespace
}  // namespace ralph::mkimage
