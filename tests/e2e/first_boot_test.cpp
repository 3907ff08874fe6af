// A machine out of the box: fresh disk, empty NVRAM. It must boot through
// the removable-media path, provision Boot#### entries with A on trial,
// commit A only once its health gate passed, and boot through A's Boot####
// entry next time. Leaves the provisioned disk + VARS for the other
// scenarios (fixture e2e_provisioned).
#include <filesystem>

#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

TEST_F(E2eTest, FreshMachineProvisionsAndCommitsA) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kFresh));
  Machine machine = Boot();
  // In order: removable path, provisioning with A on trial (nothing
  // committed before the health gate), the gate passes, A committed.
  for (std::string marker :
       {std::string(kRemovablePath), BootingSlot("A"),
        std::string("initialised with slot A on trial (3 tries; the health gate commits it)"),
        std::string("no Boot#### entry for A: created"),
        std::string("slot manager: boot event trial"), std::string("check 'services up': ok"),
        CommittedSlot("A") + " (after its trial"}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS A");

  // Next boot: through Boot#### for A, not the removable path.
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  std::string console = machine.Console();
  std::string second_boot = console.substr(console.rfind("BdsDxe: starting"));
  EXPECT_NE(second_boot.find("\"RalphOS A\""), std::string::npos) << second_boot.substr(0, 200);
  auto reported = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(reported) << reported.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));
  auto removable = ReadEspFile(disk_, "/EFI/BOOT/BOOTX64.EFI");
  ASSERT_TRUE(removable) << removable.error().ToString();
  auto a_image = ReadEspFile(disk_, "/EFI/ralph/a.efi");
  ASSERT_TRUE(a_image) << a_image.error().ToString();
  EXPECT_TRUE(*removable == *a_image) << "the removable path is not A's UKI after A committed";

  std::error_code ec;
  std::filesystem::create_directories(paths_.provisioned_dir, ec);
  ASSERT_FALSE(ec) << ec.message();
  auto saved = SparseCopy(disk_, paths_.provisioned_dir + "/disk.img");
  ASSERT_TRUE(saved) << saved.error().ToString();
  saved = SparseCopy(vars_, paths_.provisioned_dir + "/vars.fd");
  ASSERT_TRUE(saved) << saved.error().ToString();
}

}  // namespace
}  // namespace ralph::e2e
