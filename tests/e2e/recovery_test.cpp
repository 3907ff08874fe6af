// RECOVERY boots: a factory image whose health gate fails on a fresh
// machine is marked bad and the machine comes up in RECOVERY (and stays
// there, never looping on the bad image); an armed RECOVERY boot is a
// rescue boot that changes no slot state, and the boot after it is the
// committed slot's again.
#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

constexpr const char* kRecordVar = "RalphSlotState-dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d";
constexpr const char* kRecoveryBanner = "RalphOS RECOVERY mode";
constexpr const char* kNotJudged = "health gate: RECOVERY boot, not judged";

TEST_F(E2eTest, FactoryImageFailingItsHealthGateOnAFreshMachineFallsToRecovery) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kFresh));
  // The factory slot A carries the health-fail variant's system image (a
  // ralphd that cannot start); RECOVERY and the UKIs are good.
  auto copied = CopyPartitionAs(Image("health-fail"), "SYSTEM_B", disk_, "SYSTEM_A");
  ASSERT_TRUE(copied) << copied.error().ToString();
  Machine machine = Boot();
  for (std::string marker :
       {std::string(kRemovablePath), BootingSlot("A"),
        std::string("initialised with slot A on trial (3 tries; the health gate commits it)"),
        std::string("slot manager: boot event trial"), std::string("service ralphd is not running"),
        std::string("health gate failed: slot A marked bad; rebooting into RECOVERY"),
        BootingSlot("RECOVERY"), std::string("slot manager: boot event recovery"),
        std::string(kRecoveryBanner), std::string("committed slot: none"),
        std::string("slot A: bad"), std::string("bad slots: A"), std::string(kNotJudged)}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS RECOVERY");
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS RECOVERY");
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("booted:     RECOVERY"), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("committed:  none"), std::string::npos) << status.output;
  EXPECT_EQ(machine.Count("health gate passed"), 0u);

  // Rebooting does not try the bad image again.
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "RECOVERY"));
  auto banner = machine.WaitFor("bad slots: A", kBootTimeout);
  ASSERT_TRUE(banner) << banner.error().ToString();
  EXPECT_EQ(machine.Count(BootingSlot("A")), 1u);
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS RECOVERY");
}

TEST_F(E2eTest, ArmedRecoveryBootsOnceAndLeavesTheCommittedSlotAsItWas) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();
  auto before = ReadGuestEfiVar(machine, kRecordVar);
  ASSERT_TRUE(before) << before.error().ToString();

  auto armed = Ralphctl(machine, {"boot", "arm-recovery"});
  ASSERT_EQ(armed.exit, 0) << armed.output;
  EXPECT_NE(armed.output.find("wrote BootNext"), std::string::npos) << armed.output;
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "RECOVERY"));
  for (std::string marker :
       {std::string("slot manager: boot event recovery"), std::string(kRecoveryBanner),
        std::string("committed slot: A"), std::string("bad slots: none"),
        std::string("RalphOS RECOVERY up as PID 1"), std::string(kNotJudged)}) {
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
}

}  // namespace
}  // namespace ralph::e2e
