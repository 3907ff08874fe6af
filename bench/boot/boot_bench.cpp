// Boot timing of the appliance image under QEMU + OVMF (TCG): from QEMU
// start (firmware start) to the firmware handing over, the kernel running
// /init, early boot, PID 1 and the health gate's commit; for a first boot
// (fresh NVRAM: provisioning + VAR creation) and the steady-state boot after
// it. Printed, not asserted.
//
// Secure Boot on against off, in one run, on the same signed image: "on" is
// OVMF's Secure Boot build with SMM and keys enrolled (the snakeoil VARS
// the image is signed for: the firmware verifies the UKI, the kernel locks
// itself down); "off" is OVMF without SMM and a VARS without keys (the
// firmware verifies nothing). The runs alternate (off, on, off, on, ...:
// RALPH_BENCH_ROUNDS rounds, default 1) so that a change of the host's load
// hits both alike; the ratio is of the medians of power-on to committed.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "harness/machine.h"

namespace {

struct Run {
  ralph::e2e::BootTimeline first;
  ralph::e2e::BootTimeline steady;
};

// A first boot of the base image on fresh NVRAM, then a reboot.
ralph::Result<Run> Measure(const ralph::e2e::E2ePaths& paths, const std::string& base,
                           bool secure_boot, int round) {
  using namespace ralph;
  using namespace ralph::e2e;
  ScratchDir scratch = TRY(ScratchDir::Create(
      paths.run_dir, fmt::format("bench_boot-{}-{}", secure_boot ? "on" : "off", round)));
  MachineOptions options;
  options.disk = scratch.path() + "/disk.img";
  options.vars = scratch.path() + "/vars.fd";
  options.console_log = scratch.path() + "/console.log";
  options.agent_socket = fmt::format("/tmp/ralph-bench-{}.sock", ::getpid());
  options.secure_boot_firmware = secure_boot;
  TRY(SparseCopy(base, options.disk));
  TRY(SparseCopy(secure_boot ? kOvmfVars : kOvmfVarsSetupMode, options.vars));
  Machine machine = TRY(Machine::Start(options));
  Run run;
  run.first = TRY_CTX(MeasureBoot(machine, 0, std::chrono::seconds(300)), "first boot");
  double reboot_at = machine.Elapsed();
  TRY_CTX(machine.Agent({"reboot"}, std::chrono::seconds(60)), "reboot");
  run.steady = TRY_CTX(MeasureBoot(machine, reboot_at, std::chrono::seconds(300)), "second boot");
  if (secure_boot && machine.Count("secureboot: Secure boot enabled") != 2) {
    return Error::Make(ErrorCode::kInvalidState, "the kernel did not report Secure Boot on");
  }
  return run;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

int main() {
  using namespace ralph;
  using namespace ralph::e2e;
  E2ePaths paths = E2ePaths::FromEnvironment();
  std::string base = paths.images_dir + "/base.img";
  if (::access(base.c_str(), R_OK) != 0) {
    fmt::print(stderr, "bench_boot: {} is missing: run `ctest -R e2e_images` first\n", base);
    return 1;
  }
  int rounds = 1;
  if (const char* text = std::getenv("RALPH_BENCH_ROUNDS")) rounds = std::max(1, std::atoi(text));
  std::vector<Run> runs[2];  // [0] off, [1] on
  for (int round = 0; round < rounds; ++round) {
    for (bool secure_boot : {false, true}) {
      auto run = Measure(paths, base, secure_boot, round);
      if (!run) {
        fmt::print(stderr, "bench_boot: Secure Boot {}: {}\n", secure_boot ? "on" : "off",
                   run.error().ToString());
        return 1;
      }
      runs[secure_boot].push_back(*run);
    }
  }
  fmt::print(
      "RalphOS boot timing, QEMU q35 + OVMF, TCG (seconds from firmware start / reboot; median "
      "of {} round(s))\n",
      rounds);
  fmt::print("{:<34} {:>9} {:>9} {:>9} {:>9}\n", "milestone", "first off", "first on", "steady off",
             "steady on");
  using Field = double BootTimeline::*;
  auto median = [&](int on, bool first, Field field) {
    std::vector<double> values;
    for (const Run& run : runs[on]) values.push_back((first ? run.first : run.steady).*field);
    return Median(values);
  };
  const std::pair<const char*, Field> rows[] = {
      {"firmware hands over to the UKI", &BootTimeline::firmware_handoff},
      {"kernel runs /init (initrd)", &BootTimeline::kernel_init},
      {"early boot starts", &BootTimeline::early_boot},
      {"ralph-init up as PID 1", &BootTimeline::pid1},
      {"health gate passed (committed)", &BootTimeline::committed}};
  for (const auto& [name, field] : rows) {
    fmt::print("{:<34} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f}\n", name, median(0, true, field),
               median(1, true, field), median(0, false, field), median(1, false, field));
  }
  fmt::print(
      "power-on to committed, Secure Boot on / off: first boot {:.3f}x, steady {:.3f}x\n",
      median(1, true, &BootTimeline::committed) / median(0, true, &BootTimeline::committed),
      median(1, false, &BootTimeline::committed) / median(0, false, &BootTimeline::committed));
  return 0;
}
