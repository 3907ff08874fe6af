// The slot manager's transitions as pure functions (deciding kept apart
// from doing, so every transition is unit-tested without firmware) from a decoded view of the
// firmware variables to a Plan — the new RalphSlotState and the ordered list of variable writes
// that gets there crash-safely. SlotManager (slot_manager.h) reads the view, calls one of these,
// and applies the plan.
//
// Crash-safety rule every plan follows:
// after any prefix of its writes the firmware boots a slot whose record says
// `good` (or the slot on trial, once, through BootNext; or RECOVERY when no
// slot is good; or, on a machine with no slot good yet, the factory image on
// the removable-media path). In practice: disarm BootNext before demoting
// what it points at; write the record before BootOrder promotes a slot;
// create a Boot#### before BootOrder or BootNext name it; arm BootNext only
// once the record says its slot is on trial, and before BootOrder (with no
// slot committed, BootOrder puts RECOVERY ahead of a slot on trial: a cut
// between the two must still try the slot, not strand it).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "boot/slot_state.h"
#include "platform/efi_vars.h"
#include "platform/load_option.h"
#include "platform/result.h"

namespace ralph::boot {

// systemd's loader vendor GUID (4a67b082-0a4c-41cf-b6c7-440b29bb8c4f). The
// EFI stub in every UKI (systemd-stub 252, Debian's systemd-boot-efi) sets
// two volatile variables under it on every boot when no boot loader did:
// LoaderImageIdentifier, the path of the file the firmware loaded
// ("\EFI\ralph\b.efi", UTF-16), and LoaderDevicePartUUID, the PARTUUID
// of the partition it was loaded from. A power cycle clears them.
extern const EfiGuid kLoaderVendorGuid;
inline constexpr std::string_view kLoaderImageIdentifierVariable = "LoaderImageIdentifier";
inline constexpr std::string_view kLoaderDevicePartUuidVariable = "LoaderDevicePartUUID";

// The ESP files our Boot#### entries start, and their descriptions.
std::string_view BootTargetFile(BootTarget target);         // "\EFI\ralph\a.efi"
std::string_view BootTargetDescription(BootTarget target);  // "RalphOS A"

enum class DowngradePolicy { kRefuse, kAllow };

// How a Boot#### relates to RalphOS.
enum class EntryKind {
  kOurs,     // HD(ESP)/File(\EFI\ralph\<target>.efi), active
  kForeign,  // anything else that decodes (firmware, another OS, another disk)
  kGarbled,  // not a valid EFI_LOAD_OPTION
};

struct BootEntry {
  uint16_t number = 0;
  std::vector<uint8_t> raw;
  EntryKind kind = EntryKind::kForeign;
  std::optional<BootTarget> target;  // kOurs only
  std::optional<LoadOption> option;  // unset when kGarbled
  // For kOurs: the entry is usable as is. False when it is inactive or its
  // HD() node is stale (same partition, other start/size): rewritten in place.
  bool canonical = true;
  // Why a foreign/garbled entry is not ours ("device path is not HD()/File()",
  // "File(\EFI\ralph\a.efi) on partition <uuid>, not the ESP <uuid>").
  std::string note;
};

// The variables the slot manager reads, decoded. Missing variables are unset.
struct FirmwareView {
  std::optional<std::vector<uint8_t>> record_raw;
  std::optional<SlotState> record;    // set when record_raw decodes
  std::optional<Error> record_error;  // set when record_raw is present but corrupt
  std::map<uint16_t, BootEntry> entries;
  std::optional<std::vector<uint8_t>> boot_order_raw;
  std::vector<uint16_t> boot_order;  // whole uint16s of boot_order_raw
  std::optional<std::vector<uint8_t>> boot_next_raw;
  std::optional<uint16_t> boot_next;  // unset when absent or malformed
  std::optional<uint16_t> boot_current;
  // The stub's LoaderImageIdentifier and LoaderDevicePartUUID as text
  // (UTF-16 up to the first NUL; characters outside ASCII become '?').
  std::optional<std::string> loader_image;
  std::optional<std::string> loader_partition;

  // Our usable entry for `target`: the first in BootOrder, else the lowest
  // number; nullptr when none.
  const BootEntry* Find(BootTarget target) const;
};

// Classifies one Boot#### against the ESP (unset: any HD()/File() to one of
// our file names counts as ours).
BootEntry ClassifyEntry(uint16_t number, std::vector<uint8_t> raw,
                        const std::optional<HardDriveNode>& esp);

// Builds the view from raw variables (pure; SlotManager reads them).
struct RawVariables {
  std::optional<std::vector<uint8_t>> record;
  std::map<uint16_t, std::vector<uint8_t>> entries;
  std::optional<std::vector<uint8_t>> boot_order;
  std::optional<std::vector<uint8_t>> boot_next;
  std::optional<std::vector<uint8_t>> boot_current;
  std::optional<std::vector<uint8_t>> loader_image;      // LoaderImageIdentifier
  std::optional<std::vector<uint8_t>> loader_partition;  // LoaderDevicePartUUID
};
FirmwareView DecodeFirmwareView(const RawVariables& raw, const std::optional<HardDriveNode>& esp);

// `ralph.slot=` from a kernel command line (last one wins, as for the
// kernel's own parameters). nullopt when absent; kInvalidArgument naming the
// value when it is not a, b or recovery.
Result<std::optional<BootTarget>> ParseKernelSlot(std::string_view cmdline);

// Which image is running, and so which slot's root early boot mounts. A
// slot's UKI is slot-agnostic (one bundle installs into either slot: its
// command line names no slot), so the answer comes from what the firmware
// and the stub record about this boot, in this order:
//   1. `ralph.slot=` on the kernel command line. Only RECOVERY's UKI
//      carries one (it is never a bundle payload); host tools and tests pass
//      one too. It wins: it was built into the image that is running.
//   2. LoaderImageIdentifier (the file the firmware loaded):
//      \EFI\ralph\{a,b,recovery}.efi names the image; the removable-media
//      path \EFI\BOOT\BOOTX64.EFI (BOOTAA64.EFI) is a copy of the committed
//      slot's image (RemovablePathSlot); any other file, or a
//      LoaderDevicePartUUID that is not this disk's ESP (`esp`, when known),
//      is not ours to tell: unknown.
//   3. BootCurrent naming one of our Boot#### entries (firmware or stubs that
//      leave no identifier).
//   4. BootCurrent naming a firmware entry for a device (OVMF's "UEFI Misc
//      Device"), for the removable-media file on this ESP, or a missing
//      entry: the removable-media path. An entry for another file or for a
//      file on another partition (a second RalphOS disk): unknown.
// No identifier and no BootCurrent: unknown. `how` explains the answer (or
// why there is none) in words for logs, errors and `status`.
struct BootedDetection {
  std::optional<BootTarget> target;
  std::string how;
};
BootedDetection DetectBooted(const FirmwareView& view, std::string_view cmdline,
                             const std::optional<HardDriveNode>& esp = std::nullopt);

// The slot the removable-media copy belongs to. ralph-health copies the
// committed slot's UKI there after every commit and ralph-mkimage puts slot
// A's there, so: the record's committed slot; with a record but no committed
// slot (a first boot on trial), the only slot that is good or on trial;
// with no usable record, the first of our slots in BootOrder (the
// firmware's notion of committed, as InitialSlotState); else slot A, the
// factory image. `how` says which rule decided.
struct RemovablePathOwner {
  Slot slot = Slot::kA;
  std::string how;
};
RemovablePathOwner RemovablePathSlot(const FirmwareView& view);

struct VarWrite {
  EfiGuid guid;
  std::string name;
  std::optional<std::vector<uint8_t>> data;  // unset: delete the variable
  std::string why;                           // "commit slot B"
};

// What happened on this boot, as OnBoot saw it.
enum class BootEvent {
  kNormal,         // the committed slot, nothing pending
  kTrial,          // a slot on trial; the health gate decides
  kRolledBack,     // the committed slot booted while the other was on
                   // trial: that trial failed and is now marked bad
  kRecovery,       // the RECOVERY image
  kUncommitted,    // a good slot that is not the committed one
  kUnhealthySlot,  // a slot marked bad, empty or being written
  kUnknown,        // the booted image could not be told
};
std::string_view BootEventName(BootEvent event);

struct Plan {
  SlotState record;  // the record after the plan
  std::vector<VarWrite> writes;
  // Problems found in the view and what the plan does about them, in words.
  std::vector<std::string> findings;
  BootEvent event = BootEvent::kNormal;  // PlanOnBoot only
  std::optional<Slot> rolled_back;       // PlanOnBoot, kRolledBack only
};

// Everything a plan depends on. `esp` unset: entries cannot be created.
struct PlanInput {
  const FirmwareView& view;
  std::optional<HardDriveNode> esp;
  std::optional<BootTarget> booted;
  std::string booted_how;  // DetectBooted().how, for error messages
};

// What the booted slot becomes when RalphSlotState is missing or corrupt and
// BootOrder names no committed slot (a machine out of the box).
enum class UnprovenBoot {
  // On trial for kFirstBootTries boots: nothing has judged it yet, so the
  // health gate commits it (MarkGood) or marks it bad, and a slot that never
  // comes up falls to RECOVERY instead of looping. OnBoot, every boot.
  kTrial,
  // Committed at once: an operator or installer running `ralphctl boot
  // repair` on a system that is up vouches for it, and no health gate
  // follows on this boot to commit a trial (the next boot would otherwise
  // start in RECOVERY). Repair.
  kCommit,
};
// Boots a factory slot gets on a fresh machine, this one included: a power
// cut or a hang during the first boot is retried (through BootNext) before
// the machine gives up on it and boots RECOVERY.
inline constexpr uint8_t kFirstBootTries = 3;

// The record a machine gets when RalphSlotState is missing (first boot) or
// corrupt. The committed slot is the first of ours in BootOrder when that is
// a slot (the firmware's own notion of committed); RECOVERY ahead of every
// slot means nothing is committed. It is `good`. A booted slot that is not
// that one is on trial: with one try when a slot is committed (it came up
// through BootNext), else as `unproven` says (kTrial: kFirstBootTries
// tries; kCommit: it becomes the committed slot). The other slot is
// `empty`: its content is unknown, so it is neither a fallback nor
// activatable until rewritten. The minimum version restarts at 0.0.0
// (anti-rollback is lost with the record).
SlotState InitialSlotState(const FirmwareView& view, std::optional<BootTarget> booted,
                           UnprovenBoot unproven);

// The BootOrder the record calls for: committed slot, the other slot if it
// is good or on trial, RECOVERY, then every foreign or garbled entry already
// in BootOrder in its order. Dangling numbers and duplicates of our entries
// are dropped. With no committed slot: good slots, RECOVERY, slots on trial.
std::vector<uint16_t> DesiredBootOrder(const FirmwareView& view, const SlotState& record);

// The verbs (see slot_manager.h for their contracts).
Result<Plan> PlanOnBoot(const PlanInput& in);
Result<Plan> PlanRepair(const PlanInput& in);
Result<Plan> PlanMarkGood(const PlanInput& in);
Result<Plan> PlanMarkBad(const PlanInput& in, Slot slot);
Result<Plan> PlanMarkActive(const PlanInput& in, Slot slot, uint8_t tries,
                            DowngradePolicy downgrade);
Result<Plan> PlanArmRecovery(const PlanInput& in);
Result<Plan> PlanBeginWrite(const PlanInput& in, Slot slot, const SlotVersion& version,
                            DowngradePolicy downgrade);
Result<Plan> PlanFinishWrite(const PlanInput& in, Slot slot, const SlotVersion& version,
                             const Sha256Digest& digest, uint8_t tries, DowngradePolicy downgrade);

}  // namespace ralph::boot
