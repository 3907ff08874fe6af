// ralph-health's whole run as a library function, with everything outside
// the process injected (services/health/slot_gate.h for the EFI store and
// the disk; the clock and the reboot here), so that commit, mark-bad-and-
// reboot and report-only are unit-tested against fakes:
//
//   - a RECOVERY boot is not judged;
//   - every check of `checks` runs;
//   - a trial (or a first boot: nothing committed yet) is committed when all
//     passed, otherwise marked bad and PID 1 is asked to reboot, so the
//     firmware boots the committed slot (RECOVERY when nothing is committed);
//   - a committed slot only reports.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "platform/log.h"
#include "services/health/checks.h"

namespace ralph::health {

class RebootInterface {
 public:
  virtual ~RebootInterface() = default;
  // Asks for a reboot and returns (PID 1 does it).
  virtual void Reboot() = 0;
};

// SIGTERM to PID 1 (ralph-init), which stops the services and reboots.
class InitReboot final : public RebootInterface {
 public:
  void Reboot() override;
};

using GateLog = std::function<void(LogLevel level, std::string_view line)>;

// The process exit status: 0 when the boot was judged healthy (committed,
// or already committed and passing) or not judged (RECOVERY); 1 otherwise.
// `early_boot` is the early-boot record (/run/ralph/early-boot parsed);
// `env.system` and `env.clock` must be set.
int RunHealthGate(const HealthEnvironment& env, const std::vector<HealthCheck>& checks,
                  const std::map<std::string, std::string>& early_boot, RebootInterface& reboot,
                  const GateLog& log);

}  // namespace ralph::health
