#include "services/init/boot_state.h"

namespace ralph::init {

// Interim until boot/slot_manager.h lands on main (issue 2).
Result<void> EarlyBootState(std::string_view) {
  return Error::Make(ErrorCode::kUnsupported, "slot manager not in this build yet");
}
Result<void> OnBootState(std::string_view) {
  return Error::Make(ErrorCode::kUnsupported, "slot manager not in this build yet");
}

}  // namespace ralph::init
