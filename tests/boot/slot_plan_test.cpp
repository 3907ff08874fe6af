// The pure half of the slot manager (boot/slot_plan.h): plans computed from
// hand-built views, with no store at all.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "boot/slot_plan.h"
#include "machine.h"
#include "platform/arch.h"

namespace ralph::boot {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<uint8_t> OurEntry(BootTarget target, std::optional<HardDriveNode> hd = TestEsp()) {
  LoadOption option;
  option.description = std::string(BootTargetDescription(target));
  option.hard_drive = hd;
  option.file = std::string(BootTargetFile(target));
  return *EncodeLoadOption(option);
}

// A view with A=1, B=2, RECOVERY=3, a firmware entry 7, BootOrder as given.
FirmwareView View(std::vector<uint16_t> order, std::optional<SlotState> record) {
  RawVariables raw;
  raw.entries[1] = OurEntry(BootTarget::kSlotA);
  raw.entries[2] = OurEntry(BootTarget::kSlotB);
  raw.entries[3] = OurEntry(BootTarget::kRecovery);
  raw.entries[7] = FirmwareRemovableEntry();
  raw.boot_order = EncodeBootOrder(order);
  if (record) raw.record = EncodeSlotState(*record);
  return DecodeFirmwareView(raw, TestEsp());
}

SlotState Record(SlotStatus a, SlotStatus b, std::optional<Slot> committed) {
  SlotState state;
  state.a.status = a;
  state.b.status = b;
  if (a == SlotStatus::kTrial) state.a.tries_left = 1;
  if (b == SlotStatus::kTrial) state.b.tries_left = 1;
  state.committed = committed;
  return state;
}

TEST(SlotPlanTest, DesiredBootOrderFollowsTheRecord) {
  FirmwareView view = View({7, 3, 2, 1, 99}, std::nullopt);
  using S = SlotStatus;
  EXPECT_THAT(DesiredBootOrder(view, Record(S::kGood, S::kGood, Slot::kA)),
              ElementsAre(1, 2, 3, 7));  // 99 dangles: dropped
  EXPECT_THAT(DesiredBootOrder(view, Record(S::kGood, S::kTrial, Slot::kA)),
              ElementsAre(1, 2, 3, 7));
  EXPECT_THAT(DesiredBootOrder(view, Record(S::kGood, S::kWriting, Slot::kA)),
              ElementsAre(1, 3, 7));
  EXPECT_THAT(DesiredBootOrder(view, Record(S::kBad, S::kGood, Slot::kB)), ElementsAre(2, 3, 7));
  // No committed slot: a trial slot goes after RECOVERY.
  EXPECT_THAT(DesiredBootOrder(view, Record(S::kWriting, S::kTrial, std::nullopt)),
              ElementsAre(3, 2, 7));
}

TEST(SlotPlanTest, ClassifyEntry) {
  EXPECT_EQ(ClassifyEntry(1, OurEntry(BootTarget::kSlotA), TestEsp()).kind, EntryKind::kOurs);
  HardDriveNode other = TestEsp();
  other.partition_guid[3] ^= 1;
  BootEntry foreign = ClassifyEntry(1, OurEntry(BootTarget::kSlotA, other), TestEsp());
  EXPECT_EQ(foreign.kind, EntryKind::kForeign);
  EXPECT_THAT(foreign.note, HasSubstr("not this disk's ESP"));
  // Same partition, moved: ours but stale (rewritten by repair).
  HardDriveNode moved = TestEsp();
  moved.start_lba += 2048;
  BootEntry stale = ClassifyEntry(1, OurEntry(BootTarget::kSlotB, moved), TestEsp());
  EXPECT_EQ(stale.kind, EntryKind::kOurs);
  EXPECT_FALSE(stale.canonical);
  BootEntry garbled = ClassifyEntry(4, {1, 0, 0, 0, 9}, TestEsp());
  EXPECT_EQ(garbled.kind, EntryKind::kGarbled);
  EXPECT_FALSE(garbled.note.empty());
  EXPECT_EQ(ClassifyEntry(7, FirmwareRemovableEntry(), TestEsp()).kind, EntryKind::kForeign);
}

TEST(SlotPlanTest, InitialStateTrustsBootOrderOverTheBootedSlot) {
  using enum UnprovenBoot;
  FirmwareView view = View({2, 1, 3}, std::nullopt);
  for (UnprovenBoot unproven : {kTrial, kCommit}) {
    SlotState trial_boot = InitialSlotState(view, BootTarget::kSlotA, unproven);
    EXPECT_EQ(trial_boot.committed, Slot::kB);
    EXPECT_EQ(trial_boot.b.status, SlotStatus::kGood);
    EXPECT_EQ(trial_boot.a.status, SlotStatus::kTrial);
    EXPECT_EQ(trial_boot.a.tries_left, 1);  // it came through BootNext
    EXPECT_TRUE(ValidateSlotState(trial_boot).has_value());
  }
}

TEST(SlotPlanTest, InitialStateOfAFreshMachineIsATrialOnTheBootPath) {
  using enum UnprovenBoot;
  FirmwareView fresh = View({7}, std::nullopt);
  SlotState first = InitialSlotState(fresh, BootTarget::kSlotA, kTrial);
  EXPECT_FALSE(first.committed.has_value());
  EXPECT_EQ(first.a.status, SlotStatus::kTrial);
  EXPECT_EQ(first.a.tries_left, kFirstBootTries);
  EXPECT_EQ(first.b.status, SlotStatus::kEmpty);
  EXPECT_TRUE(ValidateSlotState(first).has_value());
  // An explicit repair vouches for the running slot.
  SlotState repaired = InitialSlotState(fresh, BootTarget::kSlotA, kCommit);
  EXPECT_EQ(repaired.committed, Slot::kA);
  EXPECT_EQ(repaired.a.status, SlotStatus::kGood);
  EXPECT_EQ(repaired.a.tries_left, 0);
  EXPECT_TRUE(ValidateSlotState(repaired).has_value());
  EXPECT_FALSE(InitialSlotState(fresh, BootTarget::kRecovery, kTrial).committed.has_value());
  EXPECT_FALSE(InitialSlotState(fresh, BootTarget::kRecovery, kCommit).committed.has_value());

  // RECOVERY ahead of every slot in BootOrder (a first boot's trial whose
  // record was lost): nothing is committed, A stays a trial.
  FirmwareView mid_trial = View({3, 1, 7}, std::nullopt);
  SlotState resumed = InitialSlotState(mid_trial, BootTarget::kSlotA, kTrial);
  EXPECT_FALSE(resumed.committed.has_value());
  EXPECT_EQ(resumed.a.status, SlotStatus::kTrial);
  // A foreign entry ahead of ours does not count.
  EXPECT_EQ(InitialSlotState(View({7, 1, 3}, std::nullopt), BootTarget::kSlotB, kTrial).committed,
            Slot::kA);
}

TEST(SlotPlanTest, FreshMachineOnBootPlan) {
  RawVariables raw;
  raw.entries[0] = FirmwareRemovableEntry();
  raw.boot_order = EncodeBootOrder(std::vector<uint16_t>{0});
  raw.boot_current = EncodeBootNumber(0);
  FirmwareView view = DecodeFirmwareView(raw, TestEsp());
  Result<Plan> plan = PlanOnBoot(PlanInput{view, TestEsp(), BootTarget::kSlotA, "test"});
  ASSERT_TRUE(plan.has_value()) << plan.error().ToString();
  EXPECT_EQ(plan->event, BootEvent::kTrial);
  std::vector<std::string> names;
  for (const VarWrite& write : plan->writes) names.push_back(write.name);
  // BootNext (the next try) before BootOrder (RECOVERY ahead of A).
  EXPECT_THAT(names, ElementsAre("Boot0001", "Boot0002", "Boot0003", "RalphSlotState", "BootNext",
                                 "BootOrder"));
  EXPECT_EQ(*plan->writes[4].data, EncodeBootNumber(1));
  EXPECT_EQ(*plan->writes[5].data, EncodeBootOrder(std::vector<uint16_t>{3, 1, 0}));
  EXPECT_FALSE(plan->record.committed.has_value());
  EXPECT_EQ(plan->record.a.tries_left, kFirstBootTries - 1);
  // Without ralph.slot= and a BootCurrent of ours, nothing is planned.
  Result<Plan> blind = PlanOnBoot(PlanInput{view, TestEsp(), std::nullopt, "no ralph.slot="});
  ASSERT_FALSE(blind.has_value());
  EXPECT_THAT(blind.error().message(), HasSubstr("cannot be told (no ralph.slot=)"));
}

TEST(SlotPlanTest, RecoveryOnBootPlanLeavesTheRecordAlone) {
  // B on trial, its BootNext gone (RECOVERY was armed over it): a slot
  // boot would call that trial failed; RECOVERY does not judge it.
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kTrial, Slot::kA);
  record.b.tries_left = 2;
  FirmwareView view = View({1, 2, 3, 7}, record);
  Result<Plan> plan = PlanOnBoot(PlanInput{view, TestEsp(), BootTarget::kRecovery, "test"});
  ASSERT_TRUE(plan.has_value()) << plan.error().ToString();
  EXPECT_EQ(plan->event, BootEvent::kRecovery);
  EXPECT_TRUE(plan->writes.empty());
  EXPECT_EQ(plan->record, record);
  EXPECT_FALSE(plan->rolled_back.has_value());
  // The same view booted into A marks B's trial failed.
  Result<Plan> slot_boot = PlanOnBoot(PlanInput{view, TestEsp(), BootTarget::kSlotA, "test"});
  ASSERT_TRUE(slot_boot.has_value());
  EXPECT_EQ(slot_boot->rolled_back, Slot::kB);
  // A record RECOVERY cannot read is left alone, and said so.
  RawVariables raw;
  raw.entries[3] = OurEntry(BootTarget::kRecovery);
  raw.record = std::vector<uint8_t>{1, 2, 3};
  FirmwareView corrupt = DecodeFirmwareView(raw, TestEsp());
  Result<Plan> rescue = PlanOnBoot(PlanInput{corrupt, TestEsp(), BootTarget::kRecovery, "test"});
  ASSERT_TRUE(rescue.has_value());
  EXPECT_TRUE(rescue->writes.empty());
  EXPECT_THAT(rescue->findings,
              ElementsAre(HasSubstr("bad length: 3 bytes, expected 124: left for the next slot "
                                    "boot to initialise")));
}

std::string EspUuid() {
  EfiGuid guid;
  guid.bytes = TestEsp().partition_guid;
  return guid.ToString();
}

// Entries A=1, B=2, RECOVERY=3, firmware 7; the stub's variables for a
// boot of `file` (unset: a stub that leaves none) from the test ESP.
RawVariables Raw(std::optional<std::string> file, std::optional<SlotState> record = std::nullopt,
                 std::vector<uint16_t> order = {1, 2, 3, 7}) {
  RawVariables raw;
  raw.entries[1] = OurEntry(BootTarget::kSlotA);
  raw.entries[2] = OurEntry(BootTarget::kSlotB);
  raw.entries[3] = OurEntry(BootTarget::kRecovery);
  raw.entries[7] = FirmwareRemovableEntry();
  raw.boot_order = EncodeBootOrder(order);
  if (record) raw.record = EncodeSlotState(*record);
  if (file) {
    raw.loader_image = StubVariableText(*file);
    raw.loader_partition = StubVariableText(EspUuid());
  }
  return raw;
}

BootedDetection Detect(const RawVariables& raw, std::string_view cmdline = "ro panic=5") {
  return DetectBooted(DecodeFirmwareView(raw, TestEsp()), cmdline, TestEsp());
}

// One UKI for both slots: the file the firmware loaded tells them apart.
TEST(DetectBootedTest, LoaderImageIdentifierNamesTheImage) {
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kTrial, Slot::kA);
  BootedDetection a = Detect(Raw("\\EFI\\ralph\\a.efi", record));
  EXPECT_EQ(a.target, BootTarget::kSlotA);
  EXPECT_THAT(a.how, HasSubstr("LoaderImageIdentifier \\EFI\\ralph\\a.efi (RalphOS A)"));
  EXPECT_EQ(Detect(Raw("\\EFI\\ralph\\b.efi", record)).target, BootTarget::kSlotB);
  EXPECT_EQ(Detect(Raw("\\EFI\\ralph\\recovery.efi", record)).target, BootTarget::kRecovery);
  // FAT is case-insensitive; some firmware prints '/' or doubled separators.
  EXPECT_EQ(Detect(Raw("/EFI/Ralph/B.EFI", record)).target, BootTarget::kSlotB);
  EXPECT_EQ(Detect(Raw("EFI\\ralph\\\\b.efi", record)).target, BootTarget::kSlotB);
  // The stub's word beats a BootCurrent of ours that says otherwise.
  RawVariables disagree = Raw("\\EFI\\ralph\\b.efi", record);
  disagree.boot_current = EncodeBootNumber(1);
  EXPECT_EQ(Detect(disagree).target, BootTarget::kSlotB);
  // LoaderDevicePartUUID in capitals (as some stubs print it) still matches.
  RawVariables upper = Raw("\\EFI\\ralph\\b.efi", record);
  std::string uuid = EspUuid();
  for (char& c : uuid) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  upper.loader_partition = StubVariableText(uuid);
  EXPECT_EQ(Detect(upper).target, BootTarget::kSlotB);
}

TEST(DetectBootedTest, ImagesThatAreNotOursAreNotGuessed) {
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kGood, Slot::kA);
  // Loaded from another disk's ESP: this disk's slots cannot be told.
  RawVariables other_disk = Raw("\\EFI\\ralph\\b.efi", record);
  other_disk.loader_partition = StubVariableText("99999999-2222-3333-4444-555555555555");
  BootedDetection foreign = Detect(other_disk);
  EXPECT_FALSE(foreign.target.has_value());
  EXPECT_THAT(foreign.how,
              HasSubstr("from partition 99999999-2222-3333-4444-555555555555, not this disk's "
                        "ESP " +
                        EspUuid()));
  BootedDetection garbage = Detect(Raw("\\EFI\\debian\\grubx64.efi", record));
  EXPECT_FALSE(garbage.target.has_value());
  EXPECT_THAT(garbage.how,
              HasSubstr("the firmware loaded \\EFI\\debian\\grubx64.efi, which is not a RalphOS "
                        "image"));
  // No identifier and no BootCurrent: nothing to go on.
  BootedDetection blind = Detect(Raw(std::nullopt, record));
  EXPECT_FALSE(blind.target.has_value());
  EXPECT_THAT(blind.how, HasSubstr("no LoaderImageIdentifier, no BootCurrent and no ralph.slot="));
}

// The removable-media path (\EFI\BOOT\BOOTX64.EFI, BOOTAA64.EFI on
// aarch64) is a copy of the committed slot's image.
TEST(DetectBootedTest, RemovablePathIsTheCommittedSlotsCopy) {
  using S = SlotStatus;
  const std::string removable = "\\EFI\\BOOT\\" + std::string(arch::RemovableBootFileName());
  BootedDetection b = Detect(Raw(removable, Record(S::kGood, S::kGood, Slot::kB)));
  EXPECT_EQ(b.target, BootTarget::kSlotB);
  EXPECT_THAT(b.how, HasSubstr("the removable-media path " + removable +
                               ", the copy of the committed slot B's image"));
  // B on trial does not own the copy: the committed A does.
  EXPECT_EQ(Detect(Raw(removable, Record(S::kGood, S::kTrial, Slot::kA))).target,
            BootTarget::kSlotA);
  // A first boot: nothing committed, the factory slot on trial.
  BootedDetection first = Detect(Raw(removable, Record(S::kTrial, S::kEmpty, std::nullopt)));
  EXPECT_EQ(first.target, BootTarget::kSlotA);
  EXPECT_THAT(first.how, HasSubstr("slot A is the only one good or on trial"));
  EXPECT_EQ(Detect(Raw(removable, Record(S::kBad, S::kTrial, std::nullopt))).target,
            BootTarget::kSlotB);
  // No record: the first of our slots in BootOrder (the firmware's commit).
  BootedDetection order = Detect(Raw(removable, std::nullopt, {7, 2, 1, 3}));
  EXPECT_EQ(order.target, BootTarget::kSlotB);
  EXPECT_THAT(order.how, HasSubstr("slot B is first in BootOrder"));
  RawVariables corrupt = Raw(removable, std::nullopt, {2, 1, 3});
  corrupt.record = std::vector<uint8_t>{1, 2, 3};
  EXPECT_EQ(Detect(corrupt).target, BootTarget::kSlotB);
  // RECOVERY first (nothing committed), or no BootOrder at all: the
  // factory image, which ralph-mkimage copies from slot A.
  EXPECT_EQ(Detect(Raw(removable, std::nullopt, {3, 2, 1})).target, BootTarget::kSlotA);
  BootedDetection factory = Detect(Raw(removable, std::nullopt, {}));
  EXPECT_EQ(factory.target, BootTarget::kSlotA);
  EXPECT_THAT(factory.how, HasSubstr("the factory image (slot A's)"));
}

// Firmware or stubs that leave no LoaderImageIdentifier: BootCurrent.
TEST(DetectBootedTest, BootCurrentWithoutIdentifier) {
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kGood, Slot::kB);
  RawVariables raw = Raw(std::nullopt, record);
  raw.boot_current = EncodeBootNumber(1);
  BootedDetection a = Detect(raw);
  EXPECT_EQ(a.target, BootTarget::kSlotA);
  EXPECT_THAT(a.how, HasSubstr("BootCurrent Boot0001 (RalphOS A)"));
  // The firmware's own removable-media entry: the committed slot's copy.
  raw.boot_current = EncodeBootNumber(7);
  BootedDetection removable = Detect(raw);
  EXPECT_EQ(removable.target, BootTarget::kSlotB);
  EXPECT_THAT(removable.how, HasSubstr("not a RalphOS entry"));
  EXPECT_THAT(removable.how, HasSubstr("committed slot B"));
  raw.boot_current = EncodeBootNumber(0x99);
  BootedDetection dangling = Detect(raw);
  EXPECT_EQ(dangling.target, BootTarget::kSlotB);
  EXPECT_THAT(dangling.how, HasSubstr("BootCurrent is Boot0099, which does not exist"));
  // An entry for our file on another disk's ESP started something else.
  LoadOption elsewhere;
  elsewhere.description = "RalphOS B";
  elsewhere.hard_drive = TestEsp();
  elsewhere.hard_drive->partition_guid[0] ^= 0xff;
  elsewhere.file = "\\EFI\\ralph\\b.efi";
  raw.entries[8] = *EncodeLoadOption(elsewhere);
  raw.boot_current = EncodeBootNumber(8);
  BootedDetection other = Detect(raw);
  EXPECT_FALSE(other.target.has_value());
  EXPECT_THAT(other.how, HasSubstr("BootCurrent is Boot0008 \"RalphOS B\", not a RalphOS entry "
                                   "for this disk"));
  // An entry for the removable file on this ESP is the removable path.
  LoadOption fallback;
  fallback.description = "fallback";
  fallback.hard_drive = TestEsp();
  fallback.file = "\\EFI\\BOOT\\" + std::string(arch::RemovableBootFileName());
  raw.entries[8] = *EncodeLoadOption(fallback);
  EXPECT_EQ(Detect(raw).target, BootTarget::kSlotB);
}

// RECOVERY's UKI names itself; host tools and tests pass ralph.slot= too.
TEST(DetectBootedTest, KernelCommandLineSlotWins) {
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kGood, Slot::kA);
  BootedDetection recovery = Detect(Raw("\\EFI\\ralph\\recovery.efi", record),
                                    "root=PARTLABEL=RECOVERY "
                                    "ralph.slot=recovery");
  EXPECT_EQ(recovery.target, BootTarget::kRecovery);
  EXPECT_THAT(recovery.how, HasSubstr("kernel command line ralph.slot=RECOVERY"));
  EXPECT_EQ(Detect(Raw("\\EFI\\ralph\\a.efi", record), "ralph.slot=b").target, BootTarget::kSlotB);
  // A bad value is reported and the firmware's word used.
  BootedDetection bad = Detect(Raw("\\EFI\\ralph\\b.efi", record), "ralph.slot=c");
  EXPECT_EQ(bad.target, BootTarget::kSlotB);
  EXPECT_THAT(bad.how, HasSubstr("ralph.slot=c is not a, b or recovery (ignored)"));
}

TEST(DetectBootedTest, LoaderGuidIsSystemds) {
  EXPECT_EQ(kLoaderVendorGuid.ToString(), "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f");
}

TEST(SlotPlanTest, CommitPlanOrderAndContent) {
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kTrial, Slot::kA);
  record.b.version = {2, 0, 0};
  FirmwareView view = View({1, 2, 3, 7}, record);
  PlanInput in{view, TestEsp(), BootTarget::kSlotB, "test"};
  Result<Plan> plan = PlanMarkGood(in);
  ASSERT_TRUE(plan.has_value()) << plan.error().ToString();
  ASSERT_EQ(plan->writes.size(), 2u);
  EXPECT_EQ(plan->writes[0].name, "RalphSlotState");
  EXPECT_EQ(plan->writes[1].name, "BootOrder");
  EXPECT_EQ(*plan->writes[1].data, EncodeBootOrder(std::vector<uint16_t>{2, 1, 3, 7}));
  EXPECT_EQ(plan->record.committed, Slot::kB);
  EXPECT_EQ(plan->record.minimum_version, (SlotVersion{2, 0, 0}));
  // Planning the same commit on the planned result writes nothing.
  RawVariables after;
  for (uint16_t n : {1, 2, 3}) after.entries[n] = view.entries.at(n).raw;
  after.entries[7] = FirmwareRemovableEntry();
  after.record = *plan->writes[0].data;
  after.boot_order = *plan->writes[1].data;
  FirmwareView settled = DecodeFirmwareView(after, TestEsp());
  PlanInput again{settled, TestEsp(), BootTarget::kSlotB, "test"};
  EXPECT_TRUE(PlanMarkGood(again)->writes.empty());
  EXPECT_TRUE(PlanOnBoot(again)->writes.empty());
}

TEST(SlotPlanTest, OnBootPlanForATrialWithTriesLeft) {
  SlotState record = Record(SlotStatus::kGood, SlotStatus::kTrial, Slot::kA);
  record.b.tries_left = 3;
  FirmwareView view = View({1, 2, 3}, record);
  Result<Plan> plan = PlanOnBoot(PlanInput{view, TestEsp(), BootTarget::kSlotB, "test"});
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(plan->event, BootEvent::kTrial);
  ASSERT_EQ(plan->writes.size(), 2u);
  EXPECT_EQ(plan->writes[0].name, "RalphSlotState");
  EXPECT_EQ(plan->writes[1].name, "BootNext");
  EXPECT_EQ(*plan->writes[1].data, EncodeBootNumber(2));
  EXPECT_EQ(plan->record.b.tries_left, 2);
}

}  // namespace
}  // namespace ralph::boot
