// An audit sink that keeps its events in memory, for unit tests of the
// services that write audit records: it can be made to fail (the way a
// read-only or broken VAR fails), and to hold a batch until the test
// releases it (so a test reaches "a write is in progress" by construction).
//
//   audit::testing::FakeAuditSink audit;
//   audit.Hold();                  // the next AppendBatch waits ...
//   ... start the writer ...
//   audit.AwaitEntered(1);         // ... once it is inside
//   audit.Release();
//   EXPECT_THAT(audit.Types(), Contains("pairing.paired"));
#pragma once

#include <condition_variable>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "services/audit/audit_log.h"

namespace ralph::audit::testing {

class FakeAuditSink final : public AuditSinkInterface {
 public:
  Result<AuditRecord> Append(const AuditEvent& event) override;
  Result<std::vector<AuditRecord>> AppendBatch(std::span<const AuditEvent> events) override;

  // Every append fails with `error` (after Hold/AwaitEntered's bookkeeping)
  // until Succeed(); nothing is stored meanwhile.
  void Fail(Error error = Error::Make(ErrorCode::kReadOnly, "audit log is read-only (fake)"));
  void Succeed();

  void Hold();
  void Release();
  // Waits until AppendBatch (or Append) has been entered `count` times.
  void AwaitEntered(int count);

  std::vector<AuditEvent> events();
  std::vector<std::string> Types();
  // The size of each batch asked for, failed ones included.
  std::vector<size_t> batches();

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool hold_ = false;
  std::optional<Error> fail_;
  int entered_ = 0;
  std::vector<AuditEvent> events_;
  std::vector<size_t> batches_;
};

}  // namespace ralph::audit::testing
