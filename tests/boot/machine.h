// Test helpers: a simulated machine (fake NVRAM + firmware model + the
// kernel command line of whatever booted) and the boot-safety check the
// fault and crash-consistency tests share.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <optional>
#include <string>

#include "boot/slot_manager.h"
#include "boot/testing/firmware_model.h"
#include "drivers/disk.h"
#include "platform/testing/fake_efi_vars.h"

namespace ralph::boot {

// The test disk: EFI (1), SYSTEM_A (2), SYSTEM_B (3), VAR (4), RECOVERY (5).
DiskLayout TestLayout();
HardDriveNode TestEsp();
Sha256Digest TestDigest(uint8_t seed);

// What is really on the slots, independent of the record: a slot's image is
// intact unless the OTA writer has started overwriting it.
struct Truth {
  std::array<bool, 2> intact{true, true};
  bool& operator[](Slot slot) { return intact[slot == Slot::kA ? 0 : 1]; }
  bool operator[](Slot slot) const { return intact[slot == Slot::kA ? 0 : 1]; }
};

class Machine {
 public:
  Machine() : firmware_(EspContents::Full(TestEsp())) {}

  FakeEfiVarStore& vars() { return vars_; }
  FirmwareModel& firmware() { return firmware_; }
  const std::optional<FirmwareBoot>& booted() const { return booted_; }

  // The firmware's part of a boot; counters are reset afterwards so they
  // count only what the slot manager writes.
  FirmwareBoot PowerOn();
  // A manager for the current boot (the booted image's command line).
  SlotManager Manager(std::optional<DiskLayout> layout = TestLayout());
  // PowerOn + OnBoot.
  BootReport Boot();
  // A fresh machine booted from the removable path into A, provisioned by
  // OnBoot (A on trial) and committed by the health gate (MarkGood): A
  // committed and good, version unknown 0.0.0, B empty.
  static Machine Provisioned();
  // Provisioned, then B written with `version` and tried (`tries`), not
  // yet rebooted.
  static Machine WithTrialPending(uint8_t tries = 1, SlotVersion version = {1, 1, 0});

  // The record now in NVRAM (fails the test when it does not decode).
  SlotState Record();

 private:
  FakeEfiVarStore vars_;
  FirmwareModel firmware_;
  std::optional<FirmwareBoot> booted_;
};

// After a power cut with NVRAM `contents`: the next power-on boots a slot
// whose image is intact and that `before` or `after` (the records around the
// operation; `after` may be unset) calls good — or the slot on trial,
// through BootNext — or RECOVERY through BootNext or when no slot was good
// before — or, when neither record calls any slot good (a machine out of
// the box), the factory image on the removable-media path; and the power-on
// after that (the first boot died before doing anything) boots an intact
// good slot, or RECOVERY when none was good before (a slot on trial whose
// try the first power-on took through BootNext not counted), or that factory
// image when none is good at all. `retiring`: a slot the operation demotes on
// purpose (mark-bad of the booted slot) is no fallback: RECOVERY is right
// when no other slot was good; until BootOrder follows the record it may
// still boot as before.
::testing::AssertionResult BootsSafely(const FakeEfiVarStore::Contents& contents,
                                       const EspContents& esp, const SlotState& before,
                                       const std::optional<SlotState>& after, const Truth& truth,
                                       std::optional<Slot> retiring = std::nullopt);

// The record in `contents`, if it decodes.
std::optional<SlotState> RecordIn(const FakeEfiVarStore::Contents& contents);

}  // namespace ralph::boot
