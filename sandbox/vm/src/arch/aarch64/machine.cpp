#include "machine.h"

namespace ralph::sandbox::vm {

// virt: the generic aarch64 machine; its virtio devices are virtio-mmio
// too, found through the device tree QEMU writes.
// The generic timer has a rate the guest reads from the device tree: no
// rate is given (tsc_khz is x86's).
MachineArgs MachineFor(Accel accel, uint32_t /*tsc_khz*/) {
  MachineArgs args;
  args.qemu_binary = "qemu-system-aarch64";
  args.machine =
      accel == Accel::kKvm ? "virt,accel=kvm,gic-version=host" : "virt,accel=tcg,gic-version=max";
  args.cpu = accel == Accel::kKvm ? "host" : "max";
  args.console = "ttyAMA0";
  return args;
}

uint32_t HostTscKhz() {
  return 0;
}

std::vector<std::string> VmmLibraryDirs() {
  return {"/usr/lib/aarch64-linux-gnu", "/usr/lib/ld-linux-aarch64.so.1"};
}

}  // namespace ralph::sandbox::vm
