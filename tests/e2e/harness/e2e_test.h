// Shared set-up of the e2e scenarios: each test works on its own copy of a
// disk and a VARS file in its own scratch directory, boots it with
// Machine, and talks to the guest through the test agent.
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "harness/machine.h"

namespace ralph::e2e {

inline constexpr std::chrono::seconds kBootTimeout{180};
inline constexpr std::chrono::seconds kAgentTimeout{60};

// Console markers printed by the image (early boot, PID 1, health gate).
inline std::string BootingSlot(std::string_view slot) {
  return "ralph-early-boot: booting slot " + std::string(slot) + " ";
}
// Printed after early boot; the agent answers requests sent before it.
inline constexpr const char* kAgentReady = "ralph-test-agent: listening";
inline std::string CommittedSlot(std::string_view slot) {
  return "health gate passed: slot " + std::string(slot) + " committed";
}
// The firmware's entry for the disk's removable-media path. Its number
// depends on the VARS template (OVMF_VARS_4M.snakeoil.fd holds entries of
// its own), so it is not part of the marker.
inline constexpr const char* kRemovablePath = "\"UEFI Misc Device\" from PciRoot";

enum class DiskSource {
  kFresh,        // the base image, VARS with keys and no boot entries (out of the box)
  kProvisioned,  // disk + VARS after a first boot that committed A
};

class E2eTest : public ::testing::Test {
 protected:
  void SetUp() override;

  // Copies the chosen disk and VARS into this test's scratch directory.
  void Prepare(DiskSource source);
  // A fresh machine (blank VARS) with the fixture image `name` as its disk.
  void PrepareImage(const std::string& name);
  // Copies `disk` and `vars` into this test's scratch directory.
  void CopyDiskAndVars(const std::string& disk, const std::string& vars);
  // "Installs" slot B of a variant image onto this test's disk (its ESP,
  // holding b.efi, and its SYSTEM_B), as the OTA writer would, and
  // remembers the digest of the new SYSTEM_B.
  void InstallSlotB(const std::string& variant_image);
  // In the booted guest: records the installed B the way the OTA writer
  // does (ralphctl boot begin-write / finish-write with its digest), then
  // `ralphctl boot mark-active B --tries <tries>`.
  void ActivateInstalledB(Machine& machine, int tries);
  // Boots this test's disk; each call logs to console-<n>.log. With
  // `network_` set, the machine has a NIC on QEMU user networking.
  Machine Boot();
  // Runs ralphctl in the guest; fails the test when it cannot be reached.
  Machine::AgentReply Ralphctl(Machine& machine, const std::vector<std::string>& args);
  // Asks the guest to reboot and waits for the next early boot of `slot`.
  void RebootInto(Machine& machine, std::string_view slot);
  // Description of the Boot#### entry that BootCurrent / BootOrder[0] names.
  std::string BootCurrentDescription(Machine& machine);
  std::string FirstInBootOrderDescription(Machine& machine);
  // Asks the guest to power off and waits for QEMU to exit.
  void PowerOff(Machine& machine);

  std::string Image(const std::string& name) const {
    return paths_.images_dir + "/" + name + ".img";
  }

  E2ePaths paths_;
  std::optional<ScratchDir> scratch_;
  std::string disk_;
  std::string vars_;
  int boots_ = 0;
  bool network_ = false;
  int memory_mib_ = 0;        // MachineOptions::memory_mib; 0: its default
  std::string cpu_;           // MachineOptions::cpu
  std::string network_cidr_;  // MachineOptions::user_network_cidr
  std::vector<MachineOptions::Forward> forwards_;
  std::string slot_b_digest_;
};

// EFI_LOAD_OPTION description (UTF-16LE after attributes and path length).
std::string LoadOptionDescription(const std::vector<uint8_t>& option);

}  // namespace ralph::e2e
