// Exec records of running jobs into the audit log (type "job.exec"), off the
// jobs' path: a job's exec waits while its sandbox reads it
// (sandbox::ExecRecord), not while the audit log commits it. The job
// threads hand each record to a bounded queue (Record never waits for the
// log); one writer thread appends what is queued in batches
// (AuditSinkInterface::AppendBatch: one transaction, one fsync per batch)
// through a connection of its own, gathering records for up to
// ExecAuditOptions::linger so that a job's steady trickle of execs costs one
// commit per period, not one per exec. A full queue drops the record and counts
// it; the count is written as a "job.exec-dropped" row after the job's
// queued records, so a loss is never silent. So are the execs of a job past
// ExecAuditOptions::max_rows_per_job (one row when the job ends). A failed append is logged
// (error level) with the number of rows lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "platform/log.h"
#include "sandbox/service.h"
#include "services/audit/audit_log.h"

namespace ralph::ralphd {

// Where a job thread sends its exec records (JobRunner, RunnerOptions::execs).
class ExecRecorderInterface {
 public:
  virtual ~ExecRecorderInterface() = default;
  // Queues one record of job `job`; never blocks on the audit log.
  virtual void Record(uint64_t job, sandbox::ExecRecord record) = 0;
  // The job has ended: returns once its records are in the log (or their
  // loss is counted in a row, or logged), so they come before its final
  // state row; then forgets the job.
  virtual void FinishJob(uint64_t job) = 0;
};

struct ExecAuditOptions {
  size_t queue_capacity = 8192;  // records waiting for the writer
  size_t max_batch = 512;        // rows per transaction
  // Rows one job may add: a job that starts processes in a tight loop must
  // not fill VAR with its audit trail. Further execs are counted and the
  // count written as one "job.exec-dropped" row when the job ends.
  uint64_t max_rows_per_job = 200000;
  // How long the writer gathers records before it appends fewer than
  // max_batch (unless a Flush waits): one fsync per this period rather
  // than per exec. A row reaches the log at most this much later.
  std::chrono::milliseconds linger{100};
};

// The audit event of one exec: actor "ralphd", type "job.exec", subject
// "job N", details {path, argv (audit::RedactArgv), pid, time, and
// missing / path_truncated / argv_truncated when true}.
audit::AuditEvent ExecAuditEvent(uint64_t job, const sandbox::ExecRecord& record);

class ExecAuditWriter final : public ExecRecorderInterface {
 public:
  // `sink`: used by the writer thread only (e.g. an AuditLog of its own).
  ExecAuditWriter(std::unique_ptr<audit::AuditSinkInterface> sink, ExecAuditOptions options,
                  std::function<void(LogLevel level, const std::string& message)> log);
  // Writes what is queued, then stops the thread.
  ~ExecAuditWriter() override;
  ExecAuditWriter(const ExecAuditWriter&) = delete;
  ExecAuditWriter& operator=(const ExecAuditWriter&) = delete;

  void Record(uint64_t job, sandbox::ExecRecord record) override;
  void FinishJob(uint64_t job) override;
  // Returns once everything recorded before the call is in the log (or its
  // loss counted or logged).
  void Flush();

  struct Stats {
    uint64_t written = 0;  // job.exec rows stored
    uint64_t dropped = 0;  // records dropped at a full queue (each counted in a row)
    uint64_t failed = 0;   // rows whose append failed (logged)
  };
  Stats stats() const;

 private:
  void Loop();

  std::unique_ptr<audit::AuditSinkInterface> sink_;
  ExecAuditOptions options_;
  std::function<void(LogLevel level, const std::string& message)> log_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;  // the writer: work or stop
  std::condition_variable done_;  // Flush: progress
  // An exec record, or (no record) a prepared event: the count of a job's
  // execs past its row limit.
  struct Item {
    uint64_t job = 0;
    std::optional<sandbox::ExecRecord> exec;
    audit::AuditEvent event;
  };
  std::deque<Item> queue_;
  std::map<uint64_t, uint64_t> dropped_;     // at a full queue, per job, not yet written
  std::map<uint64_t, uint64_t> rows_;        // per running job: rows queued so far
  std::map<uint64_t, uint64_t> over_limit_;  // per running job: execs past the limit
  uint64_t received_ = 0;                    // Record calls
  uint64_t handled_ = 0;                     // of them written, failed or counted as dropped
  uint64_t flush_target_ = 0;                // received_ at the latest Flush: write at once
  bool stop_ = false;
  Stats stats_;
  std::thread thread_;
};

}  // namespace ralph::ralphd
