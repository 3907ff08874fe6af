// What differs between QEMU's machines per architecture, behind one neutral
// header (one implementation per arch in src/arch/<arch>/machine.cpp,
// picked by CMake).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sandbox/vm/vm_spec.h"

namespace ralph::sandbox::vm {

struct MachineArgs {
  std::string qemu_binary;  // "qemu-system-x86_64"
  std::string machine;      // the -machine value
  std::string cpu;          // the -cpu value
  std::string console;      // the guest's serial console ("ttyS0")
  std::string kernel_args;  // what this machine and accelerator need of the kernel
};

MachineArgs MachineFor(Accel accel, uint32_t tsc_khz = 0);

// The host directories holding QEMU's shared objects and its loader,
// bound read-only into its jail.
std::vector<std::string> VmmLibraryDirs();

}  // namespace ralph::sandbox::vm
