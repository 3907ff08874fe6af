// The health gate (services/health/gate.h) against fakes: the simulated
// machine of tests/boot (fake NVRAM + firmware model), a fake disk, a fake
// reboot and a fake clock. Commit, mark-bad-and-reboot and report-only, and
// the services check waiting on the injected clock.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "fake_clock.h"
#include "machine.h"
#include "services/health/gate.h"
#include "tests/support/temp_dir.h"

namespace ralph::health {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class FakeDisk final : public GateDiskInterface {
 public:
  Result<DiskLayout> Discover() override { return boot::TestLayout(); }
  Result<void> UpdateRemovablePath(const DiskLayout&, boot::Slot slot) override {
    removable_updates.push_back(slot);
    return {};
  }
  std::vector<boot::Slot> removable_updates;
};

class FakeReboot final : public RebootInterface {
 public:
  void Reboot() override { ++reboots; }
  int reboots = 0;
};

HealthCheck Check(std::string name, bool passes) {
  return {std::move(name), [passes](const HealthEnvironment&) -> Result<void> {
            if (passes) return {};
            return Error::Make(ErrorCode::kInvalidState, "broken on purpose");
          }};
}

class HealthGateTest : public ::testing::Test {
 protected:
  // Runs the gate on `machine` as booted now, with `checks`.
  int Run(boot::Machine& machine, std::vector<HealthCheck> checks,
          std::map<std::string, std::string> early_boot) {
    system_ = GateSystem{.vars = &machine.vars(),
                         .disk = &disk_,
                         .kernel_cmdline = machine.booted()->kernel_cmdline};
    env_.system = &system_;
    env_.clock = &clock_;
    machine.vars().ResetCounters();
    return RunHealthGate(env_, checks, early_boot, reboot_,
                         [&](LogLevel, std::string_view line) { log_.emplace_back(line); });
  }
  std::string Log() const {
    std::string text;
    for (const auto& line : log_) text += line + "\n";
    return text;
  }

  HealthEnvironment env_;
  GateSystem system_;
  FakeDisk disk_;
  FakeReboot reboot_;
  FakeClock clock_;
  std::vector<std::string> log_;
};

TEST_F(HealthGateTest, TrialThatPassesIsCommitted) {
  boot::Machine machine = boot::Machine::WithTrialPending();
  machine.Boot();
  ASSERT_EQ(machine.Record().b.status, boot::SlotStatus::kTrial);
  int exit = Run(machine, {Check("one", true), Check("two", true)}, {{"slot", "b"}});
  EXPECT_EQ(exit, 0) << Log();
  boot::SlotState record = machine.Record();
  EXPECT_EQ(record.committed, boot::Slot::kB);
  EXPECT_EQ(record.b.status, boot::SlotStatus::kGood);
  EXPECT_THAT(disk_.removable_updates, ElementsAre(boot::Slot::kB));
  EXPECT_EQ(reboot_.reboots, 0);
  EXPECT_THAT(Log(), HasSubstr("check 'one': ok"));
  EXPECT_THAT(Log(), HasSubstr("health gate passed: slot B committed (after its trial"));
}

TEST_F(HealthGateTest, TrialThatFailsACheckIsMarkedBadAndRebooted) {
  boot::Machine machine = boot::Machine::WithTrialPending();
  machine.Boot();
  int exit = Run(machine, {Check("one", true), Check("two", false)}, {{"slot", "b"}});
  EXPECT_EQ(exit, 1);
  boot::SlotState record = machine.Record();
  EXPECT_EQ(record.committed, boot::Slot::kA);
  EXPECT_EQ(record.b.status, boot::SlotStatus::kBad);
  EXPECT_GT(machine.vars().changes(), 0u);
  EXPECT_EQ(reboot_.reboots, 1);
  EXPECT_TRUE(disk_.removable_updates.empty());
  EXPECT_THAT(Log(), HasSubstr("check 'two': FAILED"));
  EXPECT_THAT(Log(), HasSubstr("slot B marked bad; rebooting into the committed slot"));
  // The next power-on boots the committed slot.
  EXPECT_EQ(machine.PowerOn().target, boot::BootTarget::kSlotA);
}

TEST_F(HealthGateTest, FirstBootThatFailsRebootsIntoRecovery) {
  boot::Machine machine;  // out of the box: the first boot puts A on trial
  machine.Boot();
  int exit = Run(machine, {Check("one", false)}, {{"slot", "a"}});
  EXPECT_EQ(exit, 1);
  EXPECT_EQ(machine.Record().a.status, boot::SlotStatus::kBad);
  EXPECT_EQ(reboot_.reboots, 1);
  EXPECT_THAT(Log(), HasSubstr("rebooting into RECOVERY (no slot is committed yet)"));
}

TEST_F(HealthGateTest, CommittedSlotOnlyReports) {
  for (bool passes : {true, false}) {
    SCOPED_TRACE(passes ? "checks pass" : "a check fails");
    boot::Machine machine = boot::Machine::Provisioned();
    machine.Boot();
    boot::SlotState before = machine.Record();
    int exit = Run(machine, {Check("one", passes)}, {{"slot", "a"}});
    EXPECT_EQ(exit, passes ? 0 : 1);
    EXPECT_EQ(machine.vars().changes(), 0u) << "the gate wrote to NVRAM";
    EXPECT_EQ(machine.Record(), before);
    EXPECT_EQ(reboot_.reboots, 0);
    EXPECT_TRUE(disk_.removable_updates.empty());
    EXPECT_THAT(Log(), HasSubstr(passes ? "slot A committed (it already was"
                                        : "health gate FAILED on the committed slot A"));
    log_.clear();
  }
}

TEST_F(HealthGateTest, RecoveryBootIsNotJudged) {
  boot::Machine machine = boot::Machine::WithTrialPending();
  machine.Boot();
  bool ran = false;
  HealthCheck spy{"spy", [&](const HealthEnvironment&) -> Result<void> {
                    ran = true;
                    return {};
                  }};
  EXPECT_EQ(Run(machine, {spy}, {{"slot", "recovery"}, {"mode", "recovery"}}), 0);
  EXPECT_FALSE(ran);
  EXPECT_EQ(machine.vars().changes(), 0u);
  EXPECT_EQ(reboot_.reboots, 0);
}

TEST_F(HealthGateTest, UnknownSlotIsNotJudged) {
  boot::Machine machine = boot::Machine::WithTrialPending();
  machine.Boot();
  EXPECT_EQ(Run(machine, {Check("one", true)}, {}), 1);
  EXPECT_EQ(machine.vars().changes(), 0u);
  EXPECT_THAT(Log(), HasSubstr("cannot tell the booted slot"));
}

// The "services up" check polls the status files on the injected clock: a
// service that never runs fails at the deadline, one that runs passes once
// it has stayed up for `stable_for`.
class ServicesUpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.services_conf = dir_ / "services.conf";
    env_.services_status_dir = dir_.path();
    std::ofstream(env_.services_conf) << "daemon exec=/d\n";
    env_.clock = &clock_;
    for (const auto& check : HealthChecks()) {
      if (check.name == "services up") services_up_ = check.run;
    }
    ASSERT_TRUE(services_up_) << "no 'services up' check";
  }
  void SetDaemon(const std::string& state) {
    std::ofstream(dir_ / "daemon") << "state=" << state << "\nstarts=1\n";
  }

  ::ralph::testing::TempDir dir_{"ralph-health"};
  HealthEnvironment env_;
  FakeClock clock_;
  std::function<Result<void>(const HealthEnvironment&)> services_up_;
};

TEST_F(ServicesUpTest, FailsAtTheDeadlineWhenAServiceNeverRuns) {
  SetDaemon("backoff");
  auto result = services_up_(env_);
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message(), HasSubstr("service daemon is not running"));
  EXPECT_GE(clock_.now - std::chrono::steady_clock::time_point{}, env_.settle_deadline);
}

TEST_F(ServicesUpTest, PassesOnceRunningForStableFor) {
  SetDaemon("starting");
  // The daemon comes up after the third poll.
  clock_.on_sleep = [&] {
    if (clock_.sleeps == 3) SetDaemon("running");
  };
  auto result = services_up_(env_);
  ASSERT_TRUE(result) << result.error().ToString();
  auto up_at = std::chrono::steady_clock::time_point{} + 3 * std::chrono::milliseconds(250);
  EXPECT_GE(clock_.now - up_at, env_.stable_for);
  EXPECT_LT(clock_.now, std::chrono::steady_clock::time_point{} + env_.settle_deadline);
}

}  // namespace
}  // namespace ralph::health
