// Trying slot B: a good B is committed; a B whose health gate fails (its
// ralphd cannot start), whose
// kernel never reaches early boot, whose userspace hangs, whose slot
// image is not a filesystem, or whose image has one byte flipped after it
// was installed (a dm-verity error) falls back to A; a power cut during the
// trial boots A. One scenario per test binary (RALPH_E2E_SCENARIO picks it) so
// ctest runs them in parallel.
#include <fcntl.h>
#include <unistd.h>

#include "drivers/disk.h"
#include "harness/e2e_test.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::e2e {
namespace {

constexpr const char* kRolledBackB = "slot B failed its trial: rolled back";
constexpr const char* kSlotAImage = "/EFI/ralph/a.efi";
constexpr const char* kSlotBImage = "/EFI/ralph/b.efi";
constexpr const char* kRemovableImage = "/EFI/BOOT/BOOTX64.EFI";

// Boots the provisioned machine with `variant`'s slot B installed, waits for
// A's health gate, and activates B for `tries` boots.
class SlotBTest : public E2eTest {
 protected:
  Machine BootAndActivate(const std::string& variant, int tries) {
    Prepare(DiskSource::kProvisioned);
    InstallSlotB(Image(variant));
    Machine machine = Boot();
    auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
    EXPECT_TRUE(up) << up.error().ToString();
    ActivateInstalledB(machine, tries);
    return machine;
  }
};

TEST_F(SlotBTest, GoodBIsTriedThenCommitted) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  ASSERT_NO_FATAL_FAILURE(InstallSlotB(Image("base")));
  // One UKI fits both slots (it names no slot; early boot tells them apart).
  auto a_image = ReadEspFile(disk_, kSlotAImage);
  ASSERT_TRUE(a_image) << a_image.error().ToString();
  auto b_image = ReadEspFile(disk_, kSlotBImage);
  ASSERT_TRUE(b_image) << b_image.error().ToString();
  EXPECT_TRUE(*a_image == *b_image) << "a.efi and b.efi differ: a slot's UKI names its slot";
  auto removable = ReadEspFile(disk_, kRemovableImage);
  ASSERT_TRUE(removable) << removable.error().ToString();
  EXPECT_TRUE(*removable == *a_image) << kRemovableImage << " is not A's UKI before the switch";
  // A stale removable copy, so that the commit's refresh shows.
  std::string stale = scratch_->path() + "/stale.efi";
  ASSERT_TRUE(WriteWholeFile(stale, "stale removable-path copy"));
  auto written = WriteEspFile(disk_, kRemovableImage, stale);
  ASSERT_TRUE(written) << written.error().ToString();

  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();
  ASSERT_NO_FATAL_FAILURE(ActivateInstalledB(machine, 1));
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  auto committed = machine.WaitFor(CommittedSlot("B"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS B");
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS B");
  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));

  // After B's commit the removable path holds B's image.
  removable = ReadEspFile(disk_, kRemovableImage);
  ASSERT_TRUE(removable) << removable.error().ToString();
  auto b_after = ReadEspFile(disk_, kSlotBImage);
  ASSERT_TRUE(b_after) << b_after.error().ToString();
  EXPECT_TRUE(*b_after == *b_image) << "b.efi changed";
  EXPECT_TRUE(*removable == *b_image) << kRemovableImage << " is not B's UKI after B committed";
}

TEST_F(SlotBTest, FailedHealthGateMarksBBadAndFallsBackToA) {
  Machine machine = BootAndActivate("health-fail", 1);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  // B's ralphd cannot start (its libarchive is missing from the slot): the
  // services check and the control plane's checks fail with the reason.
  for (const char* reason :
       {"check 'services up': FAILED: service ralphd is not running",
        "check 'ralphd answers': FAILED: ralphd does not answer on its socket: ralph-init "
        "reports service ralphd",
        "check 'ralphd API': FAILED", "check 'policy loads': FAILED",
        "check 'sandbox runs': FAILED", "health gate failed: slot B marked bad"}) {
    auto failed = machine.WaitFor(reason, kBootTimeout);
    ASSERT_TRUE(failed) << failed.error().ToString();
  }
  EXPECT_GE(machine.Count("libarchive.so.13: cannot open shared object file"), 1u);
  EXPECT_GE(machine.Count("last exit: exit status 127"), 1u);
  auto back = machine.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(back) << back.error().ToString();
  auto reported = machine.WaitFor("B bad", kBootTimeout);  // A's health gate summary
  ASSERT_TRUE(reported) << reported.error().ToString();
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS A");
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("bad"), std::string::npos) << status.output;
  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));
  // The failed B never reached the removable-media path.
  auto removable = ReadEspFile(disk_, kRemovableImage);
  ASSERT_TRUE(removable) << removable.error().ToString();
  auto a_image = ReadEspFile(disk_, kSlotAImage);
  ASSERT_TRUE(a_image) << a_image.error().ToString();
  EXPECT_TRUE(*removable == *a_image) << kRemovableImage << " is not A's UKI after B failed";
}

TEST_F(SlotBTest, KernelThatNeverReachesEarlyBootFallsBackAfterOneAttempt) {
  Machine machine = BootAndActivate("broken-initrd", 1);
  ASSERT_FALSE(HasFatalFailure());
  auto reboot = machine.Agent({"reboot"}, kAgentTimeout);
  ASSERT_TRUE(reboot) << reboot.error().ToString();
  auto tried = machine.WaitFor("starting Boot0005 \"RalphOS B\"", kBootTimeout);
  ASSERT_TRUE(tried) << tried.error().ToString();
  auto panic = machine.WaitFor("Kernel panic", kBootTimeout);
  ASSERT_TRUE(panic) << panic.error().ToString();
  auto back = machine.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(back) << back.error().ToString();
  auto rolled_back = machine.WaitFor(kRolledBackB, kBootTimeout);
  ASSERT_TRUE(rolled_back) << rolled_back.error().ToString();
  EXPECT_EQ(machine.Count(BootingSlot("B")), 0u);
  EXPECT_EQ(machine.Count("starting Boot0005 \"RalphOS B\""), 1u);
}

TEST_F(SlotBTest, HangingUserspaceIsResetByTheWatchdogForEachTry) {
  Machine machine = BootAndActivate("hang", 3);
  ASSERT_FALSE(HasFatalFailure());
  auto reboot = machine.Agent({"reboot"}, kAgentTimeout);
  ASSERT_TRUE(reboot) << reboot.error().ToString();
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto tried = machine.WaitFor(BootingSlot("B"), kBootTimeout);
    ASSERT_TRUE(tried) << "attempt " << attempt << ": " << tried.error().ToString();
    auto hung = machine.WaitFor("userspace hung after early boot", kBootTimeout);
    ASSERT_TRUE(hung) << "attempt " << attempt << ": " << hung.error().ToString();
  }
  auto back = machine.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(back) << back.error().ToString();
  auto rolled_back = machine.WaitFor(kRolledBackB, kBootTimeout);
  ASSERT_TRUE(rolled_back) << rolled_back.error().ToString();
  EXPECT_EQ(machine.Count(BootingSlot("B")), 3u);
}

TEST_F(SlotBTest, SlotImageThatIsNotAFilesystemFallsBack) {
  Machine machine = BootAndActivate("not-a-filesystem", 1);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  auto error = machine.WaitFor("slot B root SYSTEM_B (/dev/vda3) is not a squashfs filesystem",
                               kBootTimeout);
  ASSERT_TRUE(error) << error.error().ToString();
  auto back = machine.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(back) << back.error().ToString();
  auto committed = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
}

// The squashfs superblock's inode_table_start (u64 at byte 64): everything
// between the 96-byte superblock and it is file data.
uint64_t InodeTableStart(const std::string& disk, const std::string& label) {
  auto layout = ProbeDisk(disk);
  EXPECT_TRUE(layout) << layout.error().ToString();
  if (!layout) return 0;
  const PartitionInfo* partition = layout->Find(label);
  EXPECT_NE(partition, nullptr) << label;
  if (partition == nullptr) return 0;
  UniqueFd fd(::open(disk.c_str(), O_RDONLY | O_CLOEXEC));
  uint8_t bytes[8] = {};
  EXPECT_EQ(
      ::pread(fd.get(), bytes, sizeof(bytes), static_cast<off_t>(partition->offset_bytes() + 64)),
      8);
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// One byte of B's image flipped after a verified install, in file data inside
// the first 4 KiB block (past the squashfs superblock, which stays intact,
// so without dm-verity the mount would succeed and that file would read
// wrong): mounting B reads block 0, dm-verity refuses it (I/O error), early
// boot fails, the trial falls back to A, and A records the rollback.
TEST_F(SlotBTest, FlippedByteInSlotImageIsAVerityErrorAndFallsBack) {
  constexpr uint64_t kFlipOffset = 2048;
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  ASSERT_NO_FATAL_FAILURE(InstallSlotB(Image("base")));  // records the good image's digest
  ASSERT_GT(InodeTableStart(disk_, "SYSTEM_B"), 4096u) << "offset 2048 is not file data";
  auto flipped = FlipPartitionByte(disk_, "SYSTEM_B", kFlipOffset);
  ASSERT_TRUE(flipped) << flipped.error().ToString();
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();
  ASSERT_NO_FATAL_FAILURE(ActivateInstalledB(machine, 1));
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  for (const char* line :
       {"slot B root SYSTEM_B (/dev/vda3) verified by dm-verity as /dev/mapper/ralph-root",
        "device-mapper: verity:", "data block 0 is corrupted",
        "slot B root SYSTEM_B (/dev/vda3): reading /dev/mapper/ralph-root", "Input/output error",
        "cannot boot this slot"}) {
    auto seen = machine.WaitFor(line, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  auto back = machine.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(back) << back.error().ToString();
  auto rolled_back = machine.WaitFor(kRolledBackB, kBootTimeout);
  ASSERT_TRUE(rolled_back) << rolled_back.error().ToString();
  auto committed = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(machine.Count("switching root to slot B"), 0u);
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("bad"), std::string::npos) << status.output;
}

TEST_F(SlotBTest, PowerCutDuringTrialBootsTheCommittedSlot) {
  Machine machine = BootAndActivate("base", 1);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  machine.Kill();  // the power cut, in B's early boot
  Machine restarted = Boot();
  auto booted = restarted.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(booted) << booted.error().ToString();
  auto committed = restarted.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(restarted.Count(BootingSlot("B")), 0u);
  EXPECT_EQ(BootCurrentDescription(restarted), "RalphOS A");
}

}  // namespace
}  // namespace ralph::e2e
