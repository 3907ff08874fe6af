// Every slot-manager transition on the fake store, driven through the
// firmware model: what is written (exactly), what the record says, and what
// the machine boots next.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "machine.h"

namespace ralph::boot {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::vector<uint16_t> BootOrderOf(Machine& m) {
  std::optional<std::vector<uint8_t>> raw = m.vars().Peek(kEfiGlobalGuid, "BootOrder");
  if (!raw) return {};
  return *DecodeBootOrder(*raw);
}

std::optional<uint16_t> BootNextOf(Machine& m) {
  std::optional<std::vector<uint8_t>> raw = m.vars().Peek(kEfiGlobalGuid, "BootNext");
  if (!raw) return std::nullopt;
  return *DecodeBootNumber(*raw);
}

uint16_t EntryFor(Machine& m, BootTarget target) {
  Result<StatusReport> status = m.Manager().Status();
  EXPECT_TRUE(status.has_value());
  const BootEntry* entry = status->view.Find(target);
  EXPECT_NE(entry, nullptr) << BootTargetName(target);
  return entry ? entry->number : 0xffff;
}

TEST(SlotManagerTest, FirstBootProvisionsATrialThatTheHealthGateCommits) {
  Machine m;
  FirmwareBoot boot = m.PowerOn();
  EXPECT_EQ(boot.source, BootSource::kRemovable);
  EXPECT_EQ(boot.target, BootTarget::kSlotA);
  uint16_t firmware_entry = boot.boot_current;

  Result<BootReport> report = m.Manager().OnBoot();
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_EQ(report->booted, BootTarget::kSlotA);
  EXPECT_EQ(report->event, BootEvent::kTrial);
  EXPECT_THAT(report->findings[0],
              HasSubstr("RalphSlotState is missing (first boot): initialised with slot A on trial "
                        "(3 tries; the health gate commits it)"));
  // Three entries, the record (this try counted), BootNext (the next try),
  // BootOrder: six writes, nothing else.
  EXPECT_THAT(report->written, ElementsAre("Boot0001", "Boot0002", "Boot0003", "RalphSlotState",
                                           "BootNext", "BootOrder"));
  EXPECT_EQ(m.vars().changes(), 6u);
  SlotState record = m.Record();
  EXPECT_FALSE(record.committed.has_value());  // not before the health gate
  EXPECT_EQ(record.a.status, SlotStatus::kTrial);
  EXPECT_EQ(record.a.tries_left, kFirstBootTries - 1);
  EXPECT_EQ(record.b.status, SlotStatus::kEmpty);
  uint16_t a_entry = EntryFor(m, BootTarget::kSlotA);
  uint16_t recovery_entry = EntryFor(m, BootTarget::kRecovery);
  // Nothing committed: RECOVERY, then the slot on trial, then the firmware's.
  EXPECT_THAT(BootOrderOf(m), ElementsAre(recovery_entry, a_entry, firmware_entry));
  EXPECT_EQ(BootNextOf(m), a_entry);

  // The health gate passes: commit. The record, BootOrder, BootNext gone.
  m.vars().ResetCounters();
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_TRUE(good.has_value()) << good.error().ToString();
  EXPECT_THAT(good->written, ElementsAre("RalphSlotState", "BootOrder", "-BootNext"));
  record = m.Record();
  EXPECT_EQ(record.committed, Slot::kA);
  EXPECT_EQ(record.a.status, SlotStatus::kGood);
  EXPECT_EQ(record.a.tries_left, 0);
  // Ours first (B is empty: not offered), RECOVERY, then the firmware's.
  EXPECT_THAT(BootOrderOf(m), ElementsAre(a_entry, recovery_entry, firmware_entry));

  // From now on A boots through its own entry, and nothing is written.
  BootReport again = m.Boot();
  EXPECT_EQ(m.booted()->source, BootSource::kBootOrder);
  EXPECT_EQ(m.booted()->boot_current, a_entry);
  EXPECT_EQ(again.event, BootEvent::kNormal);
  EXPECT_THAT(again.written, IsEmpty());
  EXPECT_EQ(m.vars().changes(), 0u);
}

TEST(SlotManagerTest, FirstBootFailingTheHealthGateFallsToRecoveryNotIntoALoop) {
  Machine m;
  m.Boot();
  Result<Outcome> bad = m.Manager().MarkBadBooted();
  ASSERT_TRUE(bad.has_value()) << bad.error().ToString();
  // Disarm the next try first, then the record, then BootOrder.
  EXPECT_THAT(bad->written, ElementsAre("-BootNext", "RalphSlotState", "BootOrder"));
  EXPECT_EQ(m.Record().a.status, SlotStatus::kBad);
  EXPECT_FALSE(m.Record().committed.has_value());
  uint16_t recovery_entry = EntryFor(m, BootTarget::kRecovery);
  EXPECT_EQ(BootOrderOf(m)[0], recovery_entry);
  SlotState marked = m.Record();

  for (int i = 0; i < 3; ++i) {
    BootReport rescue = m.Boot();
    EXPECT_EQ(rescue.booted, BootTarget::kRecovery) << "boot " << i;
    EXPECT_EQ(m.booted()->source, BootSource::kBootOrder);
    EXPECT_EQ(rescue.event, BootEvent::kRecovery);
    EXPECT_THAT(rescue.written, IsEmpty());
    EXPECT_EQ(m.Record(), marked);
  }
}

TEST(SlotManagerTest, FirstBootThatNeverComesUpIsRetriedThenRecoveryCanRetryIt) {
  Machine m;
  uint16_t a_entry = 0;
  // Each boot runs OnBoot and then hangs (no health verdict).
  for (uint8_t attempt = 1; attempt <= kFirstBootTries; ++attempt) {
    BootReport boot = m.Boot();
    if (attempt == 1) a_entry = EntryFor(m, BootTarget::kSlotA);
    EXPECT_EQ(boot.booted, BootTarget::kSlotA) << "attempt " << int{attempt};
    EXPECT_EQ(boot.event, BootEvent::kTrial);
    EXPECT_EQ(m.booted()->source, attempt == 1 ? BootSource::kRemovable : BootSource::kBootNext);
    EXPECT_EQ(m.Record().a.tries_left, std::max(1, kFirstBootTries - attempt));
  }
  EXPECT_FALSE(BootNextOf(m).has_value());  // the last try arms nothing
  BootReport rescue = m.Boot();
  EXPECT_EQ(rescue.booted, BootTarget::kRecovery);
  EXPECT_EQ(rescue.event, BootEvent::kRecovery);
  EXPECT_THAT(rescue.written, IsEmpty());
  EXPECT_EQ(m.Record().a.status, SlotStatus::kTrial);  // RECOVERY judges nothing

  // From RECOVERY an operator retries the factory slot; this time it is healthy.
  Result<Outcome> retry = m.Manager().MarkActive(Slot::kA, 1);
  ASSERT_TRUE(retry.has_value()) << retry.error().ToString();
  EXPECT_EQ(BootNextOf(m), a_entry);
  BootReport trial = m.Boot();
  EXPECT_EQ(trial.booted, BootTarget::kSlotA);
  EXPECT_EQ(trial.event, BootEvent::kTrial);
  ASSERT_TRUE(m.Manager().MarkGood().has_value());
  EXPECT_EQ(m.Record().committed, Slot::kA);
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
  EXPECT_EQ(m.booted()->source, BootSource::kBootOrder);
}

TEST(SlotManagerTest, NoRecordAndNoIdeaWhatBootedWritesNothing) {
  Machine m;
  // Removable path, a stub that leaves no LoaderImageIdentifier, and no
  // BootCurrent: nothing tells what booted.
  m.firmware().set_stub_exports_image(false);
  m.PowerOn();
  m.vars().Erase(kEfiGlobalGuid, "BootCurrent");
  SlotManager manager = *SlotManager::Create(m.vars(), TestLayout(), "quiet");
  Result<BootReport> boot = manager.OnBoot();
  ASSERT_FALSE(boot.has_value());
  EXPECT_EQ(boot.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(boot.error().message(), HasSubstr("RalphSlotState is missing, and the booted image "
                                                "cannot be told"));
  EXPECT_THAT(boot.error().message(), HasSubstr("no LoaderImageIdentifier, no BootCurrent"));
  Result<Outcome> repair = manager.Repair();
  ASSERT_FALSE(repair.has_value());
  EXPECT_EQ(m.vars().changes(), 0u);
  EXPECT_EQ(m.PowerOn().source, BootSource::kRemovable);  // still boots as before
}

TEST(SlotManagerTest, SteadyStateHealthyBootWritesNothing) {
  Machine m = Machine::WithTrialPending();
  m.Boot();
  ASSERT_TRUE(m.Manager().MarkGood().has_value());
  for (int i = 0; i < 5; ++i) {
    m.PowerOn();
    uint64_t calls = m.vars().write_calls();
    Result<BootReport> boot = m.Manager().OnBoot();
    ASSERT_TRUE(boot.has_value());
    BootReport report = *boot;
    EXPECT_EQ(report.event, BootEvent::kNormal);
    EXPECT_EQ(report.booted, BootTarget::kSlotB);
    EXPECT_EQ(m.vars().changes(), 0u) << "boot " << i;
    EXPECT_EQ(m.vars().write_calls(), calls) << "boot " << i;  // not even an equal write
    // The health gate commits on every healthy boot: also a no-op.
    Result<Outcome> good = m.Manager().MarkGood();
    ASSERT_TRUE(good.has_value());
    EXPECT_THAT(good->written, IsEmpty());
    EXPECT_EQ(m.vars().write_calls(), calls);
  }
}

TEST(SlotManagerTest, OtaInstallTrialAndCommitWriteTheFewestVariables) {
  Machine m = Machine::Provisioned();
  SlotManager manager = m.Manager();
  uint16_t b_entry = EntryFor(m, BootTarget::kSlotB);

  // Before the first byte: B is already out of BootOrder (it was never in
  // it: empty), so only the record changes.
  Result<Outcome> begin = manager.BeginWrite(Slot::kB, {1, 1, 0});
  ASSERT_TRUE(begin.has_value()) << begin.error().ToString();
  EXPECT_THAT(begin->written, ElementsAre("RalphSlotState"));
  EXPECT_EQ(m.Record().b.status, SlotStatus::kWriting);

  m.vars().ResetCounters();
  Result<Outcome> finish = manager.FinishWrite(Slot::kB, {1, 1, 0}, TestDigest(3), 1);
  ASSERT_TRUE(finish.has_value()) << finish.error().ToString();
  EXPECT_THAT(finish->written, ElementsAre("RalphSlotState", "BootNext", "BootOrder"));
  SlotState record = m.Record();
  EXPECT_EQ(record.b.status, SlotStatus::kTrial);
  EXPECT_EQ(record.b.tries_left, 1);
  EXPECT_EQ(record.b.digest, TestDigest(3));
  EXPECT_EQ(BootNextOf(m), b_entry);
  // The other slot stays in BootOrder after the committed one.
  EXPECT_THAT(BootOrderOf(m)[0], EntryFor(m, BootTarget::kSlotA));
  EXPECT_THAT(BootOrderOf(m)[1], b_entry);

  // Trial boot: the firmware takes BootNext; one try: nothing to write.
  BootReport trial = m.Boot();
  EXPECT_EQ(m.booted()->source, BootSource::kBootNext);
  EXPECT_EQ(trial.event, BootEvent::kTrial);
  EXPECT_EQ(trial.booted, BootTarget::kSlotB);
  EXPECT_EQ(m.vars().changes(), 0u);
  EXPECT_FALSE(BootNextOf(m).has_value());

  // Commit: the record, then BootOrder. Two writes.
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_TRUE(good.has_value()) << good.error().ToString();
  EXPECT_THAT(good->written, ElementsAre("RalphSlotState", "BootOrder"));
  record = m.Record();
  EXPECT_EQ(record.committed, Slot::kB);
  EXPECT_EQ(record.b.status, SlotStatus::kGood);
  EXPECT_EQ(record.a.status, SlotStatus::kGood);  // the fallback
  EXPECT_EQ(record.minimum_version, (SlotVersion{1, 1, 0}));
  EXPECT_THAT(BootOrderOf(m)[0], b_entry);
  EXPECT_THAT(BootOrderOf(m)[1], EntryFor(m, BootTarget::kSlotA));

  BootReport after = m.Boot();
  EXPECT_EQ(after.booted, BootTarget::kSlotB);
  EXPECT_EQ(m.booted()->source, BootSource::kBootOrder);
  EXPECT_EQ(after.event, BootEvent::kNormal);
}

TEST(SlotManagerTest, TrialWithThreeTriesRearmsAndThenRollsBack) {
  Machine m = Machine::WithTrialPending(3);
  uint16_t b_entry = EntryFor(m, BootTarget::kSlotB);

  // Tries 3 -> 2: count the attempt (record) and re-arm (BootNext).
  BootReport first = m.Boot();
  EXPECT_EQ(first.event, BootEvent::kTrial);
  EXPECT_THAT(first.written, ElementsAre("RalphSlotState", "BootNext"));
  EXPECT_EQ(m.Record().b.tries_left, 2);
  EXPECT_EQ(BootNextOf(m), b_entry);
  // OnBoot again in the same boot (a restarted PID 1) must not count twice.
  Result<BootReport> twice = m.Manager().OnBoot();
  ASSERT_TRUE(twice.has_value());
  EXPECT_THAT(twice->written, IsEmpty());

  // The trial boot dies (no MarkGood): the firmware tries B again.
  BootReport second = m.Boot();
  EXPECT_EQ(second.booted, BootTarget::kSlotB);
  EXPECT_THAT(second.written, ElementsAre("RalphSlotState", "BootNext"));
  EXPECT_EQ(m.Record().b.tries_left, 1);

  // Last try: nothing to write; a crash now falls back.
  BootReport third = m.Boot();
  EXPECT_EQ(third.booted, BootTarget::kSlotB);
  EXPECT_THAT(third.written, IsEmpty());

  // It dies too: the committed slot comes up and records the failed trial.
  BootReport fallback = m.Boot();
  EXPECT_EQ(fallback.booted, BootTarget::kSlotA);
  EXPECT_EQ(fallback.event, BootEvent::kRolledBack);
  EXPECT_EQ(fallback.rolled_back, Slot::kB);
  EXPECT_THAT(fallback.written, ElementsAre("RalphSlotState", "BootOrder"));
  EXPECT_EQ(m.Record().b.status, SlotStatus::kBad);
  EXPECT_EQ(m.Record().committed, Slot::kA);

  // And then the machine is steady again.
  BootReport steady = m.Boot();
  EXPECT_EQ(steady.event, BootEvent::kNormal);
  EXPECT_THAT(steady.written, IsEmpty());
}

TEST(SlotManagerTest, PowerCutDuringTrialFallsBackByItself) {
  Machine m = Machine::WithTrialPending(1);
  FirmwareBoot trial = m.PowerOn();  // B boots, dies before OnBoot
  EXPECT_EQ(trial.target, BootTarget::kSlotB);
  BootReport back = m.Boot();
  EXPECT_EQ(back.booted, BootTarget::kSlotA);
  EXPECT_EQ(back.event, BootEvent::kRolledBack);
  EXPECT_THAT(back.findings, testing::Contains(HasSubstr("slot B failed its trial")));
}

TEST(SlotManagerTest, FailedHealthCheckMarksBadAndRebootsIntoCommitted) {
  Machine m = Machine::WithTrialPending(3);
  m.Boot();  // B, re-armed
  Result<Outcome> bad = m.Manager().MarkBadBooted();
  ASSERT_TRUE(bad.has_value()) << bad.error().ToString();
  // Disarm first, then the record, then BootOrder.
  EXPECT_THAT(bad->written, ElementsAre("-BootNext", "RalphSlotState", "BootOrder"));
  EXPECT_EQ(m.Record().b.status, SlotStatus::kBad);
  BootReport back = m.Boot();
  EXPECT_EQ(back.booted, BootTarget::kSlotA);
  EXPECT_EQ(back.event, BootEvent::kNormal);
  EXPECT_THAT(back.written, IsEmpty());
}

TEST(SlotManagerTest, MarkGoodAfterRearmClearsBootNext) {
  Machine m = Machine::WithTrialPending(2);
  m.Boot();
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_TRUE(good.has_value());
  EXPECT_THAT(good->written, ElementsAre("RalphSlotState", "BootOrder", "-BootNext"));
}

TEST(SlotManagerTest, MarkGoodOnAFallbackBootDoesNotMoveTheCommit) {
  Machine m = Machine::WithTrialPending(1);
  m.Boot();
  ASSERT_TRUE(m.Manager().MarkGood().has_value());  // B committed, A good
  // B's entry vanishes: the firmware falls back to A, which is healthy.
  m.vars().Erase(kEfiGlobalGuid, BootEntryName(EntryFor(m, BootTarget::kSlotB)));
  m.PowerOn();
  EXPECT_EQ(m.booted()->target, BootTarget::kSlotA);
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_TRUE(good.has_value());
  EXPECT_THAT(good->written, IsEmpty());
  EXPECT_THAT(good->findings, ElementsAre(HasSubstr("slot A is good but slot B is committed")));
  EXPECT_EQ(m.Record().committed, Slot::kB);
}

TEST(SlotManagerTest, MarkGoodRefusesABadOrUnknownSlot) {
  Machine m = Machine::WithTrialPending(1);
  m.Boot();
  ASSERT_TRUE(m.Manager().MarkBadBooted().has_value());
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_FALSE(good.has_value());
  EXPECT_EQ(good.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(good.error().message(), HasSubstr("booted slot B is bad"));

  Result<SlotManager> blind = SlotManager::Create(m.vars(), TestLayout(), "quiet");
  m.vars().Erase(kEfiGlobalGuid, "BootCurrent");
  m.vars().Erase(kLoaderVendorGuid, kLoaderImageIdentifierVariable);
  Result<Outcome> unknown = blind->MarkGood();
  ASSERT_FALSE(unknown.has_value());
  EXPECT_THAT(unknown.error().message(), HasSubstr("cannot tell the booted slot"));
  EXPECT_THAT(unknown.error().message(), HasSubstr("no ralph.slot="));
}

TEST(SlotManagerTest, MarkBadRefusesTheCommittedSlot) {
  Machine m = Machine::Provisioned();
  Result<Outcome> bad = m.Manager().MarkBadBooted();
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kRefused);
  EXPECT_THAT(bad.error().message(), HasSubstr("slot A is the committed slot"));
  EXPECT_EQ(m.vars().changes(), 0u);
}

TEST(SlotManagerTest, MarkActiveRetriesASlotWithAnImage) {
  Machine m = Machine::WithTrialPending(1);
  m.PowerOn();  // B dies
  m.Boot();     // A: B marked bad
  ASSERT_EQ(m.Record().b.status, SlotStatus::kBad);
  Result<Outcome> active = m.Manager().MarkActive(Slot::kB, 2);
  ASSERT_TRUE(active.has_value()) << active.error().ToString();
  EXPECT_THAT(active->written, ElementsAre("RalphSlotState", "BootNext", "BootOrder"));
  EXPECT_EQ(m.Record().b.tries_left, 2);
  BootReport trial = m.Boot();
  EXPECT_EQ(trial.booted, BootTarget::kSlotB);
  EXPECT_EQ(trial.event, BootEvent::kTrial);
}

TEST(SlotManagerTest, MarkActiveRefusals) {
  Machine m = Machine::Provisioned();
  Result<Outcome> empty = m.Manager().MarkActive(Slot::kB);
  ASSERT_FALSE(empty.has_value());
  EXPECT_EQ(empty.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(empty.error().message(), HasSubstr("slot B is empty"));

  Result<Outcome> committed = m.Manager().MarkActive(Slot::kA);
  ASSERT_FALSE(committed.has_value());
  EXPECT_THAT(committed.error().message(), HasSubstr("slot A is already the committed slot"));

  Result<Outcome> tries = m.Manager().MarkActive(Slot::kB, 0);
  ASSERT_FALSE(tries.has_value());
  EXPECT_EQ(tries.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(tries.error().message(), HasSubstr("tries must be 1..15, got 0"));

  ASSERT_TRUE(m.Manager().BeginWrite(Slot::kB, {2, 0, 0}).has_value());
  Result<Outcome> writing = m.Manager().MarkActive(Slot::kB);
  ASSERT_FALSE(writing.has_value());
  EXPECT_THAT(writing.error().message(), HasSubstr("slot B is writing"));
  EXPECT_EQ(m.vars().Peek(kEfiGlobalGuid, "BootNext"), std::nullopt);
}

TEST(SlotManagerTest, AntiRollback) {
  // Commit B at 2.0.0: A (version unknown, 0.0.0) is now below the minimum.
  Machine m = Machine::WithTrialPending(1, {2, 0, 0});
  m.Boot();
  ASSERT_TRUE(m.Manager().MarkGood().has_value());
  EXPECT_EQ(m.Record().minimum_version, (SlotVersion{2, 0, 0}));

  Result<Outcome> old = m.Manager().BeginWrite(Slot::kA, {1, 9, 9});
  ASSERT_FALSE(old.has_value());
  EXPECT_EQ(old.error().code(), ErrorCode::kRefused);
  EXPECT_THAT(old.error().message(),
              HasSubstr("version 1.9.9 is below the minimum allowed version 2.0.0"));
  EXPECT_EQ(m.Record().a.status, SlotStatus::kGood);  // untouched

  Result<Outcome> back = m.Manager().MarkActive(Slot::kA);
  ASSERT_FALSE(back.has_value());
  EXPECT_THAT(back.error().message(), HasSubstr("anti-rollback"));

  // An explicit override goes through.
  Result<Outcome> forced = m.Manager().MarkActive(Slot::kA, 1, DowngradePolicy::kAllow);
  EXPECT_TRUE(forced.has_value()) << forced.error().ToString();
  ASSERT_TRUE(m.Manager().BeginWrite(Slot::kA, {1, 9, 9}, DowngradePolicy::kAllow).has_value());
  Result<Outcome> finish = m.Manager().FinishWrite(Slot::kA, {1, 9, 9}, TestDigest(1));
  ASSERT_FALSE(finish.has_value());  // the override must be given again
  EXPECT_EQ(finish.error().code(), ErrorCode::kRefused);
}

TEST(SlotManagerTest, BeginWriteRefusals) {
  Machine m = Machine::Provisioned();
  Result<Outcome> booted = m.Manager().BeginWrite(Slot::kA, {1, 0, 0});
  ASSERT_FALSE(booted.has_value());
  EXPECT_EQ(booted.error().code(), ErrorCode::kRefused);
  EXPECT_THAT(booted.error().message(), HasSubstr("writing slot A: it is the booted slot"));

  // On a trial boot the booted slot is not committed yet.
  Machine trial = Machine::WithTrialPending(1);
  trial.Boot();
  Result<Outcome> uncommitted = trial.Manager().BeginWrite(Slot::kA, {1, 2, 0});
  ASSERT_FALSE(uncommitted.has_value());
  EXPECT_THAT(uncommitted.error().message(),
              HasSubstr("the booted slot B is not committed (trial)"));
  EXPECT_EQ(trial.vars().changes(), 0u);
}

TEST(SlotManagerTest, BeginWriteTakesAGoodSlotOutOfBootOrderFirst) {
  Machine m = Machine::WithTrialPending(1);
  m.Boot();
  ASSERT_TRUE(m.Manager().MarkGood().has_value());  // B committed, A good fallback
  uint16_t a_entry = EntryFor(m, BootTarget::kSlotA);
  m.vars().ResetCounters();
  Result<Outcome> begin = m.Manager().BeginWrite(Slot::kA, {1, 2, 0});
  ASSERT_TRUE(begin.has_value()) << begin.error().ToString();
  EXPECT_THAT(begin->written, ElementsAre("BootOrder", "RalphSlotState"));
  EXPECT_THAT(BootOrderOf(m), testing::Not(testing::Contains(a_entry)));
}

TEST(SlotManagerTest, FinishWriteRefusals) {
  Machine m = Machine::Provisioned();
  Result<Outcome> not_begun = m.Manager().FinishWrite(Slot::kB, {1, 1, 0}, TestDigest(1));
  ASSERT_FALSE(not_begun.has_value());
  EXPECT_EQ(not_begun.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(not_begun.error().message(), HasSubstr("the slot is empty, not being written"));

  ASSERT_TRUE(m.Manager().BeginWrite(Slot::kB, {1, 1, 0}).has_value());
  Result<Outcome> other = m.Manager().FinishWrite(Slot::kB, {1, 2, 0}, TestDigest(1));
  ASSERT_FALSE(other.has_value());
  EXPECT_EQ(other.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(other.error().message(), HasSubstr("BeginWrite was for version 1.1.0, not 1.2.0"));
}

TEST(SlotManagerTest, ArmRecoveryBootsRecoveryOnce) {
  Machine m = Machine::Provisioned();
  Result<Outcome> armed = m.Manager().ArmRecovery();
  ASSERT_TRUE(armed.has_value());
  EXPECT_THAT(armed->written, ElementsAre("BootNext"));
  BootReport recovery = m.Boot();
  EXPECT_EQ(recovery.booted, BootTarget::kRecovery);
  EXPECT_EQ(recovery.event, BootEvent::kRecovery);
  EXPECT_THAT(recovery.written, IsEmpty());
  // From RECOVERY either slot may be rewritten.
  Result<Outcome> begin = m.Manager().BeginWrite(Slot::kB, {1, 0, 1});
  EXPECT_TRUE(begin.has_value()) << begin.error().ToString();
  BootReport back = m.Boot();
  EXPECT_EQ(back.booted, BootTarget::kSlotA);
}

TEST(SlotManagerTest, RecoveryBootCountsNoTrialAndKeepsTheRecord) {
  // B on trial with tries to spare, and RECOVERY armed over it.
  Machine m = Machine::WithTrialPending(3);
  ASSERT_TRUE(m.Manager().ArmRecovery().has_value());
  std::vector<uint8_t> record = *m.vars().Peek(kRalphVendorGuid, kSlotStateVariable);
  BootReport rescue = m.Boot();
  EXPECT_EQ(rescue.booted, BootTarget::kRecovery);
  EXPECT_EQ(rescue.event, BootEvent::kRecovery);
  EXPECT_FALSE(rescue.rolled_back.has_value());
  EXPECT_THAT(rescue.written, IsEmpty());
  EXPECT_EQ(*m.vars().Peek(kRalphVendorGuid, kSlotStateVariable), record);
  EXPECT_EQ(rescue.record.committed, Slot::kA);
  EXPECT_EQ(rescue.record.b.tries_left, 3);
  // The commit verbs refuse there.
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_FALSE(good.has_value());
  EXPECT_THAT(good.error().message(), HasSubstr("the RECOVERY image is booted, not a slot"));
  // The next boot is the committed slot's; the pre-empted trial counts as failed there.
  BootReport back = m.Boot();
  EXPECT_EQ(back.booted, BootTarget::kSlotA);
  EXPECT_EQ(back.event, BootEvent::kRolledBack);
  EXPECT_EQ(m.Record().committed, Slot::kA);
}

TEST(SlotManagerTest, RecoveryBootRepairsBootOrderButNeverInitialisesTheRecord) {
  Machine m = Machine::Provisioned();
  uint16_t a_entry = EntryFor(m, BootTarget::kSlotA);
  uint16_t recovery_entry = EntryFor(m, BootTarget::kRecovery);
  ASSERT_TRUE(m.Manager().ArmRecovery().has_value());
  m.vars().Put(kEfiGlobalGuid, "BootOrder", EncodeBootOrder(std::vector<uint16_t>{0}));
  BootReport rescue = m.Boot();
  EXPECT_EQ(rescue.booted, BootTarget::kRecovery);
  EXPECT_THAT(rescue.written, ElementsAre("BootOrder"));
  EXPECT_THAT(BootOrderOf(m), ElementsAre(a_entry, recovery_entry, 0));

  // With the record gone RECOVERY writes nothing at all; A's next boot
  // re-initialises it from BootOrder.
  m.vars().Erase(kRalphVendorGuid, kSlotStateVariable);
  ASSERT_TRUE(m.Manager().ArmRecovery().has_value());
  rescue = m.Boot();
  EXPECT_EQ(rescue.booted, BootTarget::kRecovery);
  EXPECT_THAT(rescue.written, IsEmpty());
  EXPECT_THAT(rescue.findings, ElementsAre(HasSubstr("RalphSlotState is missing: left for the "
                                                     "next slot boot to initialise")));
  EXPECT_FALSE(m.vars().Peek(kRalphVendorGuid, kSlotStateVariable).has_value());
  BootReport back = m.Boot();
  EXPECT_EQ(back.booted, BootTarget::kSlotA);
  EXPECT_THAT(back.written, ElementsAre("RalphSlotState"));
  EXPECT_EQ(m.Record().committed, Slot::kA);
}

TEST(SlotManagerTest, RepairRecreatesEntriesAndKeepsForeignOnesAfterOurs) {
  Machine m = Machine::Provisioned();
  uint16_t a_entry = EntryFor(m, BootTarget::kSlotA);
  uint16_t recovery_entry = EntryFor(m, BootTarget::kRecovery);
  // Someone deletes A's entry, plants a foreign entry first in BootOrder, a
  // dangling number and a garbled entry; a stray BootNext to empty B.
  m.vars().Erase(kEfiGlobalGuid, BootEntryName(a_entry));
  m.vars().Put(kEfiGlobalGuid, "Boot0042", FirmwareRemovableEntry());
  m.vars().Put(kEfiGlobalGuid, "Boot0043", {1, 2, 3});
  m.vars().Put(kEfiGlobalGuid, "BootOrder",
               EncodeBootOrder(std::vector<uint16_t>{0x42, 0x99, recovery_entry, 0x43}));
  m.vars().Put(kEfiGlobalGuid, "BootNext", EncodeBootNumber(EntryFor(m, BootTarget::kSlotB)));

  Result<StatusReport> status = m.Manager().Status();
  ASSERT_TRUE(status.has_value());
  EXPECT_THAT(status->needs_repair, testing::Contains(HasSubstr("no Boot#### entry for A")));
  EXPECT_EQ(m.vars().changes(), 0u);  // status writes nothing

  Result<Outcome> repair = m.Manager().Repair();
  ASSERT_TRUE(repair.has_value()) << repair.error().ToString();
  EXPECT_THAT(repair->findings,
              testing::Contains(HasSubstr("Boot0043 is not a valid load option")));
  EXPECT_THAT(repair->findings,
              testing::Contains(HasSubstr("BootNext points at slot B, which is empty")));
  uint16_t new_a = EntryFor(m, BootTarget::kSlotA);
  EXPECT_THAT(BootOrderOf(m), ElementsAre(new_a, recovery_entry, 0x42, 0x43));
  EXPECT_FALSE(BootNextOf(m).has_value());
  EXPECT_TRUE(m.vars().Peek(kEfiGlobalGuid, "Boot0043").has_value());  // left alone
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
  // Repaired: a second repair writes nothing.
  Result<Outcome> again = m.Manager().Repair();
  ASSERT_TRUE(again.has_value());
  EXPECT_THAT(again->written, IsEmpty());
}

TEST(SlotManagerTest, RepairDeletesDuplicatesAndRewritesStaleEntries) {
  Machine m = Machine::Provisioned();
  uint16_t a_entry = EntryFor(m, BootTarget::kSlotA);
  std::vector<uint8_t> a_bytes = *m.vars().Peek(kEfiGlobalGuid, BootEntryName(a_entry));
  m.vars().Put(kEfiGlobalGuid, "Boot0050", a_bytes);  // a duplicate, not in BootOrder
  // Inactive A entry: the firmware would skip it.
  LoadOption option = *DecodeLoadOption(a_bytes);
  option.attributes = 0;
  m.vars().Put(kEfiGlobalGuid, BootEntryName(a_entry), *EncodeLoadOption(option));
  Result<Outcome> repair = m.Manager().Repair();
  ASSERT_TRUE(repair.has_value()) << repair.error().ToString();
  EXPECT_THAT(repair->written, testing::Contains(BootEntryName(a_entry)));
  EXPECT_FALSE(m.vars().Peek(kEfiGlobalGuid, "Boot0050").has_value());
  EXPECT_EQ((*DecodeLoadOption(*m.vars().Peek(kEfiGlobalGuid, BootEntryName(a_entry)))).attributes &
                kLoadOptionActive,
            kLoadOptionActive);
}

TEST(SlotManagerTest, GarbledRecordIsReportedAndReinitialisedKeepingTheCommittedSlot) {
  Machine m = Machine::WithTrialPending(1);
  m.Boot();
  ASSERT_TRUE(m.Manager().MarkGood().has_value());  // B committed
  std::vector<uint8_t> bytes = *m.vars().Peek(kRalphVendorGuid, kSlotStateVariable);
  bytes[40] ^= 0x10;
  m.vars().Put(kRalphVendorGuid, kSlotStateVariable, bytes);

  Result<StatusReport> status = m.Manager().Status();
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(status->view.record_error.has_value());
  EXPECT_THAT(status->view.record_error->message(), HasSubstr("bad CRC"));

  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_FALSE(good.has_value());
  EXPECT_EQ(good.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(good.error().message(), HasSubstr("RalphSlotState: bad CRC"));
  EXPECT_THAT(good.error().message(), HasSubstr("ralphctl boot repair"));

  // The next boot re-initialises from what the firmware boots: B.
  BootReport boot = m.Boot();
  EXPECT_EQ(boot.booted, BootTarget::kSlotB);
  EXPECT_THAT(boot.findings[0], HasSubstr("bad CRC"));
  EXPECT_THAT(boot.findings[0], HasSubstr("re-initialised with slot B committed"));
  SlotState record = m.Record();
  EXPECT_EQ(record.committed, Slot::kB);
  EXPECT_EQ(record.a.status, SlotStatus::kEmpty);  // unknown content: not a fallback
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotB);
}

TEST(SlotManagerTest, GarbledRecordDuringATrialKeepsTheCommittedSlotCommitted) {
  Machine m = Machine::WithTrialPending(1);
  m.vars().Put(kRalphVendorGuid, kSlotStateVariable, {0xde, 0xad});
  BootReport trial = m.Boot();  // B via BootNext
  EXPECT_EQ(trial.booted, BootTarget::kSlotB);
  EXPECT_THAT(trial.findings[0], HasSubstr("bad length: 2 bytes"));
  SlotState record = m.Record();
  EXPECT_EQ(record.committed, Slot::kA);  // BootOrder's first, not the trial
  EXPECT_EQ(record.b.status, SlotStatus::kTrial);
  // The trial dies: A.
  m.PowerOn();
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
}

TEST(SlotManagerTest, ForeignDevicePathIsNotTakenForOurs) {
  Machine m = Machine::Provisioned();
  // "RalphOS A" on another disk's ESP, booted (BootCurrent) — e.g. a second
  // appliance disk in the same machine. No ralph.slot= on the command line.
  LoadOption foreign;
  foreign.description = "RalphOS A";
  foreign.hard_drive = TestEsp();
  foreign.hard_drive->partition_guid[0] ^= 0xff;
  foreign.file = "\\EFI\\ralph\\a.efi";
  m.vars().Put(kEfiGlobalGuid, "Boot0077", *EncodeLoadOption(foreign));
  m.vars().Put(kEfiGlobalGuid, "BootCurrent", EncodeBootNumber(0x77), 6);
  // A stub that leaves no LoaderImageIdentifier: BootCurrent tells.
  m.vars().Erase(kLoaderVendorGuid, kLoaderImageIdentifierVariable);
  m.vars().Erase(kLoaderVendorGuid, kLoaderDevicePartUuidVariable);
  SlotManager manager = *SlotManager::Create(m.vars(), TestLayout(), "quiet");

  Result<StatusReport> status = manager.Status();
  ASSERT_TRUE(status.has_value());
  EXPECT_FALSE(status->booted.target.has_value());
  EXPECT_THAT(status->booted.how, HasSubstr("BootCurrent is Boot0077 \"RalphOS A\", not a RalphOS "
                                            "entry for this disk"));
  EXPECT_THAT(status->booted.how, HasSubstr("not this disk's ESP"));
  // The stub's own word says the same: the image came from that disk.
  EfiGuid other;
  other.bytes = foreign.hard_drive->partition_guid;
  std::vector<uint8_t> partuuid;
  for (char c : other.ToString() + std::string(1, '\0')) {
    partuuid.push_back(static_cast<uint8_t>(c));
    partuuid.push_back(0);
  }
  std::vector<uint8_t> file;
  for (char c : foreign.file + std::string(1, '\0')) {
    file.push_back(static_cast<uint8_t>(c));
    file.push_back(0);
  }
  m.vars().Put(kLoaderVendorGuid, std::string(kLoaderImageIdentifierVariable), file, 6);
  m.vars().Put(kLoaderVendorGuid, std::string(kLoaderDevicePartUuidVariable), partuuid, 6);
  Result<StatusReport> stub = manager.Status();
  ASSERT_TRUE(stub.has_value());
  EXPECT_FALSE(stub->booted.target.has_value());
  EXPECT_THAT(stub->booted.how,
              HasSubstr("the firmware loaded \\EFI\\ralph\\a.efi from partition " +
                        other.ToString() + ", not this disk's ESP"));
  Result<Outcome> good = manager.MarkGood();
  ASSERT_FALSE(good.has_value());
  EXPECT_THAT(good.error().message(), HasSubstr("not this disk's ESP"));

  Result<Outcome> repair = manager.Repair();
  ASSERT_TRUE(repair.has_value());
  EXPECT_THAT(repair->findings,
              testing::Contains(HasSubstr("Boot0077 \"RalphOS A\" is not a RalphOS entry")));
  EXPECT_TRUE(m.vars().Peek(kEfiGlobalGuid, "Boot0077").has_value());
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
}

TEST(SlotManagerTest, MissingPartitionIsNamed) {
  Machine m;
  DiskLayout layout = TestLayout();
  std::erase_if(layout.partitions, [](const PartitionInfo& p) { return p.label == "SYSTEM_B"; });
  Result<SlotManager> manager = SlotManager::Create(m.vars(), layout, "");
  ASSERT_FALSE(manager.has_value());
  EXPECT_EQ(manager.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(manager.error().message(), HasSubstr("test.img: no partition labelled SYSTEM_B"));
}

TEST(SlotManagerTest, WithoutALayoutEntriesAreCheckedButNotCreated) {
  Machine m = Machine::Provisioned();
  m.vars().Erase(kEfiGlobalGuid, BootEntryName(EntryFor(m, BootTarget::kSlotB)));
  SlotManager manager = m.Manager(std::nullopt);
  Result<Outcome> repair = manager.Repair();
  ASSERT_TRUE(repair.has_value());
  EXPECT_THAT(repair->findings, testing::Contains(HasSubstr(
                                    "no Boot#### entry for B; none can be created without the "
                                    "disk layout")));
  ASSERT_TRUE(manager.BeginWrite(Slot::kB, {1, 1, 0}).has_value());
  Result<Outcome> finish = manager.FinishWrite(Slot::kB, {1, 1, 0}, TestDigest(1));
  ASSERT_FALSE(finish.has_value());
  EXPECT_EQ(finish.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(finish.error().message(), HasSubstr("no disk layout to create one"));
  // The record says trial, but no BootNext was armed: A still boots.
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
}

TEST(SlotManagerTest, ReadOnlyStoreFailsClearlyAndChangesNothing) {
  Machine m = Machine::WithTrialPending(1);
  m.Boot();
  m.vars().SetReadOnly(true);
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_FALSE(good.has_value());
  EXPECT_EQ(good.error().code(), ErrorCode::kReadOnly);
  EXPECT_THAT(good.error().message(), HasSubstr("writing RalphSlotState (commit slot B)"));
  EXPECT_THAT(good.error().message(), HasSubstr("read-only"));
  EXPECT_EQ(m.vars().changes(), 0u);
  m.vars().SetReadOnly(false);
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
}

// A fleet alternates A -> B -> A with one UKI that names no slot: every
// boot is told apart by the file the firmware loaded (the stub's
// LoaderImageIdentifier), through BootNext and BootOrder alike, and a
// removable-path boot is the committed slot.
TEST(SlotManagerTest, OneSlotAgnosticImageAlternatesBetweenSlots) {
  Machine m = Machine::WithTrialPending(1, {2, 0, 0});
  BootReport b = m.Boot();
  EXPECT_EQ(m.booted()->kernel_cmdline.find("ralph.slot="), std::string::npos);
  EXPECT_EQ(b.booted, BootTarget::kSlotB);
  EXPECT_EQ(b.event, BootEvent::kTrial);
  EXPECT_THAT(b.booted_how, HasSubstr("LoaderImageIdentifier \\EFI\\ralph\\b.efi"));
  ASSERT_TRUE(m.Manager().MarkGood().has_value());
  EXPECT_EQ(m.Record().committed, Slot::kB);

  // From B, the same release into A.
  SlotManager manager = m.Manager();
  ASSERT_TRUE(manager.BeginWrite(Slot::kA, {2, 0, 0}).has_value());
  ASSERT_TRUE(manager.FinishWrite(Slot::kA, {2, 0, 0}, TestDigest(9)).has_value());
  BootReport a = m.Boot();
  EXPECT_EQ(m.booted()->source, BootSource::kBootNext);
  EXPECT_EQ(a.booted, BootTarget::kSlotA);
  EXPECT_EQ(a.event, BootEvent::kTrial);
  ASSERT_TRUE(m.Manager().MarkGood().has_value());
  EXPECT_EQ(m.Record().committed, Slot::kA);
  EXPECT_EQ(m.Boot().booted, BootTarget::kSlotA);
  EXPECT_EQ(m.booted()->source, BootSource::kBootOrder);

  // Our entries gone: the firmware falls to the removable path, whose copy
  // is the committed slot's (A), and the entries are recreated.
  for (BootTarget target : kAllBootTargets) {
    m.vars().Erase(kEfiGlobalGuid, BootEntryName(EntryFor(m, target)));
  }
  BootReport removable = m.Boot();
  EXPECT_EQ(m.booted()->source, BootSource::kRemovable);
  EXPECT_EQ(removable.booted, BootTarget::kSlotA);
  EXPECT_THAT(removable.booted_how, HasSubstr("the copy of the committed slot A's image"));
  EXPECT_EQ(removable.event, BootEvent::kNormal);
}

TEST(SlotManagerTest, KernelCommandLineDecidesWhenBootCurrentDisagrees) {
  Machine m = Machine::Provisioned();
  m.Boot();  // BootCurrent = A's own entry
  SlotManager manager = *SlotManager::Create(m.vars(), TestLayout(), "ro ralph.slot=b quiet");
  Result<StatusReport> status = manager.Status();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->booted.target, BootTarget::kSlotB);
  EXPECT_THAT(status->booted.how, HasSubstr("kernel command line ralph.slot=B (the firmware loaded "
                                            "\\EFI\\ralph\\a.efi)"));

  Result<std::optional<BootTarget>> bad = ParseKernelSlot("ralph.slot=c");
  ASSERT_FALSE(bad.has_value());
  EXPECT_THAT(bad.error().message(), HasSubstr("ralph.slot=c is not a, b or recovery"));
  EXPECT_EQ(**ParseKernelSlot("ralph.slot=a ralph.slot=recovery"), BootTarget::kRecovery);
  EXPECT_FALSE(ParseKernelSlot("myralph.slot=a")->has_value());
}

TEST(SlotManagerTest, EqualWritesAreSkippedByTheApplyStep) {
  Machine m = Machine::Provisioned();
  std::vector<uint8_t> order = *m.vars().Peek(kEfiGlobalGuid, "BootOrder");
  std::vector<VarWrite> writes = {{kEfiGlobalGuid, "BootOrder", order, "same"},
                                  {kEfiGlobalGuid, "BootNext", std::nullopt, "absent"}};
  uint64_t calls = m.vars().write_calls();
  Result<std::vector<std::string>> written = ApplyWrites(m.vars(), writes);
  ASSERT_TRUE(written.has_value());
  EXPECT_THAT(*written, IsEmpty());
  EXPECT_EQ(m.vars().write_calls(), calls);
}

}  // namespace
}  // namespace ralph::boot
