#include "machine.h"

#include <time.h>
#include <x86intrin.h>

#include <cerrno>
#include <cstdint>

#include <fmt/format.h>

namespace ralph::sandbox::vm {

// microvm: no PCI, no firmware tables beyond what the kernel needs to find
// its virtio-mmio devices (ACPI, the default), no option ROMs; the ISA
// serial port stays for the console.
MachineArgs MachineFor(Accel accel, uint32_t tsc_khz) {
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
  // x86_64). Its TSC is the host's TSC, but the guest's PIT ticks as fast
  // as the loaded host lets the translator run, so the kernel's
  // calibration against the PIT fails on a busy host and the delay-loop
  // calibration that follows waits on a tick that never comes (the boot
  // hangs after "Marking TSC unstable"): the TSC rate (the host's, when
  // known) and the loops per jiffy (HZ=250) are given instead of measured.
  // A wrong rate makes the guest's clock, and so a job's timeout and wall
  // time in it, run fast or slow by the ratio.
  if (tsc_khz == 0) tsc_khz = 1000000;
  args.machine = "microvm,x-option-roms=off,isa-serial=on";
  args.cpu = "max";
  args.kernel_args = fmt::format("tsc_early_khz={} lpj={} no_timer_check", tsc_khz,
                                 static_cast<uint64_t>(tsc_khz) * 4);
  return args;
}

uint32_t HostTscKhz() {
  // Measured once: the TSC against the raw monotonic clock over 50 ms
  // (0.01 % is far below what a guest's clock needs).
  static const uint32_t khz = [] {
    auto raw_ns = [] {
      timespec ts{};
      ::clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
      return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
    };
    uint64_t ns0 = raw_ns();
    uint64_t tsc0 = __rdtsc();
    timespec pause{0, 50 * 1000 * 1000};
    while (::nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
    uint64_t tsc1 = __rdtsc();
    uint64_t ns1 = raw_ns();
    if (ns1 <= ns0 || tsc1 <= tsc0) return uint32_t{0};
    uint64_t rate = (tsc1 - tsc0) * 1000000ull / (ns1 - ns0);  // kHz
    return rate > 0 && rate < UINT32_MAX ? static_cast<uint32_t>(rate) : uint32_t{0};
  }();
  return khz;
}

std::vector<std::string> VmmLibraryDirs() {
  return {"/usr/lib/x86_64-linux-gnu", "/usr/lib64"};
}

}  // namespace ralph::sandbox::vm
