#include "services/ota/install_audit.h"

#include <fmt/format.h>

namespace ralph::ota {
namespace {

std::string Subject(const InstallStatus& status) {
  // A failure before the plan has no target yet.
  return status.target_slot.empty() ? std::string("no target slot") : "slot " + status.target_slot;
}

}  // namespace

audit::AuditEvent DowngradeOverrideEvent(const InstallStatus& status, const InstallPlan& plan,
                                         const InstallFacts& facts, const SignerInfo& signer) {
  nlohmann::json details = {{"source", status.source},
                            {"version", status.version},
                            {"target_slot", status.target_slot},
                            {"signer", signer.subject}};
  if (facts.record) details["minimum_version"] = facts.record->minimum_version.ToString();
  if (!plan.notes.empty()) details["note"] = plan.notes.front();
  return {.actor = std::string(kAuditActor),
          .type = "downgrade-override",
          .subject = Subject(status),
          .details = std::move(details)};
}

audit::AuditEvent InstallStartedEvent(const InstallStatus& status, const InstallPlan& plan,
                                      const SignerInfo& signer, const InstallOptions& options) {
  return {.actor = std::string(kAuditActor),
          .type = "install-started",
          .subject = Subject(status),
          .details = {{"source", status.source},
                      {"version", status.version},
                      {"target_slot", status.target_slot},
                      {"signer", signer.subject},
                      {"downgrade_override", plan.downgrade == boot::DowngradePolicy::kAllow},
                      {"tries", options.tries},
                      {"mode", options.mode == WriteOptions::Mode::kFull ? "full" : "adaptive"}}};
}

audit::AuditEvent InstallFinishedEvent(const InstallStatus& status, const InstallReport& report) {
  return {.actor = std::string(kAuditActor),
          .type = "install-finished",
          .subject = Subject(status),
          .details = {{"source", status.source},
                      {"version", report.version.ToString()},
                      {"target_slot", status.target_slot},
                      {"bytes_written", report.stats.bytes_written},
                      {"bytes_skipped", report.stats.bytes_skipped},
                      {"seconds", report.seconds},
                      {"next", "trial boot"}}};
}

audit::AuditEvent InstallFailedEvent(const InstallStatus& status, const Error& error) {
  return {.actor = std::string(kAuditActor),
          .type = "install-failed",
          .subject = Subject(status),
          .details = {{"source", status.source},
                      {"version", status.version},
                      {"target_slot", status.target_slot},
                      {"error", error.message()},
                      {"code", ErrorCodeName(error.code())}}};
}

Result<void> RecordInstallStart(audit::AuditSinkInterface* sink, const InstallStatus& status,
                                const InstallPlan& plan, const InstallFacts& facts,
                                const SignerInfo& signer, const InstallOptions& options,
                                std::vector<std::string>& warnings) {
  if (plan.downgrade == boot::DowngradePolicy::kAllow) {
    if (!sink) {
      return Error::Make(ErrorCode::kRefused,
                         "downgrade override refused: no audit log to record it in (an override "
                         "must be audited)");
    }
    auto recorded = sink->Append(DowngradeOverrideEvent(status, plan, facts, signer));
    if (!recorded) {
      return Error::Make(ErrorCode::kRefused,
                         fmt::format("downgrade override refused: it could not be recorded in "
                                     "the audit log: {}",
                                     recorded.error().ToString()));
    }
  }
  RecordBestEffort(sink, InstallStartedEvent(status, plan, signer, options), &warnings);
  return {};
}

void RecordBestEffort(audit::AuditSinkInterface* sink, const audit::AuditEvent& event,
                      std::vector<std::string>* warnings) {
  if (!sink) return;
  auto recorded = sink->Append(event);
  if (!recorded && warnings) {
    warnings->push_back(
        fmt::format("audit log: recording {} failed: {}", event.type, recorded.error().ToString()));
  }
}

}  // namespace ralph::ota
