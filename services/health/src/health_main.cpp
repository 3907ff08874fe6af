// ralph-health: the commit gate, run by ralph-init once the services are
// started. Runs every check of HealthChecks(); on a trial boot (or the first
// boot) it commits the slot when all pass, otherwise marks it bad and asks
// PID 1 to reboot so the firmware boots the committed slot (RECOVERY on a
// first boot: nothing is committed yet). A RECOVERY boot is not judged.
#include <signal.h>
#include <unistd.h>

#include <map>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/log.h"
#include "services/health/checks.h"
#include "services/health/slot_gate.h"
#include "services/init/boot_config.h"

namespace {

std::map<std::string, std::string> EarlyBootRecord(const ralph::health::HealthEnvironment& env) {
  auto text = ralph::ReadWholeFile(env.early_boot_record);
  return text ? ralph::init::ParseRecord(*text) : std::map<std::string, std::string>();
}

}  // namespace

int main() {
  using namespace ralph;
  using namespace ralph::health;
  LogInit("ralph-health", LogSink::kKmsg);
  HealthEnvironment env;
  auto early_boot = EarlyBootRecord(env);
  std::string slot = early_boot["slot"];
  std::string display = init::SlotDisplayName(slot);
  if (slot.empty()) {
    LogError("cannot tell the booted slot ({} unreadable): not judging this boot",
             env.early_boot_record);
    return 1;
  }
  if (slot == "recovery" || early_boot["mode"] == init::BootModeName(init::BootMode::kRecovery)) {
    // A rescue boot: nothing to commit or mark bad, and the committed
    // slot's state must stay as it is (early boot printed it).
    LogInfo("health gate: RECOVERY boot, not judged (no slot trial, commit or mark-bad)");
    return 0;
  }

  bool all_passed = true;
  for (const auto& check : HealthChecks()) {
    auto result = check.run(env);
    if (result) {
      LogInfo("check '{}': ok", check.name);
    } else {
      all_passed = false;
      LogError("check '{}': FAILED: {}", check.name, result.error().ToString());
    }
  }

  auto view = ReadSlotView(slot);
  if (!view) {
    LogError("slot {}: reading the slot state: {}: cannot commit or mark bad", display,
             view.error().ToString());
    return 1;
  }
  switch (Decide(view->needs_commit ? SlotCommitment::kNeedsCommit : SlotCommitment::kCommitted,
                 all_passed ? ChecksOutcome::kAllPassed : ChecksOutcome::kSomeFailed)) {
    case GateDecision::kCommit: {
      auto commit = CommitSlot(slot);
      if (!commit) {
        LogError("slot {}: health passed but committing failed: {}", display,
                 commit.error().ToString());
        return 1;
      }
      auto after = ReadSlotView(slot);
      LogInfo("health gate passed: slot {} committed (after its trial; {})", display,
              after ? after->summary : view->summary);
      return 0;
    }
    case GateDecision::kMarkBadAndReboot: {
      auto bad = MarkSlotBad(slot);
      if (!bad) LogError("slot {}: marking bad failed: {}", display, bad.error().ToString());
      LogError("health gate failed: slot {} marked bad; rebooting into {}", display,
               view->any_committed ? "the committed slot" : "RECOVERY (no slot is committed yet)");
      ::kill(1, SIGTERM);
      return 1;
    }
    case GateDecision::kReportOnly:
      if (all_passed) {
        LogInfo("health gate passed: slot {} committed (it already was; {})", display,
                view->summary);
        return 0;
      }
      LogError("health gate FAILED on the committed slot {} ({})", display, view->summary);
      return 1;
  }
  return 1;
}
