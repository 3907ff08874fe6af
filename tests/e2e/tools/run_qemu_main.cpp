// ralph-run-qemu: boots an appliance disk in QEMU with OVMF (headless, TCG),
// streams the serial console to stdout, and stops QEMU once a console line
// contains --until (or on timeout). Used by scripts/main.sh.
#include <getopt.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "harness/machine.h"

int main(int argc, char** argv) {
  using namespace ralph;
  using namespace ralph::e2e;
  MachineOptions options;
  std::string until = "health gate passed";
  int timeout_seconds = 300;
  static const option kOptions[] = {
      {"disk", required_argument, nullptr, 'd'},    {"vars", required_argument, nullptr, 'v'},
      {"console", required_argument, nullptr, 'c'}, {"until", required_argument, nullptr, 'u'},
      {"timeout", required_argument, nullptr, 't'}, {nullptr, 0, nullptr, 0},
  };
  for (int opt; (opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1;) {
    switch (opt) {
      case 'd': options.disk = optarg; break;
      case 'v': options.vars = optarg; break;
      case 'c': options.console_log = optarg; break;
      case 'u': until = optarg; break;
      case 't': timeout_seconds = std::atoi(optarg); break;
      default:
        fmt::print(stderr,
                   "usage: ralph-run-qemu --disk IMG --vars VARS.fd --console LOG "
                   "[--until TEXT] [--timeout S]\n");
        return 2;
    }
  }
  if (options.disk.empty() || options.vars.empty() || options.console_log.empty()) {
    fmt::print(stderr, "ralph-run-qemu: --disk, --vars and --console are required\n");
    return 2;
  }
  auto machine = Machine::Start(options);
  if (!machine) {
    fmt::print(stderr, "ralph-run-qemu: {}\n", machine.error().ToString());
    return 1;
  }
  size_t shown = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  bool reached = false;
  std::optional<std::chrono::steady_clock::time_point> stop_at;
  for (;;) {
    std::string console = machine->Console();
    if (console.size() > shown) {
      std::fwrite(console.data() + shown, 1, console.size() - shown, stdout);
      std::fflush(stdout);
      if (!reached && console.find(until, shown > until.size() ? shown - until.size() : 0) !=
                          std::string::npos) {
        reached = true;
        stop_at = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      }
      shown = console.size();
    }
    auto now = std::chrono::steady_clock::now();
    if (stop_at && now >= *stop_at) break;
    if (!machine->Alive() || now >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  double elapsed = machine->Elapsed();
  machine->Kill();
  if (!reached) {
    fmt::print(stderr, "\nralph-run-qemu: '{}' did not appear within {} s\n", until,
               timeout_seconds);
    return 1;
  }
  fmt::print("\nralph-run-qemu: '{}' after {:.1f} s; QEMU stopped (NVRAM kept in {})\n", until,
             elapsed, options.vars);
  return 0;
}
