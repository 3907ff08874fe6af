// VmSpec: one guest of the VM isolation level as a plain struct, and the
// QEMU command line that runs it (a pure function: unit-tested without
// QEMU). The machine is QEMU's `microvm` on x86_64 and `virt` on aarch64
// (src/arch/<arch>/machine.cpp); every device is virtio-mmio, so the guest
// kernel needs no PCI bus, firmware or option ROM.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::sandbox::vm {

enum class Accel {
  kKvm,  // hardware virtualisation (/dev/kvm, probed: see kvm_probe.h)
  kTcg,  // QEMU's translator: slower, works everywhere
};

enum class DiskAccess { kReadOnly, kReadWrite };

// A raw disk image the guest sees as /dev/vda, /dev/vdb... in this order.
struct VmDisk {
  std::string path;  // absolute host path
  DiskAccess access = DiskAccess::kReadOnly;
};

// How the host and the guest agent talk (protocol.h is what they say).
enum class ControlTransport {
  // AF_VSOCK through vhost-vsock: needs /dev/vhost-vsock on the host. The
  // host connects to the guest's `guest_cid` on kControlVsockPort.
  kVsock,
  // A virtio-serial port named kControlPortName, whose host side is a unix
  // socket the host listens on and QEMU connects to (`socket_path`): works
  // on any host.
  kVirtioSerial,
};

inline constexpr uint32_t kControlVsockPort = 1024;
inline constexpr std::string_view kControlPortName = "ralph.control";
// vsock CIDs 0..2 are reserved (hypervisor, local, host).
inline constexpr uint32_t kMinGuestCid = 3;

struct ControlEndpoint {
  ControlTransport transport = ControlTransport::kVirtioSerial;
  uint32_t guest_cid = 0;   // kVsock
  std::string socket_path;  // kVirtioSerial: absolute, < 108 bytes (sun_path)
};

inline constexpr uint64_t kMinVmMemoryBytes = 64ull << 20;
inline constexpr uint32_t kMaxVmCpus = 64;

struct VmSpec {
  std::string qemu_binary;               // empty: the arch's qemu-system-<arch> from PATH
  uint64_t memory_bytes = 256ull << 20;  // whole MiB, at least kMinVmMemoryBytes
  uint32_t cpus = 1;
  std::string kernel;  // absolute host path of the guest kernel
  std::string initrd;  // absolute host path of the guest's initrd
  // Appended to the arch's console and panic arguments. No quotes, no
  // newlines: the kernel splits it on spaces.
  std::string kernel_args;
  std::vector<VmDisk> disks;
  ControlEndpoint control;
  Accel accel = Accel::kTcg;
  // TCG on x86_64: the rate of the guest's TSC, which TCG reads from the
  // host's (HostTscKhz); the guest is told it rather than measuring it.
  // 0: 1 GHz is assumed (then the guest's clock runs at the host's TSC
  // rate over 1 GHz).
  uint32_t tsc_khz = 0;
  // The guest's serial console (kernel and guest-agent messages) goes to
  // this file; empty: discarded.
  std::string console_log;
};

// The host's TSC rate in kHz, measured once against CLOCK_MONOTONIC_RAW
// (x86_64; 0 elsewhere or when it cannot be measured).
uint32_t HostTscKhz();

// Checks a spec; kInvalidArgument names the field ("disks[1].path: must be
// absolute").
Result<void> ValidateVmSpec(const VmSpec& spec);

// The full argv of QEMU for `spec` (argv[0] is the binary). No default
// device, no user config, no monitor, no display, no network, no reboot (a
// guest that reboots or panics ends the VM), and QEMU's own seccomp
// sandbox with every optional group denied.
Result<std::vector<std::string>> QemuCommandLine(const VmSpec& spec);

}  // namespace ralph::sandbox::vm
