// An audit sink that keeps events in memory and can be made to fail.
#pragma once

#include <mutex>
#include <vector>

#include "services/audit/audit_log.h"

namespace ralph::ralphd::api::testing {

class FakeAudit : public audit::AuditSinkInterface {
 public:
  Result<audit::AuditRecord> Append(const audit::AuditEvent& event) override {
    std::lock_guard lock(mutex_);
    if (fail_) return Error::Make(ErrorCode::kReadOnly, "audit log is read-only (fake)");
    events_.push_back(event);
    audit::AuditRecord record;
    record.seq = static_cast<int64_t>(events_.size());
    record.type = event.type;
    return record;
  }
  Result<std::vector<audit::AuditRecord>> AppendBatch(
      std::span<const audit::AuditEvent> events) override {
    std::lock_guard lock(mutex_);
    if (fail_) return Error::Make(ErrorCode::kReadOnly, "audit log is read-only (fake)");
    std::vector<audit::AuditRecord> records;
    for (const audit::AuditEvent& event : events) {
      events_.push_back(event);
      records.push_back({.seq = static_cast<int64_t>(events_.size()), .type = event.type});
    }
    return records;
  }
  std::vector<std::string> Types() {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& e : events_) out.push_back(e.type);
    return out;
  }
  void set_fail(bool fail) {
    std::lock_guard lock(mutex_);
    fail_ = fail;
  }

 private:
  std::mutex mutex_;
  std::vector<audit::AuditEvent> events_;
  bool fail_ = false;
};

}  // namespace ralph::ralphd::api::testing
