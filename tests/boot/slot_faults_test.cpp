// Every failure the fake NVRAM can inject (ENOSPC, EIO, a torn write, a
// read-only store) at every write of every transition: the verb reports an
// error naming the variable, the firmware still boots a good slot, and the
// next boots repair the state and settle to writing nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "machine.h"

namespace ralph::boot {
namespace {

using ::testing::HasSubstr;

struct Scenario {
  std::string name;
  std::function<Machine()> setup;
  std::function<Result<void>(Machine&)> verb;
  // What is known good before the verb when NVRAM has no readable record.
  std::optional<SlotState> known_before = std::nullopt;
};

SlotState GoodSlots(std::optional<Slot> committed, std::vector<Slot> good) {
  SlotState state;
  for (Slot slot : good) state.slot(slot).status = SlotStatus::kGood;
  state.committed = committed;
  return state;
}

template <typename T>
Result<void> Discard(Result<T> result) {
  if (!result) return std::move(result).error();
  return {};
}

Machine BCommittedAGood() {
  Machine m = Machine::WithTrialPending(1);
  m.Boot();
  EXPECT_TRUE(m.Manager().MarkGood().has_value());
  m.vars().ResetCounters();
  return m;
}

std::vector<Scenario> Scenarios() {
  return {
      {"first boot provisioning",
       [] {
         Machine m;
         m.PowerOn();
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().OnBoot()); }, SlotState{}},
      {"first boot commit",
       [] {
         Machine m;
         m.Boot();
         m.vars().ResetCounters();
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().MarkGood()); }},
      {"begin write of an empty slot", [] { return Machine::Provisioned(); },
       [](Machine& m) {
         return Discard(m.Manager().BeginWrite(Slot::kB, {1, 1, 0}));
       }},
      {"begin write of the good fallback slot", BCommittedAGood,
       [](Machine& m) {
         return Discard(m.Manager().BeginWrite(Slot::kA, {1, 2, 0}));
       }},
      {"finish write",
       [] {
         Machine m = Machine::Provisioned();
         EXPECT_TRUE(m.Manager().BeginWrite(Slot::kB, {1, 1, 0}).has_value());
         return m;
       },
       [](Machine& m) {
         return Discard(m.Manager().FinishWrite(Slot::kB, {1, 1, 0}, TestDigest(1), 2));
       }},
      {"trial boot re-arm",
       [] {
         Machine m = Machine::WithTrialPending(3);
         m.PowerOn();
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().OnBoot()); }},
      {"commit after re-arm",
       [] {
         Machine m = Machine::WithTrialPending(3);
         m.Boot();
         m.vars().ResetCounters();
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().MarkGood()); }},
      {"mark bad after re-arm",
       [] {
         Machine m = Machine::WithTrialPending(3);
         m.Boot();
         m.vars().ResetCounters();
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().MarkBadBooted()); }},
      {"rollback detection",
       [] {
         Machine m = Machine::WithTrialPending(1);
         m.PowerOn();  // B dies
         m.PowerOn();  // A
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().OnBoot()); }},
      {"mark active a bad slot",
       [] {
         Machine m = Machine::WithTrialPending(1);
         m.PowerOn();
         m.Boot();
         m.vars().ResetCounters();
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().MarkActive(Slot::kB, 2)); }},
      {"arm recovery", [] { return Machine::Provisioned(); },
       [](Machine& m) { return Discard(m.Manager().ArmRecovery()); }},
      {"repair of a wrecked NVRAM",
       [] {
         Machine m = BCommittedAGood();
         m.vars().Put(kRalphVendorGuid, kSlotStateVariable, {1, 2, 3, 4});
         m.vars().Erase(kEfiGlobalGuid, "Boot0000");
         m.vars().Erase(kEfiGlobalGuid, "Boot0001");
         m.vars().Put(kEfiGlobalGuid, "BootNext", {9});
         return m;
       },
       [](Machine& m) { return Discard(m.Manager().Repair()); },
       GoodSlots(Slot::kB, {Slot::kA, Slot::kB})},
  };
}

ErrorCode ExpectedCode(EfiFault fault) {
  switch (fault) {
    case EfiFault::kNoSpace: return ErrorCode::kNoSpace;
    case EfiFault::kIo: return ErrorCode::kIo;
    case EfiFault::kTorn: return ErrorCode::kIo;
    case EfiFault::kReadOnly: return ErrorCode::kReadOnly;
  }
  return ErrorCode::kInternal;
}

SlotState Before(Machine& m, const Scenario& scenario) {
  std::optional<SlotState> record = RecordIn(m.vars().contents());
  if (record) return *record;
  EXPECT_TRUE(scenario.known_before.has_value()) << "scenario without a record needs known_before";
  return scenario.known_before.value_or(SlotState{});
}

TEST(SlotFaultsTest, EveryFaultAtEveryWrite) {
  int cases = 0;
  for (const Scenario& scenario : Scenarios()) {
    SCOPED_TRACE(scenario.name);
    Machine clean = scenario.setup();
    uint64_t start = clean.vars().write_calls();
    Result<void> ok = scenario.verb(clean);
    ASSERT_TRUE(ok.has_value()) << ok.error().ToString();
    uint64_t writes = clean.vars().write_calls() - start;
    ASSERT_GT(writes, 0u) << "a scenario that writes nothing tests no fault";

    for (uint64_t index = 0; index < writes; ++index) {
      for (EfiFault fault : kAllEfiFaults) {
        SCOPED_TRACE(fmt::format("fault {} at write {} of {}", EfiFaultName(fault), index, writes));
        ++cases;
        Machine m = scenario.setup();
        SlotState before = Before(m, scenario);
        m.vars().InjectFault(m.vars().write_calls() + index, fault);
        Result<void> result = scenario.verb(m);
        ASSERT_FALSE(result.has_value()) << "the injected fault was not reported";
        EXPECT_EQ(result.error().code(), ExpectedCode(fault)) << result.error().ToString();
        // Names what was being written and why.
        EXPECT_THAT(result.error().message(), HasSubstr("writing ")) << result.error().ToString();
        EXPECT_THAT(result.error().message(), HasSubstr(std::string(EfiFaultName(fault))));
        m.vars().ClearFaults();
        EXPECT_TRUE(BootsSafely(m.vars().contents(), m.firmware().esp(), before,
                                RecordIn(m.vars().contents()), Truth{}));
        // The following boots repair what the fault left (and finish a
        // trial that was under way) and settle to writing nothing. With
        // nothing committed (a first boot), only the health gate commits:
        // it passes on those boots.
        std::vector<std::string> written = {"?"};
        for (int boot = 0; boot < 6 && !written.empty(); ++boot) {
          written = m.Boot().written;
          std::optional<SlotState> now = RecordIn(m.vars().contents());
          std::optional<Slot> booted = SlotOf(m.booted()->target);
          if (now && !now->committed && booted && now->slot(*booted).status == SlotStatus::kTrial) {
            Result<Outcome> commit = m.Manager().MarkGood();
            ASSERT_TRUE(commit.has_value()) << commit.error().ToString();
            written.insert(written.end(), commit->written.begin(), commit->written.end());
          }
        }
        EXPECT_TRUE(written.empty())
            << "still writing after six boots: " << fmt::format("{}", fmt::join(written, ","));
        std::optional<SlotState> after = RecordIn(m.vars().contents());
        ASSERT_TRUE(after.has_value()) << "the record was not repaired";
        ASSERT_TRUE(after->committed.has_value());
        EXPECT_TRUE(BootsSafely(m.vars().contents(), m.firmware().esp(), *after, after, Truth{}));
      }
    }
  }
  // Guard against the loop silently covering nothing.
  EXPECT_GT(cases, 80);
}

TEST(SlotFaultsTest, FailingReadsAreReportedNotGuessedAround) {
  Machine m = Machine::Provisioned();
  m.vars().SetReadsFail(true);
  Result<Outcome> good = m.Manager().MarkGood();
  ASSERT_FALSE(good.has_value());
  EXPECT_EQ(good.error().code(), ErrorCode::kIo);
  EXPECT_THAT(good.error().message(), HasSubstr("reading RalphSlotState"));
  Result<BootReport> boot = m.Manager().OnBoot();
  ASSERT_FALSE(boot.has_value());
  EXPECT_EQ(m.vars().changes(), 0u);
}

}  // namespace
}  // namespace ralph::boot
