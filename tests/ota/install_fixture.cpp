#include "install_fixture.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "drivers/block_device.h"
#include "drivers/gpt.h"
#include "platform/sha256.h"
#include "platform/testing/efivar_directory.h"
#include "services/ota/esp.h"

namespace ralph::ota::testing {

int RunWithEfivarDirectory(int argc, char** argv) {
  return ::ralph::testing::RunWithEfivarDirectory(argv, "ralph-ota-efivars", [&] {
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
  });
}

void ApplianceFixture::SetUp() {
  // A clean variable store for each test.
  std::string efivars = std::getenv("EFIVARFS_PATH");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(efivars, ec)) {
    std::filesystem::remove(entry.path(), ec);
  }
  auto vars = LibefivarStore::Open();
  ASSERT_TRUE(vars.has_value()) << vars.error().ToString();
  vars_ = std::move(*vars);

  ca_ = MakeCa(dir_.path(), "ca");
  signer_ = MakeSigner(dir_.path(), "signer", ca_);
  keyring_ = dir_ / "keyring";
  std::filesystem::create_directory(keyring_);
  std::filesystem::copy_file(ca_.cert_path, keyring_ + "/release-ca.pem");

  image_ = dir_ / "disk.img";
  GptSpec spec;
  spec.partitions = {{"EFI", 16 * kMiB, PartitionType::kEfiSystem},
                     {"SYSTEM_A", kSlotBytes, PartitionType::kLinuxRootX86_64},
                     {"SYSTEM_B", kSlotBytes, PartitionType::kLinuxRootX86_64},
                     {"VAR", 2 * kMiB, PartitionType::kLinuxVar},
                     {"RECOVERY", 4 * kMiB, PartitionType::kLinuxFilesystem}};
  auto created = CreateGptImage(image_, 64 * kMiB, spec);
  ASSERT_TRUE(created.has_value()) << created.error().ToString();
  auto loop = ralph::testing::LoopDevice::Attach(image_);
  ASSERT_TRUE(loop.has_value()) << loop.error().ToString();
  loop_ = std::make_unique<ralph::testing::LoopDevice>(std::move(*loop));
  auto layout = ProbeDisk(loop_->device());
  ASSERT_TRUE(layout.has_value()) << layout.error().ToString();
  layout_ = *layout;
  const PartitionInfo* esp = layout_.Find(kPartEfi);
  ASSERT_NE(esp, nullptr);
  ASSERT_FALSE(esp->device.empty()) << "no partition device for the ESP on " << loop_->device();
  auto mkfs = ralph::testing::RunCommand({"mkfs.vfat", "-n", "ESP", esp->device});
  ASSERT_TRUE(mkfs.has_value()) << mkfs.error().ToString() << " (Debian package dosfstools)";

  // Provision: booted from A, which becomes the committed, good slot.
  boot::SlotManager manager = Manager('a');
  auto repaired = manager.Repair();
  ASSERT_TRUE(repaired.has_value()) << repaired.error().ToString();
  ASSERT_EQ(Record().committed, boot::Slot::kA);
}

void ApplianceFixture::TearDown() {
  vars_.reset();
  if (loop_) IgnoreError(loop_->Detach());
  loop_.reset();
}

boot::SlotManager ApplianceFixture::Manager(char booted) {
  auto manager =
      boot::SlotManager::Create(*vars_, layout_, std::string("quiet ralph.slot=") + booted);
  EXPECT_TRUE(manager.has_value()) << manager.error().ToString();
  return std::move(*manager);
}

boot::SlotState ApplianceFixture::Record() {
  auto status = Manager('a').Status();
  EXPECT_TRUE(status.has_value()) << status.error().ToString();
  EXPECT_TRUE(status->view.record.has_value());
  return status->view.record.value_or(boot::SlotState{});
}

ApplianceFixture::BundleSpec ApplianceFixture::DefaultSpec(uint32_t seed) {
  BundleSpec spec;
  spec.rootfs = RandomBytes(6 * kMiB + 1000, seed);
  spec.uki = RandomBytes(300 * 1024 + 7, seed + 1000);
  spec.signer = signer_;
  return spec;
}

std::string ApplianceFixture::MakeBundle(const std::string& name, BundleSpec spec) {
  std::string rootfs = dir_ / (name + ".rootfs");
  std::string uki = dir_ / (name + ".uki");
  WriteFile(rootfs, spec.rootfs);
  WriteFile(uki, spec.uki);
  CreateOptions o;
  o.cert_path = spec.signer.cert_path;
  o.key_path = spec.signer.key_path;
  o.version = spec.version;
  o.product = spec.product;
  o.arch = spec.arch;
  o.rootfs_path = rootfs;
  o.uki_path = uki;
  o.chunk_size = kTestChunk;
  o.output_path = dir_ / name;
  auto m = CreateBundle(o);
  EXPECT_TRUE(m.has_value()) << m.error().ToString();
  return o.output_path;
}

InstallOptions ApplianceFixture::Options(const std::string& source) {
  InstallOptions o;
  o.source = source;
  o.keyring_path = keyring_;
  o.identity.product = "ralphos";
  o.identity.arch = std::string(arch::Name());
  o.lock_path = dir_ / "ota.lock";
  o.status_path = dir_ / "ota-status.json";
  o.work_dir = dir_.path();
  return o;
}

Result<InstallReport> ApplianceFixture::InstallAs(const std::string& source, char booted,
                                                  InstallOptions* options) {
  InstallOptions o = options ? *options : Options(source);
  boot::SlotManager manager = Manager(booted);
  return Install(o, manager, layout_);
}

std::vector<uint8_t> ApplianceFixture::ReadSlot(boot::Slot slot, uint64_t size) {
  const PartitionInfo* part = layout_.Find(slot == boot::Slot::kA ? kPartSystemA : kPartSystemB);
  std::vector<uint8_t> out(size);
  auto device = BlockDevice::Open(part->device);
  EXPECT_TRUE(device.has_value());
  EXPECT_TRUE((*device)->ReadAt(0, out).has_value());
  return out;
}

Result<Sha256Digest> ApplianceFixture::EspDigest(const std::string& esp_path) {
  auto esp = MtoolsEsp::Open(layout_.Find(kPartEfi)->device, 0);
  if (!esp) return esp.error();
  return (*esp)->Digest(esp_path);
}

void ApplianceFixture::ExpectSafe(const std::vector<uint8_t>& expected_rootfs,
                                  const std::vector<uint8_t>& expected_uki) {
  auto status = Manager('a').Status();
  ASSERT_TRUE(status.has_value()) << status.error().ToString();
  ASSERT_TRUE(status->view.record.has_value())
      << (status->view.record_error ? status->view.record_error->ToString() : "no record");
  const boot::SlotState& record = *status->view.record;
  EXPECT_EQ(record.committed, boot::Slot::kA);
  EXPECT_EQ(record.a.status, boot::SlotStatus::kGood);
  const boot::BootEntry* a_entry = status->view.Find(boot::BootTarget::kSlotA);
  ASSERT_NE(a_entry, nullptr);
  ASSERT_FALSE(status->view.boot_order.empty());
  EXPECT_EQ(status->view.boot_order.front(), a_entry->number);
  const boot::BootEntry* b_entry = status->view.Find(boot::BootTarget::kSlotB);
  bool b_armed = b_entry && status->view.boot_next == b_entry->number;
  if (record.b.status == boot::SlotStatus::kTrial || b_armed) {
    // Only ever after full verification: B holds exactly the image, and the
    // ESP its kernel.
    EXPECT_EQ(record.b.status, boot::SlotStatus::kTrial);
    EXPECT_TRUE(ReadSlot(boot::Slot::kB, expected_rootfs.size()) == expected_rootfs)
        << "slot B on trial but its content is not the image";
    EXPECT_EQ(record.b.digest, *Sha256::Of(expected_rootfs));
    auto esp = EspDigest(SlotImagePath('b'));
    ASSERT_TRUE(esp.has_value()) << esp.error().ToString();
    EXPECT_EQ(*esp, *Sha256::Of(expected_uki));
  } else {
    EXPECT_FALSE(b_armed);
  }
}

}  // namespace ralph::ota::testing
