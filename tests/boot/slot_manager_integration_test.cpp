// The slot manager on real parts: a directory-backed EFI variable store
// through libefivar (EFIVARFS_PATH, set before the process starts: this
// test re-executes itself), and a GPT disk image made here with libfdisk
// (drivers/gpt.h), attached to a loop device and read back with libblkid.
// The firmware's choices are played by the firmware model over the same
// store, and the Boot#### entries are cross-checked with efibootmgr.
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "boot/slot_manager.h"
#include "boot/testing/firmware_model.h"
#include "drivers/disk.h"
#include "drivers/gpt.h"
#include "platform/efivar_store.h"
#include "platform/testing/efivar_directory.h"
#include "tests/support/loop_device.h"

namespace ralph::boot {
namespace {

using ralph::testing::EfivarDirectoryPath;

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Counts what reaches the real store.
class CountingStore final : public EfiVarStoreInterface {
 public:
  explicit CountingStore(EfiVarStoreInterface& inner) : inner_(inner) {}
  Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) override {
    return inner_.Get(guid, name);
  }
  Result<void> Set(const EfiGuid& guid, std::string_view name, std::span<const uint8_t> data,
                   uint32_t attributes) override {
    ++writes;
    return inner_.Set(guid, name, data, attributes);
  }
  Result<void> Delete(const EfiGuid& guid, std::string_view name) override {
    ++writes;
    return inner_.Delete(guid, name);
  }
  Result<std::vector<std::string>> List(const EfiGuid& guid) override { return inner_.List(guid); }
  int writes = 0;

 private:
  EfiVarStoreInterface& inner_;
};

GptSpec ApplianceSpec() {
  GptSpec spec;
  spec.partitions = {{"EFI", 16 << 20, PartitionType::kEfiSystem, std::nullopt},
                     {"SYSTEM_A", 16 << 20, PartitionType::kLinuxRootX86_64, std::nullopt},
                     {"SYSTEM_B", 16 << 20, PartitionType::kLinuxRootX86_64, std::nullopt},
                     {"VAR", 8 << 20, PartitionType::kLinuxVar, std::nullopt},
                     {"RECOVERY", 0, PartitionType::kLinuxFilesystem, std::nullopt}};
  return spec;
}

HardDriveNode EspNode(const DiskLayout& layout) {
  const PartitionInfo* esp = layout.Find(kPartEfi);
  EXPECT_NE(esp, nullptr);
  return HardDriveNode{esp->number, esp->start_lba, esp->size_lba, esp->part_guid};
}

class SlotManagerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const auto& entry : std::filesystem::directory_iterator(EfivarDirectoryPath())) {
      std::filesystem::remove(entry.path());
    }
    image_ = fmt::format("{}/../ralph-boot-it-{}.img", EfivarDirectoryPath(), ::getpid());
    Result<DiskLayout> layout = CreateGptImage(image_, 80 << 20, ApplianceSpec());
    ASSERT_TRUE(layout.has_value()) << layout.error().ToString();
    Result<std::unique_ptr<LibefivarStore>> store = LibefivarStore::Open();
    ASSERT_TRUE(store.has_value()) << store.error().ToString();
    store_ = std::move(*store);
  }
  void TearDown() override { std::filesystem::remove(image_); }

  // One power-on through the firmware model, then OnBoot.
  Result<BootReport> Boot(FirmwareModel& firmware, const DiskLayout& layout, int* writes) {
    FirmwareBoot boot = TRY(firmware.PowerOn(*store_));
    CountingStore counting(*store_);
    SlotManager manager = TRY(SlotManager::Create(counting, layout, boot.kernel_cmdline));
    BootReport report = TRY(manager.OnBoot());
    if (writes) *writes = counting.writes;
    return report;
  }

  // A fresh machine's first boot: OnBoot puts A on trial, the health gate
  // commits it.
  Result<void> FirstBoot(FirmwareModel& firmware, const DiskLayout& layout) {
    BootReport report = TRY(Boot(firmware, layout, nullptr));
    if (report.event != BootEvent::kTrial) {
      return Error::Make(ErrorCode::kInternal,
                         fmt::format("first boot: event {}", BootEventName(report.event)));
    }
    SlotManager manager = TRY(SlotManager::Create(*store_, layout, "ralph.slot=a"));
    TRY(manager.MarkGood());
    return {};
  }

  std::string image_;
  std::unique_ptr<LibefivarStore> store_;
};

TEST_F(SlotManagerIntegrationTest, FullUpdateCycleOnADirectoryStoreAndAnImageFile) {
  Result<DiskLayout> layout = ProbeDisk(image_);
  ASSERT_TRUE(layout.has_value()) << layout.error().ToString();
  FirmwareModel firmware(EspContents::Full(EspNode(*layout)));

  int writes = -1;
  Result<BootReport> first = Boot(firmware, *layout, &writes);
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  EXPECT_EQ(first->booted, BootTarget::kSlotA);
  EXPECT_EQ(first->event, BootEvent::kTrial);
  EXPECT_EQ(writes, 6);  // three entries, the record, BootNext, BootOrder
  EXPECT_TRUE(std::filesystem::exists(EfivarDirectoryPath() +
                                      "RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d"));
  EXPECT_FALSE(first->record.committed.has_value());
  {
    // The health gate passes.
    CountingStore counting(*store_);
    SlotManager manager = *SlotManager::Create(counting, *layout, "ralph.slot=a");
    Result<Outcome> good = manager.MarkGood();
    ASSERT_TRUE(good.has_value()) << good.error().ToString();
    EXPECT_THAT(good->written, ElementsAre("RalphSlotState", "BootOrder", "-BootNext"));
    EXPECT_EQ(counting.writes, 3);
    EXPECT_EQ(good->record.committed, Slot::kA);
  }

  Result<BootReport> steady = Boot(firmware, *layout, &writes);
  ASSERT_TRUE(steady.has_value());
  EXPECT_EQ(steady->event, BootEvent::kNormal);
  EXPECT_EQ(writes, 0);

  // OTA: write B, try it, commit it.
  {
    CountingStore counting(*store_);
    SlotManager manager = *SlotManager::Create(counting, *layout, "ralph.slot=a");
    ASSERT_TRUE(manager.BeginWrite(Slot::kB, {1, 1, 0}).has_value());
    Sha256Digest digest{};
    digest.fill(0x5a);
    Result<Outcome> finish = manager.FinishWrite(Slot::kB, {1, 1, 0}, digest, 2);
    ASSERT_TRUE(finish.has_value()) << finish.error().ToString();
    EXPECT_EQ(counting.writes, 4);
  }
  Result<BootReport> trial = Boot(firmware, *layout, &writes);
  ASSERT_TRUE(trial.has_value()) << trial.error().ToString();
  EXPECT_EQ(trial->booted, BootTarget::kSlotB);
  EXPECT_EQ(trial->event, BootEvent::kTrial);
  EXPECT_THAT(trial->written, ElementsAre("RalphSlotState", "BootNext"));
  {
    SlotManager manager = *SlotManager::Create(*store_, *layout, "ralph.slot=b");
    Result<Outcome> good = manager.MarkGood();
    ASSERT_TRUE(good.has_value()) << good.error().ToString();
    EXPECT_THAT(good->written, ElementsAre("RalphSlotState", "BootOrder", "-BootNext"));
  }
  Result<BootReport> committed = Boot(firmware, *layout, &writes);
  ASSERT_TRUE(committed.has_value());
  EXPECT_EQ(committed->booted, BootTarget::kSlotB);
  EXPECT_EQ(committed->event, BootEvent::kNormal);
  EXPECT_EQ(writes, 0);
  EXPECT_EQ(committed->record.committed, Slot::kB);
  EXPECT_EQ(committed->record.minimum_version, (SlotVersion{1, 1, 0}));
}

TEST_F(SlotManagerIntegrationTest, LoopDeviceFoundByLibblkidAndEntriesEfibootmgrAgreesWith) {
  Result<::ralph::testing::LoopDevice> loop = ::ralph::testing::LoopDevice::Attach(image_);
  ASSERT_TRUE(loop.has_value()) << loop.error().ToString();
  Result<DiskLayout> layout = ProbeDisk(loop->device());
  ASSERT_TRUE(layout.has_value()) << layout.error().ToString();
  const PartitionInfo* esp = layout->Find(kPartEfi);
  ASSERT_NE(esp, nullptr);
  EXPECT_THAT(esp->device, HasSubstr(loop->device()));

  SlotManager manager = *SlotManager::Create(*store_, *layout, "ralph.slot=a");
  Result<Outcome> repair = manager.Repair();
  ASSERT_TRUE(repair.has_value()) << repair.error().ToString();
  EXPECT_EQ(repair->record.committed, Slot::kA);

  // efibootmgr reads the same store through libefivar (EFIVARFS_PATH is
  // inherited) and prints the device path as the firmware will see it.
  Result<std::string> listing = ::ralph::testing::RunCommand({"efibootmgr", "-v"});
  ASSERT_TRUE(listing.has_value()) << listing.error().ToString() << " (package efibootmgr)";
  std::string expected_hd = fmt::format("HD({},GPT,{},0x{:x},0x{:x})", esp->number, esp->part_uuid,
                                        esp->start_lba, esp->size_lba);
  EXPECT_THAT(*listing, HasSubstr("RalphOS A\t" + expected_hd + "/File(\\EFI\\ralph\\a.efi)"));
  EXPECT_THAT(*listing, HasSubstr("RalphOS B\t" + expected_hd + "/File(\\EFI\\ralph\\b.efi)"));
  EXPECT_THAT(*listing,
              HasSubstr("RalphOS RECOVERY\t" + expected_hd + "/File(\\EFI\\ralph\\recovery.efi)"));
  EXPECT_THAT(*listing, HasSubstr("BootOrder: 0000,0002"));

  // The firmware model, given the ESP as libblkid found it on the loop
  // device, boots A from its entry.
  FirmwareModel firmware(EspContents::Full(EspNode(*layout)));
  Result<FirmwareBoot> boot = firmware.PowerOn(*store_);
  ASSERT_TRUE(boot.has_value()) << boot.error().ToString();
  EXPECT_EQ(boot->target, BootTarget::kSlotA);
  EXPECT_EQ(boot->source, BootSource::kBootOrder);
  ASSERT_TRUE(loop->Detach().has_value());
}

TEST_F(SlotManagerIntegrationTest, GarbledAndTornRecordFilesAreReinitialised) {
  Result<DiskLayout> layout = ProbeDisk(image_);
  ASSERT_TRUE(layout.has_value());
  FirmwareModel firmware(EspContents::Full(EspNode(*layout)));
  Result<void> provisioned = FirstBoot(firmware, *layout);
  ASSERT_TRUE(provisioned.has_value()) << provisioned.error().ToString();
  std::string record_file =
      EfivarDirectoryPath() + "RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d";

  // Garbage with a valid attribute header: bad magic. (Rewritten through
  // the store: efivarfs-style files may carry the immutable flag.)
  ASSERT_TRUE(store_->Set(kRalphVendorGuid, kSlotStateVariable,
                          std::vector<uint8_t>{'g', 'a', 'r', 'b', 'a', 'g', 'e', '!', '!'},
                          kEfiVariableDefaultAttributes));
  Result<BootReport> report = Boot(firmware, *layout, nullptr);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_THAT(report->findings[0], HasSubstr("bad magic"));
  EXPECT_EQ(report->record.committed, Slot::kA);
  EXPECT_EQ(report->booted, BootTarget::kSlotA);

  // A file cut short inside its attribute header (a torn write in a
  // directory store).
  ASSERT_TRUE(store_->Delete(kRalphVendorGuid, kSlotStateVariable).has_value());
  { std::ofstream(record_file, std::ios::binary) << "\x07\x00"; }
  report = Boot(firmware, *layout, nullptr);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_THAT(report->findings[0], HasSubstr("bad length: 0 bytes"));
  EXPECT_EQ(report->record.committed, Slot::kA);
  int writes = -1;
  ASSERT_TRUE(Boot(firmware, *layout, &writes).has_value());
  EXPECT_EQ(writes, 0);
}

TEST_F(SlotManagerIntegrationTest, MissingPartitionOnARealImage) {
  GptSpec spec = ApplianceSpec();
  spec.partitions.erase(spec.partitions.begin() + 4);  // no RECOVERY
  spec.partitions.back().size_bytes = 0;
  ASSERT_TRUE(CreateGptImage(image_, 80 << 20, spec).has_value());
  Result<DiskLayout> layout = ProbeDisk(image_);
  ASSERT_TRUE(layout.has_value());
  Result<SlotManager> manager = SlotManager::Create(*store_, *layout, "ralph.slot=a");
  ASSERT_FALSE(manager.has_value());
  EXPECT_EQ(manager.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(manager.error().message(), HasSubstr("no partition labelled RECOVERY"));
}

// Last: it moves the test process into a private mount namespace.
TEST_F(SlotManagerIntegrationTest, ReadOnlyStoreFailsWithTheCauseAndTheMachineStillBoots) {
  Result<DiskLayout> layout = ProbeDisk(image_);
  ASSERT_TRUE(layout.has_value());
  FirmwareModel firmware(EspContents::Full(EspNode(*layout)));
  Result<void> provisioned = FirstBoot(firmware, *layout);
  ASSERT_TRUE(provisioned.has_value()) << provisioned.error().ToString();
  {
    SlotManager manager = *SlotManager::Create(*store_, *layout, "ralph.slot=a");
    ASSERT_TRUE(manager.BeginWrite(Slot::kB, {1, 1, 0}).has_value());
  }
  ASSERT_EQ(::unshare(CLONE_NEWNS), 0) << strerror(errno);
  ASSERT_EQ(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0);
  std::string dir = EfivarDirectoryPath();
  ASSERT_EQ(::mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr), 0) << strerror(errno);
  ASSERT_EQ(::mount(nullptr, dir.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr), 0);

  SlotManager manager = *SlotManager::Create(*store_, *layout, "ralph.slot=a");
  Sha256Digest digest{};
  Result<Outcome> finish = manager.FinishWrite(Slot::kB, {1, 1, 0}, digest);
  ASSERT_FALSE(finish.has_value());
  EXPECT_EQ(finish.error().code(), ErrorCode::kReadOnly) << finish.error().ToString();
  EXPECT_THAT(finish.error().message(), HasSubstr("writing RalphSlotState"));

  // Nothing changed: A boots (BootCurrent is volatile and cannot be set on
  // a read-only store, so only ask what would boot).
  Result<StatusReport> status = manager.Status();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->view.record->b.status, SlotStatus::kWriting);
  EXPECT_FALSE(status->view.boot_next.has_value());
  const BootEntry* first = nullptr;
  for (const auto& [number, entry] : status->view.entries) {
    if (number == status->view.boot_order.front()) first = &entry;
  }
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->target, BootTarget::kSlotA);
  ::umount2(dir.c_str(), MNT_DETACH);
}

}  // namespace
}  // namespace ralph::boot

// libefivar reads EFIVARFS_PATH before main(): run the tests in a child
// started with it pointing at a fresh directory.
int main(int argc, char** argv) {
  return ralph::testing::RunWithEfivarDirectory(argv, "ralph-boot-it", [&] {
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
  });
}
