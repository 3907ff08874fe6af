// What an install records in the audit log (services/audit) and when.
// Actor "ota", subject "slot <X>" (the target), event types:
//
//   downgrade-override  after the plan, before any byte or slot state is
//                       written; when it cannot be recorded (no audit log
//                       given, or Append fails) the install is refused: an
//                       unaudited override is not an audited override
//   install-started     after the plan (best effort)
//   install-finished    after the target is armed for a trial boot (best effort)
//   install-failed      with the error, for any failure after the bundle
//                       was opened for checking (best effort)
//
// "Best effort": a failed Append does not stop or fail the install (the
// audit log must not block updates); it is reported in InstallReport::notes.
// The event builders are pure; the Record* functions do the appending.
#pragma once

#include <string>
#include <vector>

#include "platform/result.h"
#include "services/audit/audit_log.h"
#include "services/ota/installer.h"
#include "services/ota/progress.h"

namespace ralph::ota {

inline constexpr std::string_view kAuditActor = "ota";

audit::AuditEvent DowngradeOverrideEvent(const InstallStatus& status, const InstallPlan& plan,
                                         const InstallFacts& facts, const SignerInfo& signer);
audit::AuditEvent InstallStartedEvent(const InstallStatus& status, const InstallPlan& plan,
                                      const SignerInfo& signer, const InstallOptions& options);
audit::AuditEvent InstallFinishedEvent(const InstallStatus& status, const InstallReport& report);
audit::AuditEvent InstallFailedEvent(const InstallStatus& status, const Error& error);

// Records the override (when the plan has one) and then install-started.
// kRefused naming the cause when the plan overrides the anti-rollback
// minimum and the override cannot be recorded; a failed install-started is
// added to `warnings`.
Result<void> RecordInstallStart(audit::AuditSinkInterface* sink, const InstallStatus& status,
                                const InstallPlan& plan, const InstallFacts& facts,
                                const SignerInfo& signer, const InstallOptions& options,
                                std::vector<std::string>& warnings);

// Appends `event` when `sink` is set; a failure becomes a line in `warnings`
// (when given).
void RecordBestEffort(audit::AuditSinkInterface* sink, const audit::AuditEvent& event,
                      std::vector<std::string>* warnings);

}  // namespace ralph::ota
