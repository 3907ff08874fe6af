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

namespace ralph::health {

struct HealthEnvironment {
  std::string services_conf = "/etc/ralph/services.conf";
  std::string services_status_dir = "/run/ralph/services";
  std::string early_boot_record = "/run/ralph/early-boot";
  std::string var_probe_dir = "/var/lib/ralph";
  // How long services get to come up and stay up.
  std::chrono::milliseconds settle_deadline{30000};
  std::chrono::milliseconds stable_for{3000};
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
