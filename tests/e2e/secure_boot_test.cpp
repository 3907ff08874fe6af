// UEFI Secure Boot (the harness's firmware enforces it: OVMF's Secure Boot
// build with the snakeoil key enrolled, the images signed with it). The
// committed slot's UKI changed by one byte on the ESP is refused by the
// firmware, which goes on to the next entry in BootOrder (RECOVERY, while
// B is empty); the changed image never runs. The same for the image with
// its signature removed.
#include <fmt/format.h>

#include <fstream>

#include "harness/e2e_test.h"
#include "tests/support/run_program.h"

namespace ralph::e2e {
namespace {

constexpr const char* kRecoveryBanner = "RalphOS RECOVERY mode";

TEST_F(E2eTest, UkiChangedByOneByteIsRefusedAndTheNextEntryBoots) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  // The byte that matters most to an attacker: one of the kernel command
  // line inside the signed image ("console=" becomes "consolf=").
  auto image = ReadEspFile(disk_, "/EFI/ralph/a.efi");
  ASSERT_TRUE(image) << image.error().ToString();
  const std::string cmdline = "ro panic=5 console=";
  size_t at = image->find(cmdline);
  ASSERT_NE(at, std::string::npos) << "a.efi has no command line '" << cmdline << "'";
  ASSERT_EQ(image->find(cmdline, at + 1), std::string::npos) << "two command lines in a.efi";
  std::string changed = *image;
  size_t flip = at + cmdline.size() - 2;  // the 'e' of "console="
  changed[flip] = static_cast<char>(changed[flip] + 1);
  std::string changed_path = scratch_->path() + "/a-changed.efi";
  {
    std::ofstream out(changed_path, std::ios::binary);
    out.write(changed.data(), static_cast<std::streamsize>(changed.size()));
    ASSERT_TRUE(out.good()) << "writing " << changed_path;
  }
  auto written = WriteEspFile(disk_, "/EFI/ralph/a.efi", changed_path);
  ASSERT_TRUE(written) << written.error().ToString();

  Machine machine = Boot();
  // OVMF's boot manager: A's entry fails to load (the image's hash matches
  // no signature in db), then RECOVERY's entry starts.
  auto refused = machine.WaitFor("\"RalphOS A\"", kBootTimeout);
  ASSERT_TRUE(refused) << refused.error().ToString();
  auto denied = machine.WaitFor("Access Denied", kBootTimeout);
  ASSERT_TRUE(denied) << denied.error().ToString();
  for (std::string marker : {std::string(BootingSlot("RECOVERY")), std::string(kRecoveryBanner),
                             std::string("committed slot: A")}) {
    auto seen = machine.WaitFor(marker, kBootTimeout);
    ASSERT_TRUE(seen) << seen.error().ToString();
  }
  auto agent = machine.WaitFor(kAgentReady, kBootTimeout);
  ASSERT_TRUE(agent) << agent.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS RECOVERY");
  EXPECT_EQ(machine.Count(BootingSlot("A")), 0u) << "the changed image of A ran";
  EXPECT_EQ(machine.Count("BdsDxe: starting Boot"), 1u)
      << "the firmware started more than RECOVERY's entry:\n"
      << machine.Console().substr(0, 4000);

  // Secure Boot is enforced in this machine, as the guest sees it.
  auto secure_boot = ReadGuestEfiVar(machine, fmt::format("SecureBoot-{}", kEfiGlobal));
  ASSERT_TRUE(secure_boot) << secure_boot.error().ToString();
  EXPECT_EQ(*secure_boot, std::vector<uint8_t>{1});
  auto setup_mode = ReadGuestEfiVar(machine, fmt::format("SetupMode-{}", kEfiGlobal));
  ASSERT_TRUE(setup_mode) << setup_mode.error().ToString();
  EXPECT_EQ(*setup_mode, std::vector<uint8_t>{0});
  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));

  // The same image without its signature (sbattach --remove): refused too.
  std::string original_path = scratch_->path() + "/a-original.efi";
  {
    std::ofstream out(original_path, std::ios::binary);
    out.write(image->data(), static_cast<std::streamsize>(image->size()));
    ASSERT_TRUE(out.good()) << "writing " << original_path;
  }
  auto stripped = testing::RunProgram({"sbattach", "--remove", original_path});
  ASSERT_EQ(stripped.exit, 0) << stripped.output;
  auto unsigned_check = testing::RunProgram({"sbverify", "--list", original_path});
  EXPECT_NE(unsigned_check.output.find("No signature table present"), std::string::npos)
      << unsigned_check.output;
  written = WriteEspFile(disk_, "/EFI/ralph/a.efi", original_path);
  ASSERT_TRUE(written) << written.error().ToString();
  Machine second = Boot();
  denied = second.WaitFor("Access Denied", kBootTimeout);
  ASSERT_TRUE(denied) << denied.error().ToString();
  auto recovery = second.WaitFor(kRecoveryBanner, kBootTimeout);
  ASSERT_TRUE(recovery) << recovery.error().ToString();
  EXPECT_EQ(second.Count(BootingSlot("A")), 0u) << "the unsigned image of A ran";
}

}  // namespace
}  // namespace ralph::e2e
