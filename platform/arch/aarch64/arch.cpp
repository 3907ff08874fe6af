// aarch64 implementation of platform/arch.h, chosen by CMake (RALPH_ARCH).
#include "platform/arch.h"

#include <linux/audit.h>

namespace ralph::arch {

std::string_view Name() {
  return "aarch64";
}
// UEFI spec 2.10, 3.5.1.1 "Removable Media Boot Behavior".
std::string_view RemovableBootFileName() {
  return "BOOTAA64.EFI";
}
// Shipped by Debian's systemd-boot-efi under /usr/lib/systemd/boot/efi/.
std::string_view EfiStubFileName() {
  return "linuxaa64.efi.stub";
}
std::string_view SerialConsole() {
  return "ttyAMA0";
}
uint32_t SeccompAuditArch() {
  return AUDIT_ARCH_AARCH64;
}

}  // namespace ralph::arch
