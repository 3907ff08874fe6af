// The slot-content check on fake block devices (a squashfs-shaped image, its
// recorded digest, garbage, I/O errors) and the bundle check on real signed
// bundles (valid, bad signature, another arch, missing).
#include "recovery/probe.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "drivers/testing/fake_block_device.h"
#include "platform/file_io.h"
#include "platform/sha256.h"
#include "services/ota/bundle/bundle.h"
#include "squashfs_shape.h"
#include "test_pki.h"
#include "tests/support/temp_dir.h"

namespace ralph::recovery {
namespace {

using boot::Slot;
using boot::SlotStatus;
using ralph::testing::FakeBlockDevice;

constexpr uint64_t kSlotBytes = 1 << 20;

FakeBlockDevice Slot(const std::vector<uint8_t>& content) {
  FakeBlockDevice device(kSlotBytes);
  EXPECT_TRUE(device.WriteAt(0, content));
  // The rest of the partition holds whatever was there before.
  std::vector<uint8_t> tail(kSlotBytes - content.size(), 0xa5);
  EXPECT_TRUE(device.WriteAt(content.size(), tail));
  return device;
}

boot::SlotRecord Recorded(const std::vector<uint8_t>& image) {
  boot::SlotRecord r;
  r.status = SlotStatus::kGood;
  r.version = {1, 0, 0};
  r.digest = *Sha256::Of(image);
  return r;
}

TEST(SquashfsImageSizeTest, ReadsThePaddedSizeFromTheSuperblock) {
  FakeBlockDevice device = Slot(SquashfsShapedImage(10000, 1));
  auto size = SquashfsImageSize(device);
  ASSERT_TRUE(size) << size.error().ToString();
  EXPECT_EQ(*size, 12288u);
}

TEST(SquashfsImageSizeTest, RefusesGarbageAndImpossibleSizes) {
  FakeBlockDevice garbage(kSlotBytes);
  std::vector<uint8_t> noise(4096, 0x5a);
  ASSERT_TRUE(garbage.WriteAt(0, noise));
  auto r = SquashfsImageSize(garbage);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message().find("no squashfs magic (found 5a5a5a5a)"), std::string::npos);

  std::vector<uint8_t> huge = SquashfsShapedImage(4096, 2);
  for (int i = 0; i < 8; ++i) huge[40 + i] = 0xff;
  FakeBlockDevice too_big = Slot(huge);
  auto big = SquashfsImageSize(too_big);
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message().find("the partition has 1048576"), std::string::npos);
}

TEST(SlotImageSizeTest, ThePaddedSquashfsAndItsHashTree) {
  FakeBlockDevice device = Slot(SquashfsShapedImage(10000, 1));
  auto size = SlotImageSize(device);
  ASSERT_TRUE(size) << size.error().ToString();
  EXPECT_EQ(*size, 12288u + 4096u);  // 3 blocks, one hash block
  // A squashfs that fills the partition leaves no room for a tree: itself.
  FakeBlockDevice full(kSlotBytes);
  ASSERT_TRUE(full.WriteAt(0, SquashfsShapedImage(kSlotBytes, 1)));
  auto alone = SlotImageSize(full);
  ASSERT_TRUE(alone) << alone.error().ToString();
  EXPECT_EQ(*alone, kSlotBytes);
}

TEST(CheckSlotContentTest, MatchesMismatchesAndUnverified) {
  std::vector<uint8_t> image = SlotShapedImage(20000, 3);
  FakeBlockDevice device = Slot(image);
  BundleFacts no_factory;
  SlotFacts ok = CheckSlotContent(Slot::kA, &device, "", Recorded(image), no_factory);
  EXPECT_EQ(ok.content, SlotContent::kMatches) << ok.detail;
  EXPECT_NE(ok.detail.find("over 24576 bytes"), std::string::npos) << ok.detail;

  // One byte of the hash tree changed after it was recorded.
  device.CorruptByte(20480 + 100);
  SlotFacts tree = CheckSlotContent(Slot::kA, &device, "", Recorded(image), no_factory);
  EXPECT_EQ(tree.content, SlotContent::kMismatch);
  device.CorruptByte(20480 + 100);

  // One byte of the image changed after it was recorded.
  device.CorruptByte(15000);
  SlotFacts bad = CheckSlotContent(Slot::kA, &device, "", Recorded(image), no_factory);
  EXPECT_EQ(bad.content, SlotContent::kMismatch);
  EXPECT_NE(bad.detail.find("recorded " + DigestToHex(Recorded(image).digest)), std::string::npos);

  // No digest recorded (a factory slot on its first boots).
  boot::SlotRecord none = Recorded(image);
  none.digest = {};
  SlotFacts unverified = CheckSlotContent(Slot::kA, &device, "", none, no_factory);
  EXPECT_EQ(unverified.content, SlotContent::kUnverified);
  SlotFacts no_record = CheckSlotContent(Slot::kA, &device, "", std::nullopt, no_factory);
  EXPECT_EQ(no_record.content, SlotContent::kUnverified);
}

TEST(CheckSlotContentTest, TheFactoryBundleGivesTheExactSize) {
  // An image not padded to 4 KiB (a bundle built with -nopad): the recorded
  // digest is the bundle's, so its payload size is used.
  std::vector<uint8_t> image = SquashfsShapedImage(9000, 4);
  image.resize(9000);
  FakeBlockDevice device = Slot(image);
  BundleFacts factory;
  factory.health = BundleHealth::kValid;
  factory.rootfs_sha256 = *Sha256::Of(image);
  factory.rootfs_size = image.size();
  SlotFacts facts = CheckSlotContent(Slot::kB, &device, "", Recorded(image), factory);
  EXPECT_EQ(facts.content, SlotContent::kMatches) << facts.detail;
  SlotFacts without = CheckSlotContent(Slot::kB, &device, "", Recorded(image), BundleFacts{});
  EXPECT_EQ(without.content, SlotContent::kMismatch);
}

TEST(CheckSlotContentTest, GarbageAndIoErrors) {
  FakeBlockDevice garbage(kSlotBytes);
  std::vector<uint8_t> noise(kSlotBytes, 0x33);
  ASSERT_TRUE(garbage.WriteAt(0, noise));
  std::vector<uint8_t> image = SquashfsShapedImage(20000, 5);
  SlotFacts g = CheckSlotContent(Slot::kA, &garbage, "", Recorded(image), BundleFacts{});
  EXPECT_EQ(g.content, SlotContent::kNotAnImage);

  FakeBlockDevice failing = Slot(image);
  failing.FailReadsAt(8192);
  SlotFacts io = CheckSlotContent(Slot::kA, &failing, "", Recorded(image), BundleFacts{});
  EXPECT_EQ(io.content, SlotContent::kUnreadable);

  SlotFacts missing =
      CheckSlotContent(Slot::kB, nullptr, "no device node", Recorded(image), BundleFacts{});
  EXPECT_EQ(missing.content, SlotContent::kUnreadable);
  EXPECT_EQ(missing.detail, "no device node");
}

class CheckBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = ota::testing::MakeCa(dir_.path(), "ca");
    signer_ = ota::testing::MakeSigner(dir_.path(), "signer", ca_);
    std::filesystem::create_directory(dir_.path() + "/keyring");
    std::filesystem::copy_file(ca_.cert_path, dir_.path() + "/keyring/ca.pem");
    std::vector<uint8_t> rootfs = SquashfsShapedImage(9000, 6);
    ASSERT_TRUE(WriteWholeFile(
        dir_.path() + "/rootfs.img",
        std::string_view(reinterpret_cast<const char*>(rootfs.data()), rootfs.size())));
    ASSERT_TRUE(WriteWholeFile(dir_.path() + "/uki.efi", std::string(5000, 'u')));
  }
  std::string Build(const std::string& name, const ota::testing::KeyPair& signer,
                    const std::string& arch = "x86_64") {
    ota::CreateOptions o;
    o.cert_path = signer.cert_path;
    o.key_path = signer.key_path;
    o.version = {1, 2, 3};
    o.product = "ralphos";
    o.arch = arch;
    o.rootfs_path = dir_.path() + "/rootfs.img";
    o.uki_path = dir_.path() + "/uki.efi";
    o.chunk_size = 4096;
    o.output_path = dir_.path() + "/" + name;
    auto m = ota::CreateBundle(o);
    EXPECT_TRUE(m) << m.error().ToString();
    return o.output_path;
  }
  ota::DeviceIdentity identity_{"ralphos", "x86_64"};
  ralph::testing::TempDir dir_;
  ota::testing::KeyPair ca_, signer_;
};

TEST_F(CheckBundleTest, AValidFactoryBundle) {
  BundleFacts f = CheckBundle(Build("f.rbundle", signer_), dir_.path() + "/keyring", identity_);
  EXPECT_EQ(f.health, BundleHealth::kValid) << f.detail;
  EXPECT_EQ(f.version, (Version{1, 2, 3}));
  EXPECT_EQ(f.rootfs_size, 12288u);
  EXPECT_NE(f.detail.find("signed by"), std::string::npos);
}

TEST_F(CheckBundleTest, ASignerOutsideTheKeyringIsRefused) {
  ota::testing::KeyPair other_ca = ota::testing::MakeCa(dir_.path(), "other-ca");
  ota::testing::KeyPair intruder = ota::testing::MakeSigner(dir_.path(), "intruder", other_ca);
  BundleFacts f = CheckBundle(Build("bad.rbundle", intruder), dir_.path() + "/keyring", identity_);
  EXPECT_EQ(f.health, BundleHealth::kInvalid);
  EXPECT_NE(f.detail.find("not trusted"), std::string::npos) << f.detail;
}

TEST_F(CheckBundleTest, ATamperedBundleIsRefused) {
  std::string path = Build("t.rbundle", signer_);
  auto bytes = ReadWholeFile(path);
  ASSERT_TRUE(bytes);
  // A byte of the manifest (after the fixed header).
  (*bytes)[200] ^= 0x01;
  ASSERT_TRUE(WriteWholeFile(path, *bytes));
  BundleFacts f = CheckBundle(path, dir_.path() + "/keyring", identity_);
  EXPECT_EQ(f.health, BundleHealth::kInvalid) << f.detail;
}

TEST_F(CheckBundleTest, AnotherArchitectureAndAMissingFile) {
  BundleFacts arm =
      CheckBundle(Build("arm.rbundle", signer_, "aarch64"), dir_.path() + "/keyring", identity_);
  EXPECT_EQ(arm.health, BundleHealth::kIncompatible);
  EXPECT_NE(arm.detail.find("for ralphos on aarch64"), std::string::npos) << arm.detail;
  BundleFacts missing = CheckBundle(dir_.path() + "/nope", dir_.path() + "/keyring", identity_);
  EXPECT_EQ(missing.health, BundleHealth::kMissing);
}

}  // namespace
}  // namespace ralph::recovery
