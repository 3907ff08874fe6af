// ralph-mkimage's dm-verity step (AppendHashTree) on a real file with Debian's
// veritysetup: the image is padded to whole blocks, the tree follows it at
// the recorded offset, `veritysetup verify` (userspace, no device-mapper)
// accepts it with the returned parameters and refuses it with one byte of
// the data or of the tree flipped, and the same input gives the same bytes.
#include <gtest/gtest.h>

#include <random>

#include "drivers/block_device.h"
#include "drivers/verity.h"
#include "platform/file_io.h"
#include "platform/hex.h"
#include "tests/support/loop_device.h"
#include "tests/support/temp_dir.h"
#include "tools/mkimage/builder.h"

namespace ralph::mkimage {
namespace {

// 3 full blocks and a partial one, deterministic.
std::string Content(size_t size = 3 * 4096 + 1000) {
  std::mt19937 rng(18);
  std::string bytes(size, '\0');
  for (auto& b : bytes) b = static_cast<char>(rng() & 0xff);
  return bytes;
}

Result<std::string> Verify(const std::string& image, const VerityParams& params) {
  return testing::RunCommand({"veritysetup", "verify", "--no-superblock", "--format=1",
                              "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
                              "--data-blocks=" + std::to_string(params.data_blocks),
                              "--hash-offset=" + std::to_string(params.hash_offset),
                              "--salt=" + HexEncode(params.salt), image, image,
                              HexEncode(params.root_hash)});
}

void FlipByte(const std::string& path, size_t offset) {
  auto bytes = ReadWholeFile(path);
  ASSERT_TRUE(bytes) << bytes.error().ToString();
  (*bytes)[offset] = static_cast<char>(~(*bytes)[offset]);
  ASSERT_TRUE(WriteWholeFile(path, *bytes));
}

TEST(AppendHashTreeTest, TreeFollowsTheDataAndVerifies) {
  testing::TempDir dir("ralph-verity");
  std::string image = dir / "root.img";
  ASSERT_TRUE(WriteWholeFile(image, Content()));
  auto params = AppendHashTree(image, "seed/system");
  ASSERT_TRUE(params) << params.error().ToString();
  EXPECT_EQ(params->data_blocks, 4u);
  EXPECT_EQ(params->hash_offset, 4u * 4096);
  auto bytes = ReadWholeFile(image);
  ASSERT_TRUE(bytes);
  // The data, its zero padding, then one hash block (4 hashes fit in one).
  EXPECT_EQ(bytes->size(), 5u * 4096);
  EXPECT_EQ(bytes->substr(0, Content().size()), Content());
  EXPECT_EQ(bytes->substr(Content().size(), 4 * 4096 - Content().size()),
            std::string(4 * 4096 - Content().size(), '\0'));
  // The parameters survive the command line.
  auto parsed = ParseVerityCmdline("ro " + RenderVerityCmdline(*params));
  ASSERT_TRUE(parsed && parsed->has_value());
  EXPECT_EQ(**parsed, *params);

  auto verified = Verify(image, *params);
  EXPECT_TRUE(verified) << verified.error().ToString();
  VerityParams wrong_root = *params;
  wrong_root.root_hash[0] ^= 1;
  EXPECT_FALSE(Verify(image, wrong_root));

  std::string data_flipped = dir / "data-flipped.img";
  ASSERT_TRUE(WriteWholeFile(data_flipped, *bytes));
  ASSERT_NO_FATAL_FAILURE(FlipByte(data_flipped, 2 * 4096 + 17));
  EXPECT_FALSE(Verify(data_flipped, *params));
  std::string tree_flipped = dir / "tree-flipped.img";
  ASSERT_TRUE(WriteWholeFile(tree_flipped, *bytes));
  ASSERT_NO_FATAL_FAILURE(FlipByte(tree_flipped, 4 * 4096 + 5));
  EXPECT_FALSE(Verify(tree_flipped, *params));
}

TEST(AppendHashTreeTest, SameInputSameBytesOtherSeedOtherSalt) {
  testing::TempDir dir("ralph-verity");
  std::vector<VerityParams> params;
  std::vector<std::string> images;
  for (const char* seed : {"seed/system", "seed/system", "seed/recovery"}) {
    std::string image = dir / ("root" + std::to_string(images.size()) + ".img");
    ASSERT_TRUE(WriteWholeFile(image, Content()));
    auto appended = AppendHashTree(image, seed);
    ASSERT_TRUE(appended) << appended.error().ToString();
    params.push_back(*appended);
    images.push_back(*ReadWholeFile(image));
  }
  EXPECT_EQ(params[0], params[1]);
  EXPECT_EQ(images[0], images[1]);
  EXPECT_NE(params[0].salt, params[2].salt);
  EXPECT_NE(params[0].root_hash, params[2].root_hash);
}

Result<void> Check(const std::string& image, const VerityParams& params) {
  auto device = BlockDevice::Open(image, IoMode::kBuffered);
  if (!device) return std::move(device).error();
  return CheckVerity(**device, params);
}

TEST(ComputeVerityTreeTest, MatchesVeritysetupForOneFewAndManyBlocks) {
  testing::TempDir dir("ralph-verity");
  // 1 block (no hash block), 4 (one level), 300 (two levels: 3 + 1 blocks).
  for (size_t size : {size_t{100}, size_t{3 * 4096 + 1000}, size_t{300 * 4096}}) {
    std::string image = dir / ("root-" + std::to_string(size) + ".img");
    ASSERT_TRUE(WriteWholeFile(image, Content(size)));
    auto params = AppendHashTree(image, "seed/system");
    ASSERT_TRUE(params) << params.error().ToString();
    auto bytes = ReadWholeFile(image);
    ASSERT_TRUE(bytes);
    auto device = BlockDevice::Open(image, IoMode::kBuffered);
    ASSERT_TRUE(device) << device.error().ToString();
    auto tree = ComputeVerityTree(**device, params->data_blocks, params->salt);
    ASSERT_TRUE(tree) << tree.error().ToString();
    EXPECT_EQ(HexEncode(tree->root_hash), HexEncode(params->root_hash)) << size;
    std::string stored = bytes->substr(params->hash_offset);
    EXPECT_EQ(stored.size(), VerityTreeBytes(params->data_blocks)) << size;
    EXPECT_EQ(std::string(tree->tree.begin(), tree->tree.end()), stored) << size;
    auto checked = Check(image, *params);
    EXPECT_TRUE(checked) << size << ": " << checked.error().ToString();
  }
}

TEST(ComputeVerityTreeTest, CheckNamesAFlippedDataOrTreeByte) {
  testing::TempDir dir("ralph-verity");
  std::string image = dir / "root.img";
  ASSERT_TRUE(WriteWholeFile(image, Content(300 * 4096)));
  auto params = AppendHashTree(image, "seed/system");
  ASSERT_TRUE(params) << params.error().ToString();
  auto bytes = ReadWholeFile(image);
  ASSERT_TRUE(bytes);

  std::string data_flipped = dir / "data.img";
  ASSERT_TRUE(WriteWholeFile(data_flipped, *bytes));
  ASSERT_NO_FATAL_FAILURE(FlipByte(data_flipped, 123 * 4096 + 9));
  auto data = Check(data_flipped, *params);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().code(), ErrorCode::kVerificationFailed);
  EXPECT_NE(data.error().ToString().find("hash to root"), std::string::npos)
      << data.error().ToString();

  std::string tree_flipped = dir / "tree.img";
  ASSERT_TRUE(WriteWholeFile(tree_flipped, *bytes));
  ASSERT_NO_FATAL_FAILURE(FlipByte(tree_flipped, params->hash_offset + 4096 + 40));
  auto tree = Check(tree_flipped, *params);
  ASSERT_FALSE(tree);
  EXPECT_EQ(tree.error().code(), ErrorCode::kVerificationFailed);
  EXPECT_NE(tree.error().ToString().find("stored hash tree differs from the data's at byte 4136"),
            std::string::npos)
      << tree.error().ToString();

  std::string short_image = dir / "short.img";
  ASSERT_TRUE(WriteWholeFile(short_image, bytes->substr(0, params->hash_offset + 100)));
  auto cut = Check(short_image, *params);
  ASSERT_FALSE(cut);
  EXPECT_EQ(cut.error().code(), ErrorCode::kInvalidArgument) << cut.error().ToString();
}

TEST(AppendHashTreeTest, EmptyImageIsRefused) {
  testing::TempDir dir("ralph-verity");
  std::string image = dir / "empty.img";
  ASSERT_TRUE(WriteWholeFile(image, ""));
  auto params = AppendHashTree(image, "seed");
  ASSERT_FALSE(params);
  EXPECT_NE(params.error().ToString().find("is empty"), std::string::npos)
      << params.error().ToString();
}

}  // namespace
}  // namespace ralph::mkimage
