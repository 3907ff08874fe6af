// Architecture differences behind one neutral header.
// One implementation per arch in platform/arch/<arch>/, chosen by CMake;
// callers never #ifdef.
#pragma once

#include <cstdint>
#include <string_view>

#include "platform/result.h"

namespace ralph::arch {

// "x86_64" / "aarch64" (as in bundle manifests and `uname -m`).
std::string_view Name();
// "BOOTX64.EFI" / "BOOTAA64.EFI": the removable-media file under \EFI\BOOT\.
std::string_view RemovableBootFileName();
// "linuxx64.efi.stub" / "linuxaa64.efi.stub" from systemd-boot-efi.
std::string_view EfiStubFileName();
// "ttyS0" / "ttyAMA0": the serial console QEMU and most boards expose.
std::string_view SerialConsole();
// The AUDIT_ARCH_* value seccomp filters check (AUDIT_ARCH_X86_64,
// AUDIT_ARCH_AARCH64); equal to libseccomp's SCMP_ARCH_* token.
uint32_t SeccompAuditArch();

enum class PowerAction { kReboot, kPowerOff, kHalt };
// sync()s, then reboot(2). Returns only on failure.
Result<void> PowerOff(PowerAction action);

}  // namespace ralph::arch
