// The health gate's side of the slot manager: is this boot a trial, commit
// it, or mark it bad.
#pragma once

#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::health {

struct SlotView {
  bool needs_commit = false;  // the booted slot is on trial, or nothing is committed yet
  std::string summary;        // one line for the console ("A committed, B bad")
};

Result<SlotView> ReadSlotView(std::string_view booted_slot);
Result<void> CommitSlot(std::string_view booted_slot);
Result<void> MarkSlotBad(std::string_view booted_slot);

}  // namespace ralph::health
