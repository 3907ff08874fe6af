// x86_64 implementation of platform/arch.h, chosen by CMake (RALPH_ARCH).
#include "platform/arch.h"

#include <linux/audit.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <cerrno>

namespace ralph::arch {

std::string_view Name() {
  return "x86_64";
}
// UEFI spec 2.10, 3.5.1.1 "Removable Media Boot Behavior".
std::string_view RemovableBootFileName() {
  return "BOOTX64.EFI";
}
// Shipped by Debian's systemd-boot-efi under /usr/lib/systemd/boot/efi/.
std::string_view EfiStubFileName() {
  return "linuxx64.efi.stub";
}
std::string_view SerialConsole() {
  return "ttyS0";
}
uint32_t SeccompAuditArch() {
  return AUDIT_ARCH_X86_64;
}

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
