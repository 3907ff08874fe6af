// A test appliance for the OTA integration tests: a GPT disk image (EFI,
// SYSTEM_A, SYSTEM_B, VAR, RECOVERY) made with drivers/gpt.h, attached with
// `losetup -f -P` (detached on every path), a FAT ESP (mkfs.vfat), a
// directory-backed EFI variable store (libefivar with EFIVARFS_PATH), a
// slot manager provisioned as "booted from A, A committed", and a PKI with a
// keyring.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "platform/arch.h"
#include "platform/efivar_store.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/installer.h"
#include "test_pki.h"
#include "test_util.h"
#include "tests/support/loop_device.h"

namespace ralph::ota::testing {

inline constexpr uint64_t kMiB = 1024 * 1024;
inline constexpr uint64_t kSlotBytes = 16 * kMiB;
inline constexpr uint32_t kTestChunk = 64 * 1024;

// Re-executes the test binary with EFIVARFS_PATH set to a fresh directory
// (libefivar reads it before main(); see platform/efivar_store.h), runs the
// tests, removes the directory. Use as the test binary's main().
int RunWithEfivarDirectory(int argc, char** argv);

class ApplianceFixture : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // A slot manager as the system booted from `slot` ('a' / 'b') sees it.
  boot::SlotManager Manager(char booted = 'a');
  boot::SlotState Record();

  struct BundleSpec {
    Version version{2, 0, 0};
    std::string product = "ralphos";
    std::string arch = std::string(arch::Name());  // this build's, as the appliance's
    std::vector<uint8_t> rootfs;
    std::vector<uint8_t> uki;
    KeyPair signer;
  };
  // A bundle with a fresh random rootfs (6 MiB + 1000 bytes) unless given.
  std::string MakeBundle(const std::string& name, BundleSpec spec);
  BundleSpec DefaultSpec(uint32_t seed = 1);

  // The supported arch that is not this build's: a bundle for it is refused.
  static std::string OtherArch() { return arch::Name() == "x86_64" ? "aarch64" : "x86_64"; }

  InstallOptions Options(const std::string& source);
  Result<InstallReport> InstallAs(const std::string& source, char booted = 'a',
                                  InstallOptions* options = nullptr);

  // The first `size` bytes of slot B / A.
  std::vector<uint8_t> ReadSlot(boot::Slot slot, uint64_t size);
  Result<Sha256Digest> EspDigest(const std::string& esp_path);
  // The invariants every interrupted or refused install must keep: A
  // committed and good and first in BootOrder; B not on trial (and no
  // BootNext) unless B holds exactly `expected_rootfs` and the ESP holds
  // `expected_uki` under b.efi.
  void ExpectSafe(const std::vector<uint8_t>& expected_rootfs,
                  const std::vector<uint8_t>& expected_uki);

  TempDir dir_;
  KeyPair ca_, signer_;
  std::string keyring_;
  std::string image_;
  std::unique_ptr<ralph::testing::LoopDevice> loop_;
  DiskLayout layout_;
  std::unique_ptr<LibefivarStore> vars_;
};

}  // namespace ralph::ota::testing
