#include "machine.h"

namespace ralph::sandbox::vm {

// virt: the generic aarch64 machine; its virtio devices are virtio-mmio
// too, found through the device tree QEMU writes.
MachineArgs MachineFor(Accel accel) {
  MachineArgs args;
  args.qemu_binary = "qemu-system-aarch64";
  args.machine =
      accel == Accel::kKvm ? "virt,accel=kvm,gic-version=host" : "virt,accel=tcg,gic-version=max";
  args.cpu = accel == Accel::kKvm ? "host" : "max";
  args.console = "ttyAMA0";
  return args;
}

std::vector<std::string> VmmLibraryDirs() {
  return {"/usr/lib/aarch64-linux-gnu", "/usr/lib/ld-linux-aarch64.so.1"};
}

}  // namespace ralph::sandbox::vm
