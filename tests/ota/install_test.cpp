// Integration: the slot writer on loop-device slots with the real slot
// manager over a directory EFI store. A good bundle installs and verifies;
// every bad input is refused with a clear error and slot B never goes on
// trial.
#include <fcntl.h>
#include <sys/file.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "install_fixture.h"
#include "platform/arch.h"
#include "platform/sha256.h"
#include "services/audit/audit_log.h"
#include "services/ota/esp.h"

namespace ralph::ota::testing {
namespace {

class InstallTest : public ApplianceFixture {
 protected:
  // Installs `bundle` as booted from A and expects refusal with `code` and a
  // message containing `message_part`, then checks the slots are safe.
  void ExpectRefused(const std::string& bundle, ErrorCode code, const std::string& message_part,
                     InstallOptions* options = nullptr) {
    auto report = InstallAs(bundle, 'a', options);
    ASSERT_FALSE(report.has_value()) << "installed: " << bundle;
    EXPECT_EQ(report.error().code(), code) << report.error().ToString();
    EXPECT_NE(report.error().message().find(message_part), std::string::npos)
        << report.error().message();
    boot::SlotState record = Record();
    EXPECT_NE(record.b.status, boot::SlotStatus::kTrial);
    EXPECT_NE(record.b.status, boot::SlotStatus::kGood);
    ExpectSafe({}, {});
    // The status file reports the failure.
    auto status = ReadStatusFile(dir_ / "ota-status.json");
    ASSERT_TRUE(status.has_value()) << status.error().ToString();
    EXPECT_EQ(status->phase, InstallPhase::kFailed);
    EXPECT_NE(status->error.find(message_part), std::string::npos) << status->error;
  }

  // Rewrites `bundle` with `mutate` applied to its bytes.
  void Mutate(const std::string& bundle, const std::function<void(std::vector<uint8_t>&)>& mutate) {
    auto bytes = ReadFileBytes(bundle);
    mutate(bytes);
    WriteFile(bundle, bytes);
  }
};

TEST_F(InstallTest, GoodBundleInstallsVerifiesAndArmsTrial) {
  BundleSpec spec = DefaultSpec(1);
  std::string bundle = MakeBundle("good.rbundle", spec);
  std::vector<InstallStatus> seen;
  InstallOptions options = Options(bundle);
  options.on_progress = [&](const InstallStatus& s) { seen.push_back(s); };
  auto report = InstallAs(bundle, 'a', &options);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_EQ(report->target, boot::Slot::kB);
  EXPECT_EQ(report->stats.bytes_written, spec.rootfs.size());
  EXPECT_NE(report->signer.subject.find("RalphOS test signer"), std::string::npos);

  boot::SlotState record = Record();
  EXPECT_EQ(record.b.status, boot::SlotStatus::kTrial);
  EXPECT_EQ(record.b.version.ToString(), "2.0.0");
  EXPECT_EQ(record.b.digest, *Sha256::Of(spec.rootfs));
  EXPECT_EQ(ReadSlot(boot::Slot::kB, spec.rootfs.size()), spec.rootfs);
  auto esp = EspDigest("EFI/ralph/b.efi");
  ASSERT_TRUE(esp.has_value()) << esp.error().ToString();
  EXPECT_EQ(*esp, *Sha256::Of(spec.uki));
  ExpectSafe(spec.rootfs, spec.uki);  // A still committed; B armed only because verified

  // Progress went through the phases in order and ended done.
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().phase, InstallPhase::kDone);
  EXPECT_EQ(seen.back().bytes_done, seen.back().bytes_total);
  auto status = ReadStatusFile(dir_ / "ota-status.json");
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->phase, InstallPhase::kDone);
  EXPECT_EQ(status->target_slot, "B");

  // Installing the same bundle again writes nothing (adaptive).
  auto again = InstallAs(bundle);
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_EQ(again->stats.bytes_written, 0u);
  EXPECT_EQ(again->stats.bytes_skipped, spec.rootfs.size());
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kTrial);
}

TEST_F(InstallTest, AdaptiveInstallRewritesTheEspImageOnlyWhenItDiffers) {
  BundleSpec spec = DefaultSpec(5);
  std::string bundle = MakeBundle("esp.rbundle", spec);
  ASSERT_TRUE(InstallAs(bundle).has_value());
  // Something else now sits at b.efi: the next (adaptive) install must not
  // take the ESP as current, and must write and read back the UKI again.
  WriteFile(dir_ / "other.efi", RandomBytes(5000, 77));
  auto esp = MtoolsEsp::Open(layout_.Find(kPartEfi)->device, 0);
  ASSERT_TRUE(esp.has_value()) << esp.error().ToString();
  ASSERT_TRUE((*esp)->InstallFile(dir_ / "other.efi", SlotImagePath('b')).has_value());
  ASSERT_NE(*EspDigest(SlotImagePath('b')), *Sha256::Of(spec.uki));
  auto again = InstallAs(bundle);
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_EQ(again->stats.bytes_written, 0u);  // the slot itself was current
  EXPECT_EQ(*EspDigest(SlotImagePath('b')), *Sha256::Of(spec.uki));
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kTrial);
  ExpectSafe(spec.rootfs, spec.uki);
}

TEST_F(InstallTest, RefusesWrongSignature) {
  std::string bundle = MakeBundle("b.rbundle", DefaultSpec());
  // The same trusted signer, but a signature over other bytes.
  auto other = SignDetached(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("x"), 1),
                            signer_.cert_path, signer_.key_path);
  ASSERT_TRUE(other.has_value());
  Mutate(bundle, [&](std::vector<uint8_t>& bytes) {
    BundleHeader h = *DecodeBundleHeader(bytes, bytes.size());
    std::vector<uint8_t> rebuilt(bytes.begin(), bytes.begin() + h.signature_offset());
    rebuilt.insert(rebuilt.end(), other->begin(), other->end());
    rebuilt.insert(rebuilt.end(), bytes.begin() + h.signature_end(), bytes.end());
    h.signature_length = other->size();
    auto header = EncodeBundleHeader(h);
    std::copy(header.begin(), header.end(), rebuilt.begin());
    bytes = rebuilt;
  });
  ExpectRefused(bundle, ErrorCode::kVerificationFailed, "does not match the manifest");
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kEmpty);  // nothing touched
}

TEST_F(InstallTest, RefusesSignerNotInKeyring) {
  KeyPair rogue_ca = MakeCa(dir_.path(), "rogue-ca");
  BundleSpec spec = DefaultSpec();
  spec.signer = MakeSigner(dir_.path(), "rogue", rogue_ca);
  ExpectRefused(MakeBundle("b.rbundle", spec), ErrorCode::kVerificationFailed,
                "is not trusted by keyring");
}

TEST_F(InstallTest, RefusesExpiredSigner) {
  BundleSpec spec = DefaultSpec();
  CertOptions expired;
  expired.not_before_days = -100;
  expired.not_after_days = -2;
  spec.signer = MakeSigner(dir_.path(), "expired", ca_, expired);
  ExpectRefused(MakeBundle("b.rbundle", spec), ErrorCode::kVerificationFailed,
                "certificate has expired");
}

TEST_F(InstallTest, RefusesManifestTamperedAfterSigning) {
  std::string bundle = MakeBundle("b.rbundle", DefaultSpec());
  Mutate(bundle, [](std::vector<uint8_t>& bytes) {
    std::string text(bytes.begin(), bytes.begin() + 4096);
    size_t at = text.find("<version>2.0.0");
    ASSERT_NE(at, std::string::npos);
    bytes[at + 9] = '9';
  });
  ExpectRefused(bundle, ErrorCode::kVerificationFailed, "does not match the manifest");
}

TEST_F(InstallTest, RefusesFlippedPayloadByteAtStartMiddleAndLastChunk) {
  BundleSpec spec = DefaultSpec();
  std::string clean = MakeBundle("clean.rbundle", spec);
  auto source = FileSource::Open(clean);
  auto keyring = Keyring::Load(keyring_);
  auto opened = OpenBundle(**source, *keyring);
  ASSERT_TRUE(opened.has_value());
  const Payload& rootfs = *opened->manifest.Find(PayloadType::kSystemImage);
  uint64_t last = rootfs.ChunkCount() - 1;
  for (uint64_t chunk : {uint64_t{0}, rootfs.ChunkCount() / 2, last}) {
    std::string bundle = dir_ / "flipped.rbundle";
    std::filesystem::copy_file(clean, bundle, std::filesystem::copy_options::overwrite_existing);
    Mutate(bundle, [&](std::vector<uint8_t>& bytes) {
      bytes[rootfs.offset + chunk * rootfs.chunk_size + rootfs.ChunkLength(chunk) - 1] ^= 0x80;
    });
    ExpectRefused(bundle, ErrorCode::kVerificationFailed,
                  fmt::format("writing slot B: rootfs chunk {} (bytes", chunk));
    // Started writing, so B is marked `writing`: never bootable half-written.
    EXPECT_EQ(Record().b.status, boot::SlotStatus::kWriting);
  }
  // A flipped byte in the kernel image is caught as well, still before trial.
  std::string bundle = dir_ / "flipped-uki.rbundle";
  std::filesystem::copy_file(clean, bundle, std::filesystem::copy_options::overwrite_existing);
  const Payload& uki = *opened->manifest.Find(PayloadType::kUki);
  Mutate(bundle, [&](std::vector<uint8_t>& bytes) { bytes[uki.offset + 100] ^= 1; });
  ExpectRefused(bundle, ErrorCode::kVerificationFailed, "uki chunk 0 (bytes");
  // The clean bundle then completes the install.
  auto report = InstallAs(clean);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  ExpectSafe(spec.rootfs, spec.uki);
}

TEST_F(InstallTest, RefusesTruncatedBundle) {
  std::string bundle = MakeBundle("b.rbundle", DefaultSpec());
  Mutate(bundle, [](std::vector<uint8_t>& bytes) { bytes.resize(bytes.size() - 5000); });
  ExpectRefused(bundle, ErrorCode::kCorrupt, "bundle is truncated: payload 'uki' ends at byte");
  Mutate(bundle, [](std::vector<uint8_t>& bytes) { bytes.resize(200); });
  ExpectRefused(bundle, ErrorCode::kCorrupt, "bundle is truncated");
}

TEST_F(InstallTest, RefusesOversizedPayload) {
  BundleSpec spec = DefaultSpec();
  spec.rootfs = RandomBytes(kSlotBytes + 4096, 5);
  ExpectRefused(MakeBundle("b.rbundle", spec), ErrorCode::kNoSpace,
                "the system image is 16781312 bytes, slot B holds only 16777216");
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kEmpty);
}

// An aarch64 bundle on an x86_64 appliance and the reverse: refused before
// anything is written, slot B's bytes and the ESP as they were. Then the
// running build's own arch (identity.arch empty, as on the appliance):
// natively on x86_64, and under qemu-user in the aarch64 build.
TEST_F(InstallTest, RefusesABundleForTheOtherArchitectureWritingNothing) {
  constexpr uint64_t kProbe = 1 << 20;
  std::vector<uint8_t> slot_b = ReadSlot(boot::Slot::kB, kProbe);
  auto esp_before = EspDigest(SlotImagePath('b'));
  const std::pair<std::string, std::string> cases[] = {
      {"x86_64", "aarch64"}, {"aarch64", "x86_64"}, {"", ""}};
  for (auto [device, bundle_arch] : cases) {
    if (device.empty()) bundle_arch = OtherArch();
    SCOPED_TRACE("device " +
                 (device.empty() ? "(this build's) " + std::string(arch::Name()) : device) +
                 ", bundle " + bundle_arch);
    BundleSpec spec = DefaultSpec();
    spec.arch = bundle_arch;
    std::string bundle = MakeBundle(bundle_arch + ".rbundle", spec);
    InstallOptions options = Options(bundle);
    options.identity.arch = device;
    ExpectRefused(bundle, ErrorCode::kRefused,
                  fmt::format("bundle is for ralphos/{}, this device is ralphos/{}", bundle_arch,
                              device.empty() ? arch::Name() : device),
                  &options);
    EXPECT_TRUE(ReadSlot(boot::Slot::kB, kProbe) == slot_b) << "slot B was written";
    auto esp_after = EspDigest(SlotImagePath('b'));
    EXPECT_EQ(esp_before.has_value(), esp_after.has_value());
    if (esp_before && esp_after) {
      EXPECT_EQ(*esp_before, *esp_after) << "B's UKI was written";
    }
  }
}

TEST_F(InstallTest, RefusesWrongProduct) {
  BundleSpec other = DefaultSpec();
  other.product = "toaster";
  ExpectRefused(MakeBundle("toaster.rbundle", other), ErrorCode::kRefused,
                "bundle is for toaster/" + std::string(arch::Name()));
}

TEST_F(InstallTest, RefusesGarbageManifestEvenWhenSigned) {
  std::string garbage = "<ralph-bundle format=\"1\"><version>2.0.0</version><<<>>";
  auto sig = SignDetached(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size()),
      signer_.cert_path, signer_.key_path);
  ASSERT_TRUE(sig.has_value());
  BundleHeader h{.manifest_length = garbage.size(), .signature_length = sig->size()};
  auto header = EncodeBundleHeader(h);
  std::vector<uint8_t> bytes(header.begin(), header.end());
  bytes.insert(bytes.end(), garbage.begin(), garbage.end());
  bytes.insert(bytes.end(), sig->begin(), sig->end());
  std::string bundle = dir_ / "garbage.rbundle";
  WriteFile(bundle, bytes);
  ExpectRefused(bundle, ErrorCode::kCorrupt, "parsing manifest: manifest is not well-formed XML");
}

TEST_F(InstallTest, AntiRollbackRefusesDowngradeUnlessOverridden) {
  // 3.0.0 into B, boot it, commit it: the minimum becomes 3.0.0.
  BundleSpec v3 = DefaultSpec(3);
  v3.version = {3, 0, 0};
  ASSERT_TRUE(InstallAs(MakeBundle("v3.rbundle", v3)).has_value());
  {
    boot::SlotManager on_b = Manager('b');
    ASSERT_TRUE(on_b.OnBoot().has_value());
    auto good = on_b.MarkGood();
    ASSERT_TRUE(good.has_value()) << good.error().ToString();
  }
  ASSERT_EQ(Record().committed, boot::Slot::kB);
  ASSERT_EQ(Record().minimum_version.ToString(), "3.0.0");

  BundleSpec v2 = DefaultSpec(2);
  v2.version = {2, 5, 0};
  std::string old = MakeBundle("v2.rbundle", v2);
  auto refused = InstallAs(old, 'b');
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kRefused);
  EXPECT_NE(refused.error().message().find(
                "bundle version 2.5.0 is below the minimum allowed version 3.0.0 (anti-rollback)"),
            std::string::npos)
      << refused.error().message();
  EXPECT_NE(Record().a.status, boot::SlotStatus::kTrial);

  InstallOptions override_options = Options(old);
  override_options.downgrade = DowngradeOverride::kAllow;
  // The override is recorded in the audit log before anything is written
  // (tests/audit/ota_audit_test.cpp: and refused when it cannot be).
  auto audit_log = audit::AuditLog::Open(dir_ / "audit.db", audit::OpenMode::kCreateIfMissing);
  ASSERT_TRUE(audit_log.has_value()) << audit_log.error().ToString();
  override_options.audit = audit_log->get();
  auto allowed = InstallAs(old, 'b', &override_options);
  ASSERT_TRUE(allowed.has_value()) << allowed.error().ToString();
  ASSERT_EQ(allowed->notes.size(), 1u);
  EXPECT_NE(allowed->notes[0].find("DOWNGRADE OVERRIDE: installing 2.5.0 below the minimum"),
            std::string::npos);
  EXPECT_EQ(Record().a.status, boot::SlotStatus::kTrial);
}

TEST_F(InstallTest, RefusesWhenBootedSlotIsNotCommitted) {
  BundleSpec spec = DefaultSpec();
  std::string bundle = MakeBundle("b.rbundle", spec);
  ASSERT_TRUE(InstallAs(bundle).has_value());
  // Booted into B on trial, not yet committed.
  ASSERT_TRUE(Manager('b').OnBoot().has_value());
  auto refused = InstallAs(bundle, 'b');
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kRefused);
  EXPECT_NE(refused.error().message().find("the booted slot B is not committed"), std::string::npos)
      << refused.error().message();
}

TEST_F(InstallTest, OnlyOneInstallAtATime) {
  std::string bundle = MakeBundle("b.rbundle", DefaultSpec());
  InstallOptions options = Options(bundle);
  UniqueFd held(::open(options.lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(held.valid());
  ASSERT_EQ(::flock(held.get(), LOCK_EX), 0);
  auto busy = InstallAs(bundle, 'a', &options);
  ASSERT_FALSE(busy.has_value());
  EXPECT_EQ(busy.error().code(), ErrorCode::kBusy);
  EXPECT_NE(busy.error().message().find("another update is being installed"), std::string::npos);
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kEmpty);
}

TEST_F(InstallTest, RalphctlUpdateInstallAndStatus) {
  const char* binary_dir = std::getenv("RALPH_BINARY_DIR");
  ASSERT_NE(binary_dir, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
  std::string ralphctl = std::string(binary_dir) + "/bin/ralphctl";
  BundleSpec spec = DefaultSpec(7);
  std::string bundle = MakeBundle("cli.rbundle", spec);
  std::string status_file = dir_ / "cli-status.json";
  std::string efivars = std::getenv("EFIVARFS_PATH");
  efivars.pop_back();  // ralphctl --efivars takes the directory without the slash
  auto installed = ralph::testing::RunCommand(
      {ralphctl,          "update",       "install",       bundle,       "--keyring",
       keyring_,          "--efivars",    efivars,         "--disk",     loop_->device(),
       "--cmdline",       "ralph.slot=a", "--status-file", status_file,  "--lock",
       dir_ / "cli.lock", "--work-dir",   dir_.path(),     "--audit-db", dir_ / "audit.db"});
  ASSERT_TRUE(installed.has_value()) << installed.error().ToString();
  EXPECT_NE(installed->find("installed 2.0.0 into slot B"), std::string::npos) << *installed;
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kTrial);
  ExpectSafe(spec.rootfs, spec.uki);

  auto json = ralph::testing::RunCommand(
      {ralphctl, "update", "status", "--json", "--status-file", status_file});
  ASSERT_TRUE(json.has_value()) << json.error().ToString();
  auto status = StatusFromJson(*json);
  ASSERT_TRUE(status.has_value()) << status.error().ToString() << "\n" << *json;
  EXPECT_EQ(status->phase, InstallPhase::kDone);
  EXPECT_EQ(status->version, "2.0.0");
  EXPECT_EQ(status->bytes_done, status->bytes_total);

  // A refused install exits non-zero with the reason, and status says so.
  BundleSpec arm = DefaultSpec(8);
  arm.arch = OtherArch();
  auto refused = ralph::testing::RunCommand(
      {ralphctl,        "update",        "install",    MakeBundle("arm.rbundle", arm),
       "--keyring",     keyring_,        "--efivars",  efivars,
       "--disk",        loop_->device(), "--cmdline",  "ralph.slot=a",
       "--status-file", status_file,     "--lock",     dir_ / "cli.lock",
       "--work-dir",    dir_.path(),     "--audit-db", dir_ / "audit.db"});
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("bundle is for ralphos/" + OtherArch()),
            std::string::npos)
      << refused.error().message();
  auto failed = ReadStatusFile(status_file);
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(failed->phase, InstallPhase::kFailed);
}

}  // namespace
}  // namespace ralph::ota::testing

int main(int argc, char** argv) {
  return ralph::ota::testing::RunWithEfivarDirectory(argc, argv);
}
