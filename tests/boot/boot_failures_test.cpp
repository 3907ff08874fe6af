// The boot-failure counter's decisions and file format.
#include "boot/boot_failures.h"

#include <gtest/gtest.h>

namespace ralph::boot {
namespace {

constexpr uint32_t kLimit = 3;

TEST(BootFailuresTest, RoundTripsAndRefusesMalformedFiles) {
  BootFailures f{Slot::kB, 7};
  EXPECT_EQ(RenderBootFailures(f), "slot=B\ncount=7\n");
  auto parsed = ParseBootFailures(RenderBootFailures(f));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, f);
  for (auto [text, why] : std::vector<std::pair<std::string, std::string>>{
           {"", "no slot"},
           {"slot=A\n", "no count"},
           {"slot=A\ncount=2", "not terminated"},
           {"slot=C\ncount=1\n", "slot 'C' is not A or B"},
           {"slot=a\ncount=1\n", "slot 'a' is not A or B"},
           {"slot=A\ncount=x\n", "count 'x' is not a number"},
           {"slot=A\ncount=-1\n", "count '-1' is not a number"},
           {"slot=A\ncount=\n", "count '' is not a number"},
           {"slot=A\ncount=99999999999\n", "is not a number"},
           {"slot=A\nslot=B\ncount=1\n", "repeated key 'slot'"},
           {"slot=A\ncount=1\nextra=1\n", "unexpected or repeated key 'extra'"},
           {"garbage\n", "line 1: no '='"}}) {
    auto r = ParseBootFailures(text);
    ASSERT_FALSE(r) << text;
    EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
    EXPECT_NE(r.error().message().find(why), std::string::npos) << r.error().message();
  }
}

TEST(BootFailuresTest, CountsBootsOfTheCommittedSlotAndArmsRecoveryAtTheLimit) {
  std::optional<BootFailures> stored;
  CounterState state = CounterState::kMissing;
  // Boots that never become healthy: 1, 2, 3 counted; the 4th start finds
  // 3 behind it and arms RECOVERY, resetting the count.
  for (uint32_t boot = 1; boot <= kLimit; ++boot) {
    BootStart start = OnBootStart(state, stored, Slot::kA, Slot::kA, kLimit);
    EXPECT_FALSE(start.arm_recovery) << boot;
    ASSERT_TRUE(start.write);
    EXPECT_EQ(*start.write, (BootFailures{Slot::kA, boot}));
    stored = start.write;
    state = CounterState::kRead;
  }
  BootStart trip = OnBootStart(state, stored, Slot::kA, Slot::kA, kLimit);
  EXPECT_TRUE(trip.arm_recovery);
  EXPECT_EQ(trip.write, (BootFailures{Slot::kA, 0}));
  EXPECT_NE(trip.why.find("failed to reach a healthy state 3 boots in a row"), std::string::npos);
}

TEST(BootFailuresTest, AHealthyBootClearsTheCount) {
  BootStart start =
      OnBootStart(CounterState::kRead, BootFailures{Slot::kA, 2}, Slot::kA, Slot::kA, kLimit);
  ASSERT_TRUE(start.write);
  EXPECT_EQ(start.write->count, 3u);
  EXPECT_EQ(OnHealthyBoot(start.write, Slot::kA), (BootFailures{Slot::kA, 0}));
  // Already clear: nothing to write.
  EXPECT_EQ(OnHealthyBoot(BootFailures{Slot::kA, 0}, Slot::kA), std::nullopt);
  // Missing or another slot's: written clear for this one.
  EXPECT_EQ(OnHealthyBoot(std::nullopt, Slot::kB), (BootFailures{Slot::kB, 0}));
  EXPECT_EQ(OnHealthyBoot(BootFailures{Slot::kA, 0}, Slot::kB), (BootFailures{Slot::kB, 0}));
}

TEST(BootFailuresTest, TrialBootsAndOtherSlotsAreNotCounted) {
  // A trial boot (not the committed slot) writes nothing and arms nothing.
  BootStart trial =
      OnBootStart(CounterState::kRead, BootFailures{Slot::kA, 2}, Slot::kB, Slot::kA, kLimit);
  EXPECT_FALSE(trial.write);
  EXPECT_FALSE(trial.arm_recovery);
  // No committed slot (a first boot): its tries are the slot manager's.
  EXPECT_FALSE(
      OnBootStart(CounterState::kMissing, std::nullopt, Slot::kA, std::nullopt, kLimit).write);
  // A count left by the other slot (before a switch) starts over.
  BootStart switched =
      OnBootStart(CounterState::kRead, BootFailures{Slot::kA, 3}, Slot::kB, Slot::kB, kLimit);
  EXPECT_FALSE(switched.arm_recovery);
  EXPECT_EQ(switched.write, (BootFailures{Slot::kB, 1}));
}

TEST(BootFailuresTest, ACorruptCounterStartsOverAndAnUnusableVarArmsRecovery) {
  BootStart corrupt = OnBootStart(CounterState::kCorrupt, std::nullopt, Slot::kA, Slot::kA, kLimit);
  EXPECT_EQ(corrupt.write, (BootFailures{Slot::kA, 1}));
  EXPECT_FALSE(corrupt.arm_recovery);
  BootStart no_var =
      OnBootStart(CounterState::kVarUnusable, std::nullopt, Slot::kA, Slot::kA, kLimit);
  EXPECT_TRUE(no_var.arm_recovery);
  EXPECT_FALSE(no_var.write);
  EXPECT_NE(no_var.why.find("VAR cannot be mounted"), std::string::npos);
}

TEST(BootFailuresTest, EveryCountBelowAndAboveTheLimit) {
  for (uint32_t limit = 1; limit <= 5; ++limit) {
    for (uint32_t count = 0; count <= 8; ++count) {
      BootStart s = OnBootStart(CounterState::kRead, BootFailures{Slot::kB, count}, Slot::kB,
                                Slot::kB, limit);
      EXPECT_EQ(s.arm_recovery, count >= limit) << count << "/" << limit;
      ASSERT_TRUE(s.write);
      EXPECT_EQ(s.write->count, count >= limit ? 0u : count + 1);
    }
  }
}

}  // namespace
}  // namespace ralph::boot
