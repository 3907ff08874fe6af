// The console banner of a RECOVERY boot: what mode this is and the boot
// state a rescuer needs first (which slot is committed, which are bad).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "boot/slot_state.h"

namespace ralph::init {

// The banner's lines. `record` is RalphSlotState as read on this boot,
// unset when it is missing or unreadable; `problem` then says why
// ("RalphSlotState is missing", the decode error, or the read error).
std::vector<std::string> RecoveryBanner(const std::optional<boot::SlotState>& record,
                                        const std::string& problem);

}  // namespace ralph::init
