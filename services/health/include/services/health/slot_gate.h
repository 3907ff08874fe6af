// The health gate's side of the slot manager: is this boot a trial, commit
// it, or mark it bad.
#pragma once

#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::health {

struct SlotView {
  bool needs_commit = false;   // the booted slot is on trial, or nothing is committed yet
  bool any_committed = false;  // a slot is committed (a failed trial falls back to it)
  std::string summary;         // one line for the console ("A committed, B bad")
};

// kInvalidArgument for "recovery": a RECOVERY boot is not judged (the
// caller checks BootMode first).
Result<SlotView> ReadSlotView(std::string_view booted_slot);
Result<void> CommitSlot(std::string_view booted_slot);
Result<void> MarkSlotBad(std::string_view booted_slot);

}  // namespace ralph::health
