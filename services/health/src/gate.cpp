#include "services/health/gate.h"

#include <signal.h>

#include <fmt/format.h>

#include "boot/boot_config.h"

namespace ralph::health {

void InitReboot::Reboot() {
  ::kill(1, SIGTERM);
}

int RunHealthGate(const HealthEnvironment& env, const std::vector<HealthCheck>& checks,
                  const std::map<std::string, std::string>& early_boot, RebootInterface& reboot,
                  const GateLog& log) {
  auto info = [&](std::string line) { log(LogLevel::kInfo, line); };
  auto error = [&](std::string line) { log(LogLevel::kError, line); };
  auto field = [&](const char* key) {
    auto it = early_boot.find(key);
    return it == early_boot.end() ? std::string() : it->second;
  };
  std::string slot = field("slot");
  std::string display = boot::SlotDisplayName(slot);
  if (slot.empty()) {
    error(fmt::format("cannot tell the booted slot ({} unreadable): not judging this boot",
                      env.early_boot_record));
    return 1;
  }
  if (slot == "recovery" || field("mode") == boot::BootModeName(boot::BootMode::kRecovery)) {
    // A rescue boot: nothing to commit or mark bad, and the committed
    // slot's state must stay as it is (early boot printed it).
    info("health gate: RECOVERY boot, not judged (no slot trial, commit or mark-bad)");
    return 0;
  }

  bool all_passed = true;
  for (const auto& check : checks) {
    auto result = check.run(env);
    if (result) {
      info(fmt::format("check '{}': ok", check.name));
    } else {
      all_passed = false;
      error(fmt::format("check '{}': FAILED: {}", check.name, result.error().ToString()));
    }
  }

  auto view = ReadSlotView(*env.system, slot);
  if (!view) {
    error(fmt::format("slot {}: reading the slot state: {}: cannot commit or mark bad", display,
                      view.error().ToString()));
    return 1;
  }
  switch (Decide(view->needs_commit ? SlotCommitment::kNeedsCommit : SlotCommitment::kCommitted,
                 all_passed ? ChecksOutcome::kAllPassed : ChecksOutcome::kSomeFailed)) {
    case GateDecision::kCommit: {
      auto commit = CommitSlot(*env.system, slot);
      if (!commit) {
        error(fmt::format("slot {}: health passed but committing failed: {}", display,
                          commit.error().ToString()));
        return 1;
      }
      auto after = ReadSlotView(*env.system, slot);
      info(fmt::format("health gate passed: slot {} committed (after its trial; {})", display,
                       after ? after->summary : view->summary));
      return 0;
    }
    case GateDecision::kMarkBadAndReboot: {
      auto bad = MarkSlotBad(*env.system, slot);
      if (!bad)
        error(fmt::format("slot {}: marking bad failed: {}", display, bad.error().ToString()));
      error(fmt::format(
          "health gate failed: slot {} marked bad; rebooting into {}", display,
          view->any_committed ? "the committed slot" : "RECOVERY (no slot is committed yet)"));
      reboot.Reboot();
      return 1;
    }
    case GateDecision::kReportOnly:
      if (all_passed) {
        info(fmt::format("health gate passed: slot {} committed (it already was; {})", display,
                         view->summary));
        return 0;
      }
      error(
          fmt::format("health gate FAILED on the committed slot {} ({})", display, view->summary));
      return 1;
  }
  return 1;
}

}  // namespace ralph::health
