// The slot manager's part in each boot, called from early boot and PID 1.
#pragma once

#include <string_view>

#include "platform/result.h"

namespace ralph::init {

// Early boot, efivarfs mounted: the trial bookkeeping of this boot
// (SlotManager::OnBoot: consumes a try of a trial slot, re-arms BootNext
// while tries remain).
Result<void> EarlyBootState(std::string_view slot);

// PID 1: validates and repairs the Boot#### entries and BootOrder; on a
// fresh machine this creates the entries for A, B and RECOVERY.
Result<void> OnBootState(std::string_view slot);

}  // namespace ralph::init
