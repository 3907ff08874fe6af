// ralph-run-qemu: boots an appliance disk in QEMU with OVMF (headless, TCG),
// streams the serial console to stdout, and stops QEMU once a console line
// contains --until (or on timeout). Used by scripts/main.sh.
//
// With a command after `--`, the machine keeps running once --until has
// appeared: the console goes on into its log only, the command runs on the
// terminal, and QEMU stops when it ends (its exit status is ours). --net
// gives the machine a NIC on QEMU user networking, and each --forward
// HOST_PORT:GUEST_PORT a TCP port of the guest on the host's 127.0.0.1
// (HOST_PORT 0: a free one); the command finds each host port in its
// environment as RALPH_FORWARD_<GUEST_PORT>.
#include <getopt.h>
#include <unistd.h>

#include <charconv>
#include <vector>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "harness/machine.h"
#include "platform/process.h"

namespace {

// "HOST_PORT:GUEST_PORT", HOST_PORT 0 taking a free port now.
bool ParseForward(std::string_view text, ralph::e2e::MachineOptions::Forward* forward) {
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) return false;
  auto number = [](std::string_view digits, uint16_t* out) {
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *out);
    return !digits.empty() && ec == std::errc() && end == digits.data() + digits.size();
  };
  if (!number(text.substr(0, colon), &forward->host_port) ||
      !number(text.substr(colon + 1), &forward->guest_port) || forward->guest_port == 0) {
    return false;
  }
  if (forward->host_port == 0) {
    auto port = ralph::e2e::FreeLocalPort();
    if (!port) return false;
    forward->host_port = *port;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ralph;
  using namespace ralph::e2e;
  MachineOptions options;
  std::string until = "health gate passed";
  int timeout_seconds = 300;
  static const option kOptions[] = {
      {"disk", required_argument, nullptr, 'd'},    {"vars", required_argument, nullptr, 'v'},
      {"console", required_argument, nullptr, 'c'}, {"until", required_argument, nullptr, 'u'},
      {"timeout", required_argument, nullptr, 't'}, {"net", no_argument, nullptr, 'n'},
      {"forward", required_argument, nullptr, 'f'}, {nullptr, 0, nullptr, 0},
  };
  auto usage = [] {
    fmt::print(stderr,
               "usage: ralph-run-qemu --disk IMG --vars VARS.fd --console LOG [--until TEXT] "
               "[--timeout S] [--net] [--forward HOST_PORT:GUEST_PORT]... [-- COMMAND...]\n");
    return 2;
  };
  for (int opt; (opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1;) {
    switch (opt) {
      case 'd': options.disk = optarg; break;
      case 'v': options.vars = optarg; break;
      case 'c': options.console_log = optarg; break;
      case 'u': until = optarg; break;
      case 't': timeout_seconds = std::atoi(optarg); break;
      case 'n': options.user_network = true; break;
      case 'f': {
        MachineOptions::Forward forward;
        if (!ParseForward(optarg, &forward)) {
          fmt::print(stderr, "ralph-run-qemu: --forward {}: expected HOST_PORT:GUEST_PORT\n",
                     optarg);
          return 2;
        }
        options.forwards.push_back(forward);
        options.user_network = true;
        break;
      }
      default: return usage();
    }
  }
  std::vector<std::string> then(argv + optind, argv + argc);
  if (options.disk.empty() || options.vars.empty() || options.console_log.empty()) {
    fmt::print(stderr, "ralph-run-qemu: --disk, --vars and --console are required\n");
    return 2;
  }
  // A log from an earlier run must not be read as this boot's console.
  ::unlink(options.console_log.c_str());
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
    if (reached && !then.empty()) break;
    auto now = std::chrono::steady_clock::now();
    if (stop_at && now >= *stop_at) break;
    if (!machine->Alive() || now >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  double elapsed = machine->Elapsed();
  if (reached && !then.empty()) {
    fmt::print(
        "\nralph-run-qemu: '{}' after {:.1f} s; the machine runs on (console in {}) "
        "while `{}` runs\n",
        until, elapsed, options.console_log, fmt::join(then, " "));
    std::fflush(stdout);
    std::vector<std::string> env;
    for (const auto& forward : options.forwards) {
      env.push_back(fmt::format("RALPH_FORWARD_{}={}", forward.guest_port, forward.host_port));
    }
    auto ran = RunProgram({.argv = then, .env = std::move(env), .output = ProgramOutput::kInherit});
    machine->Kill();
    if (!ran) {
      fmt::print(stderr, "ralph-run-qemu: {}\n", ran.error().ToString());
      return 1;
    }
    fmt::print("ralph-run-qemu: `{}` ended ({}); QEMU stopped\n", then.front(), ran->Describe());
    return ran->ok() ? 0 : (ran->exit_status != 0 ? ran->exit_status : 1);
  }
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
