// RECOVERY boots and ralph-recovery:
// - a factory image (system image and its UKI) whose health gate fails on a
//   fresh machine is marked bad, the machine comes up in RECOVERY, and ralph-recovery restores slot
//   A from the factory bundle, which then commits;
// - both slots overwritten with garbage: the firmware falls through to
//   RECOVERY, which restores A, and A commits, with the recovery in the
//   audit log;
// - a factory bundle whose signature does not verify is refused, nothing is
//   written, and RECOVERY waits for the operator;
// - a committed slot whose health gate fails on every boot: after 3 such
//   boots the boot-failure counter arms RECOVERY, which says why it was
//   entered and waits (the slot's image is intact);
// - an armed RECOVERY boot is a rescue boot that changes no slot state (a
//   usable slot: recovery does nothing by itself), and the boot after it is
//   the committed slot's again.
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

#include "drivers/disk.h"
#include "harness/e2e_test.h"
#include "platform/arch.h"
#include "platform/file_io.h"
#include "platform/process.h"
#include "tools/mkimage/builder.h"

namespace ralph::e2e {
namespace {

constexpr const char* kRecordVar = "RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d";
constexpr const char* kRecoveryBanner = "RalphOS RECOVERY mode";
constexpr const char* kRestoring =
    "recovery: restore slot: no usable slot: restoring slot A from the factory bundle";

class HealthFailATest : public E2eTest {
 protected:
  // Slot A's UKI (its file and the removable-path copy) replaced by the
  // health-fail variant's, whose command line holds the root hash of that
  // variant's system image.
  void HealthFailUkiAsA() {
    auto uki = ReadEspFile(Image("health-fail"), "/EFI/ralph/b.efi");
    ASSERT_TRUE(uki) << uki.error().ToString();
    std::string uki_file = scratch_->path() + "/health-fail.efi";
    ASSERT_TRUE(WriteWholeFile(uki_file, *uki));
    for (const char* path : {"/EFI/ralph/a.efi", "/EFI/BOOT/BOOTX64.EFI"}) {
      auto written = WriteEspFile(disk_, path, uki_file);
      ASSERT_TRUE(written) << written.error().ToString();
    }
  }
};

TEST_F(HealthFailATest, FactoryImageFailingItsHealthGateOnAFreshMachineIsRestoredFromRecovery) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kFresh));
  // The factory slot A carries the health-fail variant's system image (a
  // ralphd that cannot start) and that image's UKI (its root hash: with the
  // good UKI, dm-verity would refuse the image before ralphd ever ran);
  // RECOVERY and its factory bundle are good.
  auto copied = CopyPartitionAs(Image("health-fail"), "SYSTEM_B", disk_, "SYSTEM_A");
  ASSERT_TRUE(copied) << copied.error().ToString();
  ASSERT_NO_FATAL_FAILURE(HealthFailUkiAsA());
  Machine machine = Boot();
  for (std::string marker :
       {std::string(kRemovablePath), BootingSlot("A"),
        std::string("initialised with slot A on trial (3 tries; the health gate commits it)"),
        std::string("slot manager: boot event trial"), std::string("service ralphd is not running"),
        std::string("health gate failed: slot A marked bad; rebooting into RECOVERY"),
        BootingSlot("RECOVERY"), std::string("slot manager: boot event recovery"),
        std::string(kRecoveryBanner), std::string("committed slot: none"),
        std::string("slot A: bad"), std::string("bad slots: A"),
        std::string("recovery: entered: no slot is committed")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(machine.Count("health gate passed"), 0u);
  // No usable slot, a valid factory bundle: recovery restores A by itself,
  // and the factory image (good) commits.
  for (std::string marker :
       {std::string("recovery: slot A: bad"), std::string(kRestoring),
        std::string("recovery: slot A restored from /usr/share/ralph/factory.rbundle"),
        std::string("recovery: done, rebooting"), BootingSlot("A"), CommittedSlot("A")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("committed:  A"), std::string::npos) << status.output;
}

TEST_F(E2eTest, BothSlotsGarbageFallToRecoveryWhichRestoresAFromTheFactoryBundle) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kFresh));
  for (const char* label : {"SYSTEM_A", "SYSTEM_B"}) {
    auto scribbled = ScribblePartition(disk_, label, 0, 4 << 20);
    ASSERT_TRUE(scribbled) << scribbled.error().ToString();
  }
  Machine machine = Boot();
  // A's UKI loads, its root is garbage (dm-verity refuses its first block):
  // early boot reboots, the tries run out, and BootOrder (RECOVERY first
  // while nothing is committed) falls through to RECOVERY.
  for (std::string marker :
       {BootingSlot("A"), std::string("data block 0 is corrupted"),
        std::string("slot A root SYSTEM_A (/dev/vda2): reading /dev/mapper/ralph-root"),
        BootingSlot("RECOVERY"), std::string(kRecoveryBanner),
        std::string("recovery: entered: no slot is committed"),
        std::string("recovery: slot A: trial"), std::string("content holds no system image"),
        std::string("recovery: factory bundle /usr/share/ralph/factory.rbundle: valid"),
        std::string(kRestoring),
        std::string("recovery: slot A restored from /usr/share/ralph/factory.rbundle"),
        std::string("recovery: done, rebooting"), BootingSlot("A"), CommittedSlot("A")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(machine.Count(BootingSlot("RECOVERY")), 1u);
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS A");
  // The system's audit log on VAR (the OTA writer's, not ralphd's own)
  // shows the recovery: entered, the OTA writer's install into A, the
  // restore.
  auto audit = Ralphctl(machine, {"audit", "list", "--audit-db", "/var/lib/ralph/audit.db"});
  ASSERT_EQ(audit.exit, 0) << audit.output;
  for (const char* row :
       {"recovery-entered", "install-started", "install-finished", "slot-restored"}) {
    EXPECT_NE(audit.output.find(row), std::string::npos) << row << " missing:\n" << audit.output;
  }
  EXPECT_LT(audit.output.find("recovery-entered"), audit.output.find("slot-restored"));
  auto verify = Ralphctl(machine, {"audit", "verify", "--audit-db", "/var/lib/ralph/audit.db"});
  EXPECT_EQ(verify.exit, 0) << verify.output;
}

// Replaces RECOVERY's factory bundle with a copy whose manifest has one
// byte changed (its signature no longer matches), rebuilding RECOVERY's
// squashfs on the host with its dm-verity tree, and putting the new root
// hash on recovery.efi's command line, signed again with the images'
// Secure Boot key (the image builder's steps: a changed RECOVERY with the
// old root hash would not boot at all, nor would an unsigned UKI).
void TamperWithFactoryBundle(const std::string& disk, const std::string& work,
                             const std::string& images_dir) {
  auto layout = ProbeDisk(disk);
  ASSERT_TRUE(layout) << layout.error().ToString();
  const PartitionInfo* recovery = layout->Find("RECOVERY");
  ASSERT_NE(recovery, nullptr);
  auto run = [](std::vector<std::string> argv) {
    auto ran = RunProgram({.argv = std::move(argv)});
    ASSERT_TRUE(ran) << ran.error().ToString();
    ASSERT_TRUE(ran->ok()) << ran->Describe() << ": " << ran->err;
  };
  std::string part = work + "/recovery.img", root = work + "/recovery-root";
  ASSERT_NO_FATAL_FAILURE(run({"dd", "if=" + disk, "of=" + part, "bs=1M",
                               fmt::format("skip={}", recovery->offset_bytes() >> 20),
                               fmt::format("count={}", recovery->size_bytes() >> 20)}));
  ASSERT_NO_FATAL_FAILURE(run({"unsquashfs", "-no-xattrs", "-d", root, part}));
  std::string bundle = root + "/usr/share/ralph/factory.rbundle";
  auto bytes = ReadWholeFile(bundle);
  ASSERT_TRUE(bytes) << bytes.error().ToString();
  // Past the fixed header: a byte of the signed manifest.
  (*bytes)[300] ^= 0x20;
  ASSERT_TRUE(WriteWholeFile(bundle, *bytes));
  std::string rebuilt = work + "/recovery-tampered.img";
  ASSERT_NO_FATAL_FAILURE(run({"mksquashfs", root, rebuilt, "-noappend", "-quiet", "-no-progress",
                               "-comp", "zstd", "-all-root", "-no-xattrs"}));
  auto verity = mkimage::AppendHashTree(rebuilt, "tampered-recovery");
  ASSERT_TRUE(verity) << verity.error().ToString();
  ASSERT_LE(std::filesystem::file_size(rebuilt), recovery->size_bytes());
  ASSERT_NO_FATAL_FAILURE(run({"dd", "if=" + rebuilt, "of=" + disk, "bs=1M", "conv=notrunc,fsync",
                               fmt::format("seek={}", recovery->offset_bytes() >> 20)}));
  // recovery.efi with the new image's verity words in place of the old.
  auto uki = ReadEspFile(disk, "/EFI/ralph/recovery.efi");
  ASSERT_TRUE(uki) << uki.error().ToString();
  std::string efi = work + "/recovery.efi", cmdline_file = work + "/recovery.cmdline";
  ASSERT_TRUE(WriteWholeFile(efi, *uki));
  ASSERT_NO_FATAL_FAILURE(
      run({"objcopy", "-O", "binary", "--only-section=.cmdline", efi, cmdline_file}));
  auto cmdline = ReadWholeFile(cmdline_file);
  ASSERT_TRUE(cmdline) << cmdline.error().ToString();
  std::string words;
  std::istringstream in(*cmdline);
  for (std::string word; in >> word;) {
    if (!word.starts_with("ralph.verity.")) words += word + " ";
  }
  words += RenderVerityCmdline(*verity);
  // Assembled again from its own kernel, initrd and os-release with the
  // new command line, as ralph-mkimage does (a section edited in place
  // leaves a PE image whose Secure Boot hash no longer matches), and signed.
  for (const char* section : {"linux", "initrd", "osrel"}) {
    ASSERT_NO_FATAL_FAILURE(
        run({"objcopy", "-O", "binary", fmt::format("--only-section=.{}", section), efi,
             fmt::format("{}/recovery.{}", work, section)}));
  }
  auto osrel = ReadWholeFile(work + "/recovery.osrel");
  ASSERT_TRUE(osrel) << osrel.error().ToString();
  std::string rebuilt_efi = work + "/recovery-new.efi";
  auto assembled = mkimage::AssembleUki(
      work + "/recovery.linux", work + "/recovery.initrd", words, *osrel,
      fmt::format("/usr/lib/systemd/boot/efi/{}", arch::EfiStubFileName()), 0, rebuilt_efi);
  ASSERT_TRUE(assembled) << assembled.error().ToString();
  auto signed_efi =
      mkimage::SignEfiImage(rebuilt_efi, images_dir + "/pki/sb-snakeoil.key", kSnakeoilCert);
  ASSERT_TRUE(signed_efi) << signed_efi.error().ToString();
  auto written = WriteEspFile(disk, "/EFI/ralph/recovery.efi", rebuilt_efi);
  ASSERT_TRUE(written) << written.error().ToString();
}

TEST_F(E2eTest, AFactoryBundleWithABadSignatureIsRefusedAndRecoveryWaits) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kFresh));
  for (const char* label : {"SYSTEM_A", "SYSTEM_B"}) {
    auto scribbled = ScribblePartition(disk_, label, 0, 4 << 20);
    ASSERT_TRUE(scribbled) << scribbled.error().ToString();
  }
  ASSERT_NO_FATAL_FAILURE(TamperWithFactoryBundle(disk_, scratch_->path(), paths_.images_dir));
  Machine machine = Boot();
  for (std::string marker :
       {BootingSlot("RECOVERY"), std::string("recovery: entered: no slot is committed"),
        std::string("recovery: factory bundle /usr/share/ralph/factory.rbundle: INVALID"),
        std::string("recovery: waiting for the operator: no usable slot, and the factory bundle "
                    "cannot be used: bundle /usr/share/ralph/factory.rbundle refused"),
        std::string("waiting for operator media")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  // Nothing was written: slot A is still as the failed trials left it, and
  // RECOVERY stays up for the operator.
  EXPECT_EQ(machine.Count("slot A restored"), 0u);
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS RECOVERY");
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("committed:  none"), std::string::npos) << status.output;
  auto audit = Ralphctl(machine, {"audit", "list", "--audit-db", "/var/lib/ralph/audit.db"});
  ASSERT_EQ(audit.exit, 0) << audit.output;
  EXPECT_NE(audit.output.find("recovery-entered"), std::string::npos) << audit.output;
  EXPECT_EQ(audit.output.find("install-started"), std::string::npos) << audit.output;
}

TEST_F(HealthFailATest, ACommittedSlotFailingItsHealthGateEveryBootEndsInRecovery) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  // The committed slot A now holds a system whose ralphd cannot start (and
  // that system's UKI): its health gate fails on every boot.
  auto copied = CopyPartitionAs(Image("health-fail"), "SYSTEM_B", disk_, "SYSTEM_A");
  ASSERT_TRUE(copied) << copied.error().ToString();
  ASSERT_NO_FATAL_FAILURE(HealthFailUkiAsA());
  Machine machine = Boot();
  for (int boot = 1; boot <= 3; ++boot) {
    for (std::string marker :
         {fmt::format("boot-failure counter: boot {} of slot A since its last healthy one", boot),
          std::string("health gate FAILED on the committed slot A")}) {
      auto seen = machine.WaitFor(marker, kBootTimeout);
      ASSERT_TRUE(seen) << seen.error().ToString();
    }
    ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  }
  // The fourth start finds three failed boots behind it: RECOVERY is armed
  // for the next reset (this boot goes on, so the slot stays reachable).
  for (std::string marker :
       {std::string(
            "RECOVERY entry: slot A failed to reach a healthy state 3 boots in a row: arming "
            "RECOVERY for the next boot"),
        std::string("RECOVERY armed (BootNext)"),
        std::string("health gate FAILED on the committed slot A")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "RECOVERY"));
  for (std::string marker :
       {std::string("recovery: entered: the committed slot failed to boot repeatedly: slot A "
                    "failed to reach a healthy state 3 boots in a row"),
        std::string("recovery: waiting for the operator: slot A is intact but failed to boot "
                    "repeatedly")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS RECOVERY");
  EXPECT_EQ(machine.Count(BootingSlot("A")), 4u);
  auto audit = Ralphctl(machine, {"audit", "list", "--audit-db", "/var/lib/ralph/audit.db"});
  ASSERT_EQ(audit.exit, 0) << audit.output;
  EXPECT_NE(audit.output.find("recovery-entered"), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("failed to boot repeatedly"), std::string::npos) << audit.output;
}

TEST_F(E2eTest, ArmedRecoveryBootsOnceAndLeavesTheCommittedSlotAsItWas) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();
  auto before = ReadGuestEfiVar(machine, kRecordVar);
  ASSERT_TRUE(before) << before.error().ToString();

  // The operator's break-glass through ralphd: armed, audited, rebooted.
  auto armed = Ralphctl(machine, {"recovery", "reboot", "--reason", "e2e break-glass"});
  ASSERT_EQ(armed.exit, 0) << armed.output;
  EXPECT_NE(armed.output.find("RECOVERY is armed for the next boot"), std::string::npos)
      << armed.output;
  auto down = machine.WaitFor(BootingSlot("RECOVERY"), kBootTimeout);
  ASSERT_TRUE(down) << down.error().ToString();
  for (std::string marker :
       {std::string("slot manager: boot event recovery"), std::string(kRecoveryBanner),
        std::string("committed slot: A"), std::string("bad slots: none"),
        std::string("RalphOS RECOVERY up as PID 1"),
        std::string("recovery: waiting for the operator: slot A is usable: nothing to do by "
                    "itself")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS RECOVERY");
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("booted:     RECOVERY"), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("committed:  A"), std::string::npos) << status.output;
  auto during = ReadGuestEfiVar(machine, kRecordVar);
  ASSERT_TRUE(during) << during.error().ToString();
  EXPECT_EQ(*during, *before) << "a RECOVERY boot wrote RalphSlotState";
  // Only A's boot before it was judged.
  EXPECT_EQ(machine.Count("health gate passed"), 1u);

  // The next boot is the committed slot's, through its own entry, and its
  // state is what it was.
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  auto committed = machine.WaitFor(CommittedSlot("A") + " (it already was", kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS A");
  auto after = ReadGuestEfiVar(machine, kRecordVar);
  ASSERT_TRUE(after) << after.error().ToString();
  EXPECT_EQ(*after, *before) << "the committed slot's state changed across the RECOVERY boot";
  EXPECT_EQ(machine.Count(BootingSlot("RECOVERY")), 1u);
  // Who sent it there, and why, is in the audit log.
  auto audited = Ralphctl(machine, {"audit", "list", "--type", "recovery.reboot", "--json"});
  EXPECT_EQ(audited.exit, 0) << audited.output;
  EXPECT_NE(audited.output.find("e2e break-glass"), std::string::npos) << audited.output;
}

}  // namespace
}  // namespace ralph::e2e
