// The health gate's side of the slot manager: is this boot a trial, commit
// it, or mark it bad. The machine it acts on (the EFI variable store, the
// appliance disk, the kernel command line) is injected: the real ones in
// ralph-health, fakes in tests.
#pragma once

#include <string>
#include <string_view>

#include "boot/slot_state.h"
#include "drivers/disk.h"
#include "platform/efi_vars.h"
#include "platform/result.h"

namespace ralph::health {

// The appliance disk as the gate uses it.
class GateDiskInterface {
 public:
  virtual ~GateDiskInterface() = default;
  // The disk the system runs from (the slot manager's Boot#### entries
  // point into it).
  virtual Result<DiskLayout> Discover() = 0;
  // Copies `slot`'s kernel image on the ESP to the removable-media path, so
  // a machine whose NVRAM is wiped still boots the committed slot.
  virtual Result<void> UpdateRemovablePath(const DiskLayout& disk, boot::Slot slot) = 0;
};

// The real disk: DiscoverApplianceDisk(), and the ESP mounted on /boot/efi
// for the copy.
class ApplianceDisk final : public GateDiskInterface {
 public:
  Result<DiskLayout> Discover() override;
  Result<void> UpdateRemovablePath(const DiskLayout& disk, boot::Slot slot) override;
};

// What the gate reads and writes the slot state through (borrowed).
struct GateSystem {
  EfiVarStoreInterface* vars = nullptr;
  GateDiskInterface* disk = nullptr;
  // /proc/cmdline (ralph.slot=), or why it could not be read: the slot
  // state steps fail with that.
  Result<std::string> kernel_cmdline = std::string();
};

struct SlotView {
  bool needs_commit = false;   // the booted slot is on trial, or nothing is committed yet
  bool any_committed = false;  // a slot is committed (a failed trial falls back to it)
  std::string summary;         // one line for the console ("A committed, B bad")
};

// kInvalidArgument for "recovery": a RECOVERY boot is not judged (the
// caller checks BootMode first).
Result<SlotView> ReadSlotView(const GateSystem& system, std::string_view booted_slot);
// Marks the booted slot good (committed), then updates the removable path.
Result<void> CommitSlot(const GateSystem& system, std::string_view booted_slot);
Result<void> MarkSlotBad(const GateSystem& system, std::string_view booted_slot);

}  // namespace ralph::health
