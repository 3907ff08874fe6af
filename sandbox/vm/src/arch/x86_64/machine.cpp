#include "machine.h"

namespace ralph::sandbox::vm {

// microvm: no PCI, no firmware tables beyond what the kernel needs to find
// its virtio-mmio devices (ACPI, the default), no option ROMs; the ISA
// serial port stays for the console.
MachineArgs MachineFor(Accel accel) {
  MachineArgs args;
  args.qemu_binary = "qemu-system-x86_64";
  args.console = "ttyS0";
  if (accel == Accel::kKvm) {
    // kvmclock is the clock: no legacy PIT, PIC or RTC.
    args.machine = "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on";
    args.cpu = "host";
    return args;
  }
  // TCG emulates every CPU feature it can (the kernel needs only a baseline
  // x86_64). Its TSC runs at whatever rate the loaded host gives the
  // translator, so the kernel's calibration against the PIT fails on a
  // busy host and the delay-loop calibration that follows waits on a tick
  // that never comes (the boot hangs after "Marking TSC unstable"): the
  // TSC rate and the loops per jiffy are given instead of measured. The
  // guest's clock is only as right as TCG can make it either way.
  args.machine = "microvm,x-option-roms=off,isa-serial=on";
  args.cpu = "max";
  args.kernel_args = "tsc_early_khz=1000000 lpj=4000000 no_timer_check";
  return args;
}

std::vector<std::string> VmmLibraryDirs() {
  return {"/usr/lib/x86_64-linux-gnu", "/usr/lib64"};
}

}  // namespace ralph::sandbox::vm
