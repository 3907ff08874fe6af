#include "services/health/slot_gate.h"

namespace ralph::health {

// Interim until boot/slot_manager.h lands on main (issue 2).
Result<SlotView> ReadSlotView(std::string_view) {
  return Error::Make(ErrorCode::kUnsupported, "slot manager not in this build yet");
}
Result<void> CommitSlot(std::string_view) {
  return Error::Make(ErrorCode::kUnsupported, "slot manager not in this build yet");
}
Result<void> MarkSlotBad(std::string_view) {
  return Error::Make(ErrorCode::kUnsupported, "slot manager not in this build yet");
}

}  // namespace ralph::health
