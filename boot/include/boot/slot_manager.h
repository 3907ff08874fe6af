// SlotManager: A/B try / commit / mark-bad / fallback / recovery over EFI
// variables (docs/architecture.md "Boot: try and commit with EFI
// variables"). The firmware is the boot selector:
//   commit = the committed slot first in BootOrder (the other slot after it
//            while it is good or on trial, RECOVERY last, foreign entries
//            after ours);
//   try    = BootNext at the slot on trial (the firmware deletes BootNext
//            before loading it, so a crash falls back by itself);
//   state  = RalphSlotState (boot/slot_state.h), written only on transitions.
//
// Every verb reads the variables, computes a Plan with the pure functions in
// boot/slot_plan.h, and applies it: each write is compared with what the
// store holds first and skipped when equal, and the writes go in an order
// that keeps the firmware booting a good slot after any prefix of them (a
// power cut, or a failed write: a verb stops at the first failed write and
// returns its error). A steady-state healthy boot (OnBoot on the committed
// slot, nothing pending, nothing broken) writes no variable at all.
//
// Threading: none; one SlotManager per process, callers serialise.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "boot/slot_plan.h"
#include "boot/slot_state.h"
#include "drivers/disk.h"
#include "platform/efi_vars.h"
#include "platform/result.h"

namespace ralph::boot {

// What a verb did.
struct Outcome {
  // Problems found and what was done about them, in words (also when
  // nothing had to be written).
  std::vector<std::string> findings;
  // The variables written, in order ("RalphSlotState", "BootOrder",
  // "-BootNext" for a delete); equal writes skipped.
  std::vector<std::string> written;
  SlotState record;  // the record afterwards
};

struct BootReport : Outcome {
  BootEvent event = BootEvent::kUnknown;
  std::optional<BootTarget> booted;
  std::string booted_how;           // DetectBooted().how
  std::optional<Slot> rolled_back;  // kRolledBack: the slot whose trial failed
};

// A read-only snapshot for `ralphctl boot status`.
struct StatusReport {
  FirmwareView view;
  BootedDetection booted;
  std::optional<HardDriveNode> esp;
  std::string disk;  // the probed disk, empty when none
  // What Repair would change, in words; empty when all is in order.
  std::vector<std::string> needs_repair;
  std::vector<std::string> repair_writes;
};

class SlotManager {
 public:
  // `vars` is borrowed and must outlive the manager. `layout` is the
  // appliance disk (drivers/disk.h); when unset, entries can be checked but
  // not (re)created. `kernel_cmdline` is /proc/cmdline's text (injected for
  // tests), read for ralph.slot= (DetectBooted: how the booted image is
  // told, with the stub's LoaderImageIdentifier and BootCurrent). kNotFound naming the label when
  // the layout lacks an EFI, SYSTEM_A, SYSTEM_B or RECOVERY partition.
  static Result<SlotManager> Create(EfiVarStoreInterface& vars, std::optional<DiskLayout> layout,
                                    std::string kernel_cmdline);

  // Reads everything; writes nothing. Fails only when a variable cannot be
  // read (a corrupt record is reported in view.record_error).
  Result<StatusReport> Status();

  // Called early on every boot (early boot, before the health gate):
  // re-initialises a missing or corrupt record keeping the booted slot
  // bootable; repairs Boot#### entries, BootOrder and a stray BootNext; on a
  // trial boot with tries left after this one, counts it and re-arms
  // BootNext; when the committed slot boots while the other is still on
  // trial, records that trial as failed (slot bad, event kRolledBack).
  // On a fresh machine (no record, none of our slots in BootOrder) this is
  // the provisioning step: entries for A, B and RECOVERY are created and
  // the booted slot goes on trial for kFirstBootTries boots, with nothing
  // committed (BootOrder: RECOVERY, then the slot); the health gate's
  // MarkGood commits it, or its MarkBad sends the machine to RECOVERY.
  // A RECOVERY boot (event kRecovery) is no slot boot: the record is not
  // written (not even initialised when missing) and no trial is counted or
  // judged; only entries and BootOrder are repaired to what it says.
  Result<BootReport> OnBoot();

  // Commits the booted slot when it is on trial: state good, committed,
  // first in BootOrder, minimum version raised to its version, its BootNext
  // cleared. The health gate calls it on every healthy boot: on the
  // committed slot it writes nothing; on a good slot that is not the
  // committed one (a fallback boot) it changes nothing and says so in the
  // findings (switching goes through MarkActive); with no committed slot a
  // good or trial booted slot becomes committed (a first boot's commit,
  // first in BootOrder ahead of RECOVERY). kInvalidState when the booted slot
  // is bad, empty or being written, or when the booted image cannot be told
  // or is RECOVERY.
  Result<Outcome> MarkGood();
  // Marks `slot` bad: disarms a BootNext to it, drops it from BootOrder.
  // kRefused for the committed slot.
  Result<Outcome> MarkBad(Slot slot);
  // MarkBad(the booted slot).
  Result<Outcome> MarkBadBooted();
  // Tries a slot holding a complete image (good, bad or on trial) on the
  // next boot, for `tries` boots (1..15): state trial, Boot#### ensured,
  // BootOrder, BootNext. kInvalidState for the committed slot or an empty /
  // being-written one; kRefused below the minimum version unless
  // DowngradePolicy::kAllow.
  Result<Outcome> MarkActive(Slot slot, uint8_t tries = 1,
                             DowngradePolicy downgrade = DowngradePolicy::kRefuse);
  // BootNext = RECOVERY (its Boot#### created when missing).
  Result<Outcome> ArmRecovery();
  // Recreates missing/stale Boot#### for A, B and RECOVERY (HD()/File() from
  // the disk layout), fixes BootOrder and a stray BootNext, re-initialises a
  // missing or corrupt record. Run by hand on a system that is up: on a
  // fresh machine the booted slot becomes the committed, good one at once
  // (UnprovenBoot::kCommit — the operator vouches for it; the boot path
  // never calls Repair, it provisions through OnBoot and the health gate).
  Result<Outcome> Repair();

  // For the OTA slot writer, before the first byte of `slot` is written:
  // state writing (version recorded, digest cleared), out of BootOrder, a
  // BootNext to it disarmed. kRefused when `slot` is booted, when the booted
  // slot is not committed (RECOVERY may write either slot), when the booted
  // image cannot be told, or when `version` is below the minimum unless
  // DowngradePolicy::kAllow.
  Result<Outcome> BeginWrite(Slot slot, const SlotVersion& version,
                             DowngradePolicy downgrade = DowngradePolicy::kRefuse);
  // After the slot's rootfs, kernel and ESP image are written and verified:
  // digest recorded, state trial with `tries`, Boot#### ensured, BootOrder,
  // BootNext — the next boot tries it. kInvalidState unless BeginWrite ran
  // for this slot; kInvalidArgument when `version` differs from BeginWrite's.
  Result<Outcome> FinishWrite(Slot slot, const SlotVersion& version, const Sha256Digest& digest,
                              uint8_t tries = 1,
                              DowngradePolicy downgrade = DowngradePolicy::kRefuse);

  const std::optional<HardDriveNode>& esp() const { return esp_; }

 private:
  SlotManager(EfiVarStoreInterface& vars, std::optional<DiskLayout> layout,
              std::optional<HardDriveNode> esp, std::string kernel_cmdline)
      : vars_(&vars),
        layout_(std::move(layout)),
        esp_(esp),
        kernel_cmdline_(std::move(kernel_cmdline)) {}

  Result<FirmwareView> ReadView();
  PlanInput MakeInput(const FirmwareView& view, const BootedDetection& booted) const;
  // Reads, plans with `planner`, applies.
  template <typename Planner>
  Result<Outcome> Run(Planner&& planner);

  EfiVarStoreInterface* vars_;
  std::optional<DiskLayout> layout_;
  std::optional<HardDriveNode> esp_;
  std::string kernel_cmdline_;
};

// The apply step: performs `writes` in order, reading each variable first
// and skipping the write when the store already holds those bytes (or the
// variable is already absent for a delete). Stops at the first failure with
// "<name> (<why>): <error>". Returns the names written.
Result<std::vector<std::string>> ApplyWrites(EfiVarStoreInterface& vars,
                                             const std::vector<VarWrite>& writes);

// Reads the variables a FirmwareView is made of.
Result<RawVariables> ReadRawVariables(EfiVarStoreInterface& vars);

}  // namespace ralph::boot
