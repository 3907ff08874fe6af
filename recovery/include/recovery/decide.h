// The rescue environment's decisions (docs/architecture.md "Recovery"): what
// is wrong with the appliance, and what to do about it, as pure functions
// over plain structs. recovery/rescue.h gathers the facts from the firmware
// and the disk and applies the actions; nothing here touches either.
//
// Automatic action is taken only when the situation is clear:
//   - no usable slot and a factory bundle that verifies and is not below the
//     anti-rollback minimum: restore slot A from it and reboot into A;
//   - VAR unusable (no filesystem e2fsck can check): recreate it, keeping
//     nothing (nothing can be kept from a filesystem that cannot be read);
//   - boot entries that need repair: repair them.
// Anything else (a usable slot, VAR with errors that a reset would lose
// data over, a factory bundle that does not verify) waits for the operator,
// with the reason in words.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "boot/slot_state.h"
#include "platform/result.h"
#include "platform/version.h"

namespace ralph::recovery {

// What a slot partition holds, checked against the slot manager's record.
enum class SlotContent {
  kMatches,     // its SHA-256 over the image equals the recorded digest
  kUnverified,  // a squashfs image, but no digest is recorded (a factory slot)
  kMismatch,    // an image whose SHA-256 is not the recorded digest
  kNotAnImage,  // no squashfs superblock (garbage, erased, truncated)
  kUnreadable,  // the partition cannot be read (I/O error, missing)
};
// "matches its recorded digest", "unverified (no digest recorded)", ...
std::string_view SlotContentName(SlotContent content);

struct SlotFacts {
  boot::Slot slot = boot::Slot::kA;
  // The slot's entry of RalphSlotState; unset when the record is missing or
  // corrupt.
  std::optional<boot::SlotRecord> record;
  SlotContent content = SlotContent::kUnreadable;
  std::string detail;  // what was read ("digest 3f2a..., recorded 99b0...")
};

// VAR as `e2fsck -n` (read-only: it changes nothing) sees it.
enum class VarHealth {
  kClean,     // exit status 0
  kErrors,    // exit status 4: errors a repair or a reset would deal with
  kUnusable,  // exit status 8 alone: no ext4 filesystem e2fsck can read
  kMissing,   // no partition labelled VAR
};
std::string_view VarHealthName(VarHealth health);
// Maps e2fsck -n's exit status (e2fsck(8), a bit mask: 1/2 corrected (not
// with -n), 4 uncorrected errors, 8 operational error, 16 usage, 32
// cancelled, 128 library error) to VarHealth: 0 clean; exactly 8 (no
// filesystem it can read) unusable; anything else errors.
VarHealth InterpretCheckOnly(int exit_status);

struct VarFacts {
  VarHealth health = VarHealth::kMissing;
  std::string detail;
};

// The signed bundle recovery would restore from.
enum class BundleHealth {
  kValid,         // signature verified, a system bundle for this device
  kMissing,       // no file at the path
  kInvalid,       // unreadable, corrupt, or its signature does not verify
  kIncompatible,  // another product or architecture, or not a system bundle
};
std::string_view BundleHealthName(BundleHealth health);

struct BundleFacts {
  std::string path;
  BundleHealth health = BundleHealth::kMissing;
  Version version;  // kValid only
  Sha256Digest rootfs_sha256{};
  uint64_t rootfs_size = 0;
  std::string detail;  // the error, or the signer
};

struct EntryFacts {
  // What SlotManager::Status says a repair would change, in words; empty
  // when the Boot#### entries and BootOrder are in order.
  std::vector<std::string> needs_repair;
};

// How this RECOVERY boot was reached, as far as can be told.
enum class EntryPath {
  kUnknown,       // the firmware's boot menu, an operator's BootNext, ...
  kNoGoodSlot,    // BootOrder fell through: no slot is committed
  kBootFailures,  // the boot-failure counter tripped (boot/boot_failures.h)
};
std::string_view EntryPathName(EntryPath path);

struct Diagnosis {
  // RalphSlotState as read; unset with `record_problem` saying why.
  std::optional<boot::SlotState> record;
  std::string record_problem;
  SlotFacts a{boot::Slot::kA};
  SlotFacts b{boot::Slot::kB};
  EntryFacts entries;
  VarFacts var;
  BundleFacts factory;
  EntryPath entry = EntryPath::kUnknown;
  std::string entry_detail;  // kBootFailures: early boot's note

  const SlotFacts& slot(boot::Slot s) const { return s == boot::Slot::kA ? a : b; }
};

// A slot the firmware may be sent to: good in the record, and its content
// either matches the recorded digest or is an image with none recorded.
bool SlotUsable(const Diagnosis& diagnosis, boot::Slot slot);
// The slot to reboot into: the committed one when usable, else any usable
// good slot (A first); unset when none.
std::optional<boot::Slot> BootableSlot(const Diagnosis& diagnosis);

// Whether `bundle` may be written into a slot: valid and not below the
// record's anti-rollback minimum. kRefused / kNotFound / kVerificationFailed
// naming the reason otherwise.
Result<void> BundleRestorable(const Diagnosis& diagnosis, const BundleFacts& bundle);

enum class ActionKind {
  kRepairEntries,  // SlotManager's RECOVERY boot repair of Boot####/BootOrder
  kResetVar,       // recreate VAR's filesystem, keeping nothing
  kRestoreSlot,    // write `slot` from `bundle` through the OTA writer
  kReboot,         // into `slot` (BootNext)
};
std::string_view ActionKindName(ActionKind kind);

struct Action {
  ActionKind kind = ActionKind::kRepairEntries;
  std::optional<boot::Slot> slot;  // kRestoreSlot, kReboot
  std::string bundle;              // kRestoreSlot: the bundle's path
  std::string why;
  friend bool operator==(const Action&, const Action&) = default;
};

struct Decision {
  // In order; empty when nothing is done automatically.
  std::vector<Action> actions;
  // Set when the operator must decide (with what to tell them); the actions
  // before it (entry repair, a VAR reset) are still taken.
  std::optional<std::string> wait_for_operator;
};

// The automatic plan for `diagnosis` (see the top of this file).
Decision Decide(const Diagnosis& diagnosis);

// The diagnosis as console lines, for the operator.
std::vector<std::string> DescribeDiagnosis(const Diagnosis& diagnosis);

// The serial-console menu's commands. Parsing is strict and bounded: a
// line longer than kMaxMenuLine, a control character, an unknown word or a
// bad argument is refused with kInvalidArgument naming what was wrong, and
// the menu asks again.
enum class MenuVerb {
  kHelp,        // help | ?
  kStatus,      // status
  kRestore,     // restore a|b [BUNDLE]
  kRepairBoot,  // repair-boot
  kResetVar,    // reset-var (then asks for the confirmation word)
  kExportLogs,  // export-logs DEVICE
  kReboot,      // reboot [a|b]
  kAuto,        // auto: the automatic plan, as at start
};
struct MenuCommand {
  MenuVerb verb = MenuVerb::kHelp;
  std::optional<boot::Slot> slot;
  std::string argument;  // the bundle (restore) or device (export-logs)
  friend bool operator==(const MenuCommand&, const MenuCommand&) = default;
};
inline constexpr size_t kMaxMenuLine = 256;
// The word reset-var asks the operator to type.
inline constexpr std::string_view kResetConfirmation = "ERASE";
// An empty (or all-blank) line is kNotFound: nothing to do.
Result<MenuCommand> ParseMenuLine(std::string_view line);
std::vector<std::string> MenuHelp();

}  // namespace ralph::recovery
