// The health gate: the checks a slot must pass before it is committed.
//
// Every check lives in the one list returned by HealthChecks(); a later
// capability adds its own entry there ("ralphd answers", "a sandbox runs a
// trivial command", "API on localhost").
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "platform/result.h"
#include "services/health/slot_gate.h"

namespace ralph::health {

class ClockInterface {
 public:
  virtual ~ClockInterface() = default;
  virtual std::chrono::steady_clock::time_point Now() = 0;
  virtual void SleepFor(std::chrono::milliseconds duration) = 0;
};

// steady_clock and a real sleep.
class SystemClock final : public ClockInterface {
 public:
  std::chrono::steady_clock::time_point Now() override;
  void SleepFor(std::chrono::milliseconds duration) override;
};

struct HealthEnvironment {
  std::string services_conf = "/etc/ralph/services.conf";
  std::string services_status_dir = "/run/ralph/services";
  std::string early_boot_record = "/run/ralph/early-boot";
  std::string var_probe_dir = "/var/lib/ralph";
  // How long services get to come up and stay up.
  std::chrono::milliseconds settle_deadline{30000};
  std::chrono::milliseconds stable_for{3000};
  // The machine and the clock the checks and the gate use (borrowed; set
  // both before running a check).
  const GateSystem* system = nullptr;
  ClockInterface* clock = nullptr;
};

struct HealthCheck {
  std::string name;
  std::function<Result<void>(const HealthEnvironment&)> run;
};

// The checks, in the order they run.
std::vector<HealthCheck> HealthChecks();

// Checks one snapshot of the required services: kInvalidState naming the
// first service that is not running (with its state and last exit).
// `records` maps service name -> its /run/ralph/services/<name> text.
Result<void> RequiredServicesRunning(const std::string& services_conf,
                                     const std::map<std::string, std::string>& records);

enum class GateDecision { kCommit, kMarkBadAndReboot, kReportOnly };
// Whether the booted slot waits for the gate: a trial, or a first boot with
// nothing committed yet.
enum class SlotCommitment { kNeedsCommit, kCommitted };
enum class ChecksOutcome { kAllPassed, kSomeFailed };
// A slot that needs a commit is committed when every check passed and marked
// bad otherwise; a committed slot only reports.
GateDecision Decide(SlotCommitment commitment, ChecksOutcome checks);

}  // namespace ralph::health
