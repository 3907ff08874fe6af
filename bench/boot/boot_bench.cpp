// Boot timing of the appliance image under QEMU + OVMF (TCG): from QEMU
// start (firmware start) to the firmware handing over, the kernel running
// /init, early boot, PID 1 and the health gate's commit; for a first boot
// (fresh NVRAM: provisioning + VAR creation) and the steady-state boot after
// it. Printed, not asserted.
//
// No peer is measured side by side yet: a stock Debian cloud image with its
// own initramfs is the natural one, but it is not available offline here.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "harness/machine.h"

int main() {
  using namespace ralph;
  using namespace ralph::e2e;
  E2ePaths paths = E2ePaths::FromEnvironment();
  std::string base = paths.images_dir + "/base.img";
  if (::access(base.c_str(), R_OK) != 0) {
    fmt::print(stderr, "bench_boot: {} is missing: run `ctest -R e2e_images` first\n", base);
    return 1;
  }
  auto scratch = ScratchDir::Create(paths.run_dir, "bench_boot");
  if (!scratch) {
    fmt::print(stderr, "bench_boot: {}\n", scratch.error().ToString());
    return 1;
  }
  MachineOptions options;
  options.disk = scratch->path() + "/disk.img";
  options.vars = scratch->path() + "/vars.fd";
  options.console_log = scratch->path() + "/console.log";
  options.agent_socket = fmt::format("/tmp/ralph-bench-{}.sock", ::getpid());
  for (auto [from, to] :
       {std::pair{base, options.disk}, std::pair{std::string(kOvmfVars), options.vars}}) {
    if (auto copied = SparseCopy(from, to); !copied) {
      fmt::print(stderr, "bench_boot: {}\n", copied.error().ToString());
      return 1;
    }
  }
  auto machine = Machine::Start(options);
  if (!machine) {
    fmt::print(stderr, "bench_boot: {}\n", machine.error().ToString());
    return 1;
  }
  auto first = MeasureBoot(*machine, 0, std::chrono::seconds(300));
  if (!first) {
    fmt::print(stderr, "bench_boot: first boot: {}\n", first.error().ToString());
    return 1;
  }
  double reboot_at = machine->Elapsed();
  auto reboot = machine->Agent({"reboot"}, std::chrono::seconds(60));
  if (!reboot) {
    fmt::print(stderr, "bench_boot: reboot: {}\n", reboot.error().ToString());
    return 1;
  }
  auto second = MeasureBoot(*machine, reboot_at, std::chrono::seconds(300));
  if (!second) {
    fmt::print(stderr, "bench_boot: second boot: {}\n", second.error().ToString());
    return 1;
  }
  fmt::print("RalphOS boot timing, QEMU q35 + OVMF, TCG (seconds from firmware start / reboot)\n");
  fmt::print("{:<34} {:>10} {:>10}\n", "milestone", "first", "steady");
  auto row = [](const char* name, double a, double b) {
    fmt::print("{:<34} {:>10.1f} {:>10.1f}\n", name, a, b);
  };
  row("firmware hands over to the UKI", first->firmware_handoff, second->firmware_handoff);
  row("kernel runs /init (initrd)", first->kernel_init, second->kernel_init);
  row("early boot starts", first->early_boot, second->early_boot);
  row("ralph-init up as PID 1", first->pid1, second->pid1);
  row("health gate passed (committed)", first->committed, second->committed);
  return 0;
}
