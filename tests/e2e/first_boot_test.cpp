// A machine out of the box: fresh disk, empty NVRAM, the firmware in
// Secure Boot setup mode (no keys). It must boot through the removable-media
// path, provision Boot#### entries with A on trial, commit A only once its
// health gate passed; the owner's Secure Boot keys are enrolled
// (`ralphctl secure-boot enroll`, the provisioning step), and the next boot
// comes through A's Boot#### entry with Secure Boot enforced. Leaves the
// provisioned disk + VARS (keys enrolled) for the other scenarios (fixture
// e2e_provisioned), which so all run with Secure Boot on.
#include <filesystem>

#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

TEST_F(E2eTest, FreshMachineProvisionsAndCommitsA) {
  ASSERT_NO_FATAL_FAILURE(CopyDiskAndVars(Image("base"), kOvmfVarsSetupMode));
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

  // Provisioning: the owner's keys (the image's /usr/share/ralph/secure-boot
  // lists) enrolled while the firmware is in setup mode.
  auto state = Ralphctl(machine, {"secure-boot", "status"});
  EXPECT_EQ(state.exit, 0) << state.output;
  EXPECT_NE(state.output.find("secure boot: off (setup mode: no keys enrolled)"), std::string::npos)
      << state.output;
  auto enrolled = Ralphctl(machine, {"secure-boot", "enroll"});
  ASSERT_EQ(enrolled.exit, 0) << enrolled.output;
  auto again = Ralphctl(machine, {"secure-boot", "enroll"});
  EXPECT_NE(again.exit, 0) << "a second enrollment was accepted: " << again.output;
  EXPECT_NE(again.output.find("not in setup mode"), std::string::npos) << again.output;

  // Next boot: through Boot#### for A, not the removable path.
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  std::string console = machine.Console();
  std::string second_boot = console.substr(console.rfind("BdsDxe: starting"));
  EXPECT_NE(second_boot.find("\"RalphOS A\""), std::string::npos) << second_boot.substr(0, 200);
  auto reported = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(reported) << reported.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
  // The firmware enforces Secure Boot now (the image is signed with a key in
  // the enrolled db), as the guest sees it.
  auto secure_boot = ReadGuestEfiVar(machine, "SecureBoot-" + std::string(kEfiGlobal));
  ASSERT_TRUE(secure_boot) << secure_boot.error().ToString();
  EXPECT_EQ(*secure_boot, std::vector<uint8_t>{1}) << "Secure Boot is off after provisioning";
  state = Ralphctl(machine, {"secure-boot", "status"});
  EXPECT_EQ(state.exit, 0) << state.output;
  EXPECT_NE(state.output.find("secure boot: on"), std::string::npos) << state.output;
  // ralphd's status (the API's GET /v1/status) says it too.
  auto status = Ralphctl(machine, {"status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find("secure boot: on\n"), std::string::npos) << status.output;
  EXPECT_NE(console.find("secureboot: Secure boot enabled", console.rfind("BdsDxe: starting")),
            std::string::npos)
      << "the kernel did not see Secure Boot on";
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
