// The outcome of the last installed update, kept on VAR so that whichever
// slot boots afterwards can say what became of it: an update whose trial
// failed is reported by the slot the system rolled back to, from this record
// and not only from the EFI slot state (which a later install rewrites).
//
//   `ralphctl update install` (success)  -> record {version, target, from, pending-trial}
//   every boot (`ralphctl update reconcile`, an init oneshot) and
//   `ralphctl update status`              -> SettleOutcome over the slot state:
//        target slot good and committed   -> committed
//        target slot marked bad            -> rolled-back (to the committed slot)
//        otherwise (still on trial)        -> unchanged
//
// Library code: returns errors, logs nothing.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "boot/slot_state.h"
#include "platform/result.h"

namespace ralph::ota {

inline constexpr std::string_view kDefaultUpdateRecordPath = "/var/lib/ralph/ota/last-update.json";

enum class UpdateOutcome { kPendingTrial, kCommitted, kRolledBack };
// "pending-trial", "committed", "rolled-back".
std::string_view UpdateOutcomeName(UpdateOutcome outcome);

struct UpdateRecord {
  std::string version;  // "0.2.0", as in the bundle manifest
  boot::Slot target = boot::Slot::kB;
  boot::Slot from = boot::Slot::kA;  // the committed slot it was installed from
  std::string source;                // file path or URL
  UpdateOutcome outcome = UpdateOutcome::kPendingTrial;
  // One sentence for people: "the update to version 0.3.0 in slot B failed
  // its trial (slot B is marked bad); the system rolled back to slot A".
  std::string summary;
  friend bool operator==(const UpdateRecord&, const UpdateRecord&) = default;
};

// The record as installed: pending, with its summary.
UpdateRecord PendingUpdate(std::string version, boot::Slot target, std::string source);

// JSON object {"version","target","from","source","outcome","summary"}.
std::string UpdateRecordToJson(const UpdateRecord& record);
// Strict: every field present with its type, known slot and outcome names,
// nothing else; kCorrupt naming the field otherwise.
Result<UpdateRecord> UpdateRecordFromJson(std::string_view text);

// kNotFound when there is no record (no update installed on this VAR).
Result<UpdateRecord> ReadUpdateRecord(const std::string& path);
// Creates the directory when missing; writes a temporary file, fsyncs it and
// renames it over `path` (then fsyncs the directory), so a power cut leaves
// the old record or the new one.
Result<void> WriteUpdateRecord(const std::string& path, const UpdateRecord& record);

// Pure: the record with its outcome settled by the slot state, or nullopt
// when nothing changes (already settled, still on trial, or the target slot
// no longer holds this version).
std::optional<UpdateRecord> SettleOutcome(const UpdateRecord& record, const boot::SlotState& state);

}  // namespace ralph::ota
