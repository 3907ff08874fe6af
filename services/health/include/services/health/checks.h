// The health gate: the checks a slot must pass before it is committed.
//
// Every check lives in the one list returned by HealthChecks(): the
// services, VAR, the slot state, then the control plane (ralphd answers on
// its socket, its API completes a pinned TLS 1.3 handshake, the active
// policy loads, a sandbox runs a trivial command). A later capability adds
// its own entry there.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "platform/result.h"
#include "services/health/control_plane.h"
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
  // The control plane: ralph-init's service name for ralphd, where its API
  // answers and the device identity it presents.
  std::string ralphd_service = "ralphd";
  std::string ralphd_api_address = "127.0.0.1:8443";
  std::string ralphd_identity_dir = "/var/lib/ralph/ralphd/api/identity";
  // ralphd may still be starting after boot: the gate waits this long for
  // it to answer on its socket, and gives up early once ralph-init reports
  // it down after this many starts (crash-looping: waiting longer shows
  // nothing new).
  std::chrono::milliseconds ralphd_ready_deadline{180000};
  int ralphd_max_starts = 3;
  // One ralphctl call (a wedged ralphd must not hang the gate).
  std::chrono::milliseconds ralphctl_bound{30000};
  // The trivial job: its command (in the sandbox base), its own timeout in
  // ralphd and how long the gate waits for it to end.
  std::vector<std::string> sandbox_probe_argv = {"/bin/true"};
  std::chrono::milliseconds sandbox_job_timeout{60000};
  std::chrono::milliseconds sandbox_deadline{120000};
  // The machine, the clock and the control plane the checks and the gate
  // use (borrowed; set them before running a check).
  const GateSystem* system = nullptr;
  ClockInterface* clock = nullptr;
  ControlPlaneInterface* control_plane = nullptr;
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
