// PowerOff is the same on every arch (reboot(2) takes the same commands), so
// it lives here rather than in platform/arch/<arch>/.
#include <sys/reboot.h>
#include <unistd.h>

#include <cerrno>

#include "platform/arch.h"

namespace ralph::arch {

Result<void> PowerOff(PowerAction action) {
  // reboot(2) does not flush dirty pages; without sync() the last writes to
  // VAR could be lost.
  ::sync();
  int command = RB_AUTOBOOT;
  const char* name = "reboot(RB_AUTOBOOT)";
  switch (action) {
    case PowerAction::kReboot: break;
    case PowerAction::kPowerOff:
      command = RB_POWER_OFF;
      name = "reboot(RB_POWER_OFF)";
      break;
    case PowerAction::kHalt:
      command = RB_HALT_SYSTEM;
      name = "reboot(RB_HALT_SYSTEM)";
      break;
  }
  ::reboot(command);
  return Error::FromErrno(name, errno);
}

}  // namespace ralph::arch
