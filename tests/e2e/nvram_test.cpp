// NVRAM wiped of our entries while A is committed: the firmware boots the
// removable-media path (A's image), and early boot repairs the entries.
#include <fmt/format.h>

#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

TEST_F(E2eTest, WipedBootEntriesAreRepairedFromTheRemovablePath) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();

  // Every Boot#### of ours (B is not in BootOrder while it is empty).
  int deleted = 0;
  for (uint16_t number = 0; number < 16; ++number) {
    std::string name = fmt::format("Boot{:04X}-{}", number, kEfiGlobal);
    auto option = ReadGuestEfiVar(machine, name);
    if (!option && option.error().code() == ErrorCode::kNotFound) continue;
    ASSERT_TRUE(option) << option.error().ToString();
    if (LoadOptionDescription(*option).rfind("RalphOS", 0) != 0) continue;
    auto removed = machine.Agent({"efivar-delete", name}, kAgentTimeout);
    ASSERT_TRUE(removed) << removed.error().ToString();
    ASSERT_EQ(removed->exit, 0) << removed->output;
    ++deleted;
  }
  EXPECT_EQ(deleted, 3);  // A, B, RECOVERY
  auto removed =
      machine.Agent({"efivar-delete", fmt::format("BootOrder-{}", kEfiGlobal)}, kAgentTimeout);
  ASSERT_TRUE(removed && removed->exit == 0);

  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  std::string console = machine.Console();
  std::string last_boot = console.substr(console.rfind("BdsDxe: starting"));
  EXPECT_EQ(last_boot.rfind("BdsDxe: starting Boot0002 \"UEFI Misc Device\"", 0), 0u)
      << last_boot.substr(0, 200);
  auto repaired = machine.WaitFor("no Boot#### entry for A: created", kBootTimeout);
  ASSERT_TRUE(repaired) << repaired.error().ToString();
  auto committed = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS A");

  // And the boot after that comes through the repaired entry again.
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  committed = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
}

}  // namespace
}  // namespace ralph::e2e
