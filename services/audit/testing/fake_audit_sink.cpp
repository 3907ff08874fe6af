#include "fake_audit_sink.h"

namespace ralph::audit::testing {

Result<AuditRecord> FakeAuditSink::Append(const AuditEvent& event) {
  std::vector<AuditRecord> records = TRY(AppendBatch(std::span<const AuditEvent>(&event, 1)));
  return records.front();
}

Result<std::vector<AuditRecord>> FakeAuditSink::AppendBatch(std::span<const AuditEvent> events) {
  std::unique_lock lock(mutex_);
  ++entered_;
  changed_.notify_all();
  changed_.wait(lock, [&] { return !hold_; });
  batches_.push_back(events.size());
  if (fail_) return *fail_;
  std::vector<AuditRecord> records;
  for (const AuditEvent& event : events) {
    events_.push_back(event);
    records.push_back({.seq = static_cast<int64_t>(events_.size()), .type = event.type});
  }
  return records;
}

void FakeAuditSink::Fail(Error error) {
  std::lock_guard lock(mutex_);
  fail_ = std::move(error);
}

void FakeAuditSink::Succeed() {
  std::lock_guard lock(mutex_);
  fail_.reset();
}

void FakeAuditSink::Hold() {
  std::lock_guard lock(mutex_);
  hold_ = true;
}

void FakeAuditSink::Release() {
  std::lock_guard lock(mutex_);
  hold_ = false;
  changed_.notify_all();
}

void FakeAuditSink::AwaitEntered(int count) {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return entered_ >= count; });
}

std::vector<AuditEvent> FakeAuditSink::events() {
  std::lock_guard lock(mutex_);
  return events_;
}

std::vector<std::string> FakeAuditSink::Types() {
  std::lock_guard lock(mutex_);
  std::vector<std::string> types;
  for (const AuditEvent& event : events_) types.push_back(event.type);
  return types;
}

std::vector<size_t> FakeAuditSink::batches() {
  std::lock_guard lock(mutex_);
  return batches_;
}

}  // namespace ralph::audit::testing
