// Bad disks: a mis-labelled partition and a corrupt VAR filesystem each give
// a clear console error, and the committed slot still boots.
#include <fmt/format.h>

#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

TEST_F(E2eTest, MislabelledPartitionIsReportedAndASlotStillBoots) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  // Partition 3 is SYSTEM_B; give it a label RalphOS does not know.
  int status =
      std::system(fmt::format("sfdisk --part-label {} 3 SYSTEM_X >/dev/null 2>&1", disk_).c_str());
  ASSERT_EQ(status, 0) << "sfdisk (Debian package fdisk) failed to relabel partition 3";
  Machine machine = Boot();
  // The early boot's report, once it has chosen slot A. The slot manager's
  // own finding about SYSTEM_B comes tens of ms before "booting slot A":
  // waiting for any "SYSTEM_B" and then looking after "booting slot A" read
  // the console too early on a fast boot (a flaky failure in CI).
  const std::string report = "is not an appliance disk: no partition labelled SYSTEM_B";
  auto error = machine.WaitFor(report, kBootTimeout);
  ASSERT_TRUE(error) << error.error().ToString();
  std::string console = machine.Console();
  size_t at = console.find(report);
  ASSERT_NE(at, std::string::npos);
  size_t line_start = console.rfind('\n', at);
  std::string line = console.substr(line_start + 1, at - line_start - 1);
  EXPECT_NE(line.find("ralph-early-boot: disk /dev/vda:"), std::string::npos) << line;
  size_t chosen = console.find("ralph-early-boot: booting slot A");
  EXPECT_LT(chosen, at) << "no \"booting slot A\" before the report";
  auto up = machine.WaitFor(kAgentReady, kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
}

TEST_F(E2eTest, CorruptVarIsReportedAndRecreated) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  // Overwrite the ext4 superblock (bytes 1024..2047 of VAR).
  auto scribbled = ScribblePartition(disk_, "VAR", 1024, 1024);
  ASSERT_TRUE(scribbled) << scribbled.error().ToString();
  Machine machine = Boot();
  auto error = machine.WaitFor("VAR (/dev/vda4) holds no ext4 filesystem", kBootTimeout);
  ASSERT_TRUE(error) << error.error().ToString();
  auto committed = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  auto record = machine.Agent({"cat", "/run/ralph/early-boot"}, kAgentTimeout);
  ASSERT_TRUE(record) << record.error().ToString();
  EXPECT_NE(record->output.find("var=re-created"), std::string::npos) << record->output;
}

}  // namespace
}  // namespace ralph::e2e
