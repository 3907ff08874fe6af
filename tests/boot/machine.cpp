#include "machine.h"

#include <fmt/format.h>

namespace ralph::boot {
namespace {

std::array<uint8_t, 16> Guid(uint8_t last) {
  std::array<uint8_t, 16> guid{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                               0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0, last};
  return guid;
}

}  // namespace

DiskLayout TestLayout() {
  DiskLayout layout;
  layout.disk = "test.img";
  layout.disk_uuid = "00000000-0000-0000-0000-000000000001";
  uint64_t start = 2048;
  uint32_t number = 1;
  for (auto [label, size] : {std::pair{kPartEfi, uint64_t{204800}},
                             {kPartSystemA, 409600},
                             {kPartSystemB, 409600},
                             {kPartVar, 204800},
                             {kPartRecovery, 204800}}) {
    PartitionInfo part;
    part.label = std::string(label);
    part.number = number;
    part.start_lba = start;
    part.size_lba = size;
    part.part_guid = Guid(static_cast<uint8_t>(number));
    EfiGuid guid;
    guid.bytes = part.part_guid;
    part.part_uuid = guid.ToString();
    layout.partitions.push_back(part);
    start += size;
    ++number;
  }
  return layout;
}

HardDriveNode TestEsp() {
  return HardDriveNode{1, 2048, 204800, Guid(1)};
}

Sha256Digest TestDigest(uint8_t seed) {
  Sha256Digest digest{};
  for (size_t i = 0; i < digest.size(); ++i) digest[i] = static_cast<uint8_t>(seed + i);
  return digest;
}

FirmwareBoot Machine::PowerOn() {
  Result<FirmwareBoot> boot = firmware_.PowerOn(vars_);
  EXPECT_TRUE(boot.has_value()) << (boot ? "" : boot.error().ToString());
  booted_ = boot ? std::optional<FirmwareBoot>(*boot) : std::nullopt;
  vars_.ResetCounters();
  return boot ? *boot : FirmwareBoot{};
}

SlotManager Machine::Manager(std::optional<DiskLayout> layout) {
  Result<SlotManager> manager =
      SlotManager::Create(vars_, std::move(layout), booted_ ? booted_->kernel_cmdline : "");
  EXPECT_TRUE(manager.has_value());
  return std::move(*manager);
}

BootReport Machine::Boot() {
  PowerOn();
  Result<BootReport> report = Manager().OnBoot();
  EXPECT_TRUE(report.has_value()) << (report ? "" : report.error().ToString());
  return report ? *report : BootReport{};
}

Machine Machine::Provisioned() {
  Machine machine;
  machine.Boot();
  Result<Outcome> commit = machine.Manager().MarkGood();
  EXPECT_TRUE(commit.has_value()) << (commit ? "" : commit.error().ToString());
  machine.vars().ResetCounters();
  return machine;
}

Machine Machine::WithTrialPending(uint8_t tries, SlotVersion version) {
  Machine machine = Provisioned();
  SlotManager manager = machine.Manager();
  EXPECT_TRUE(manager.BeginWrite(Slot::kB, version).has_value());
  Result<Outcome> finish = manager.FinishWrite(Slot::kB, version, TestDigest(7), tries);
  EXPECT_TRUE(finish.has_value()) << (finish ? "" : finish.error().ToString());
  machine.vars().ResetCounters();
  return machine;
}

SlotState Machine::Record() {
  std::optional<SlotState> record = RecordIn(vars_.contents());
  EXPECT_TRUE(record.has_value()) << "RalphSlotState missing or corrupt";
  return record.value_or(SlotState{});
}

std::optional<SlotState> RecordIn(const FakeEfiVarStore::Contents& contents) {
  auto it = contents.find({kRalphVendorGuid, std::string(kSlotStateVariable)});
  if (it == contents.end()) return std::nullopt;
  Result<SlotState> record = DecodeSlotState(it->second.data);
  if (!record) return std::nullopt;
  return *record;
}

::testing::AssertionResult BootsSafely(const FakeEfiVarStore::Contents& contents,
                                       const EspContents& esp, const SlotState& before,
                                       const std::optional<SlotState>& after, const Truth& truth,
                                       std::optional<Slot> retiring) {
  auto good = [&](Slot slot) {
    return truth[slot] && (before.slot(slot).status == SlotStatus::kGood ||
                           (after && after->slot(slot).status == SlotStatus::kGood));
  };
  auto trial = [&](Slot slot) {
    return truth[slot] && (before.slot(slot).status == SlotStatus::kTrial ||
                           (after && after->slot(slot).status == SlotStatus::kTrial));
  };
  // RECOVERY is wrong only when a slot was good before the operation (and
  // the operation is not retiring it): a record that has just made a slot
  // good may not have reached BootOrder.
  auto good_before = [&](Slot slot) {
    return truth[slot] && before.slot(slot).status == SlotStatus::kGood && slot != retiring;
  };
  bool any_good = good_before(Slot::kA) || good_before(Slot::kB);
  // The removable-media copy is the factory image until a commit replaces
  // it: with no slot good in either record, booting it is what a machine
  // out of the box does (and its OnBoot provisions or resumes the trial).
  bool none_good = !good(Slot::kA) && !good(Slot::kB);
  auto factory = [&](Slot slot, BootSource source) {
    return source == BootSource::kRemovable && none_good && truth[slot];
  };
  FakeEfiVarStore nvram(contents);
  FirmwareModel firmware(esp);
  Result<FirmwareBoot> first = firmware.PowerOn(nvram);
  if (!first)
    return ::testing::AssertionFailure() << "first power-on: " << first.error().ToString();
  std::optional<Slot> slot = SlotOf(first->target);
  std::string where = fmt::format("first power-on booted {} via {}", BootTargetName(first->target),
                                  BootSourceName(first->source));
  if (slot) {
    bool ok = good(*slot) || (trial(*slot) && first->source == BootSource::kBootNext) ||
              factory(*slot, first->source);
    if (!ok) {
      return ::testing::AssertionFailure()
             << where << ", which is neither good nor on trial (intact: " << truth[*slot] << ")";
    }
  } else if (first->source != BootSource::kBootNext && any_good) {
    return ::testing::AssertionFailure() << where << " although a slot is good";
  }
  // A slot the record has on trial and the first power-on started through
  // BootNext had its try, and that boot died: it is no fallback for the
  // second power-on, even when it was good before (MarkActive re-tries a
  // good slot; with no slot committed, BootOrder puts a slot on trial
  // behind RECOVERY).
  std::optional<Slot> tried;
  if (slot && first->source == BootSource::kBootNext && after &&
      after->slot(*slot).status == SlotStatus::kTrial) {
    tried = slot;
  }
  bool any_good_untried =
      (good_before(Slot::kA) && tried != Slot::kA) || (good_before(Slot::kB) && tried != Slot::kB);
  Result<FirmwareBoot> second = firmware.PowerOn(nvram);
  if (!second) {
    return ::testing::AssertionFailure() << "second power-on: " << second.error().ToString();
  }
  slot = SlotOf(second->target);
  where = fmt::format("after {}, the second power-on booted {} via {}", where,
                      BootTargetName(second->target), BootSourceName(second->source));
  if (slot && !good(*slot) && !factory(*slot, second->source)) {
    return ::testing::AssertionFailure() << where << ", not a good slot";
  }
  if (!slot && any_good_untried)
    return ::testing::AssertionFailure() << where << " although a slot is good";
  return ::testing::AssertionSuccess();
}

}  // namespace ralph::boot
