#include "services/ralphd/exec_audit.h"

#include <fmt/format.h>

#include "services/audit/redact.h"

namespace ralph::ralphd {

audit::AuditEvent ExecAuditEvent(uint64_t job, const sandbox::ExecRecord& record) {
  nlohmann::json details = {{"path", record.path},
                            {"argv", audit::RedactArgv(record.argv)},
                            {"pid", record.pid},
                            {"time", audit::FormatAuditTime(record.time)}};
  if (record.missing) details["missing"] = true;
  if (record.path_truncated) details["path_truncated"] = true;
  if (record.argv_truncated) details["argv_truncated"] = true;
  return {.actor = "ralphd",
          .type = "job.exec",
          .subject = fmt::format("job {}", job),
          .details = std::move(details)};
}

ExecAuditWriter::ExecAuditWriter(
    std::unique_ptr<audit::AuditSinkInterface> sink, ExecAuditOptions options,
    std::function<void(LogLevel level, const std::string& message)> log)
    : sink_(std::move(sink)), options_(options), log_(std::move(log)) {
  thread_ = std::thread([this] { Loop(); });
}

ExecAuditWriter::~ExecAuditWriter() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ExecAuditWriter::Record(uint64_t job, sandbox::ExecRecord record) {
  bool wake;
  {
    std::lock_guard lock(mutex_);
    ++received_;
    uint64_t& rows = rows_[job];
    if (rows >= options_.max_rows_per_job) {
      ++over_limit_[job];
      ++stats_.dropped;
      ++handled_;  // counted: FinishJob writes the count
      return;
    }
    if (queue_.size() >= options_.queue_capacity) {
      wake = dropped_.empty();
      ++dropped_[job];
      ++stats_.dropped;
    } else {
      ++rows;
      queue_.push_back({.job = job, .exec = std::move(record)});
      // The writer waits for a first record, then gathers until a batch is
      // full: only those two wake it (not every exec).
      wake = queue_.size() == 1 || queue_.size() == options_.max_batch;
    }
  }
  if (wake) wake_.notify_one();
}

void ExecAuditWriter::FinishJob(uint64_t job) {
  {
    std::lock_guard lock(mutex_);
    auto over = over_limit_.find(job);
    if (over != over_limit_.end()) {
      ++received_;
      queue_.push_back(
          {.job = job,
           .event = {.actor = "ralphd",
                     .type = "job.exec-dropped",
                     .subject = fmt::format("job {}", job),
                     .details = {{"count", over->second},
                                 {"reason", fmt::format("more execs than a job may record ({})",
                                                        options_.max_rows_per_job)}}}});
      over_limit_.erase(over);
    }
    rows_.erase(job);
  }
  Flush();
}

void ExecAuditWriter::Flush() {
  std::unique_lock lock(mutex_);
  uint64_t target = received_;
  if (handled_ >= target) return;
  flush_target_ = std::max(flush_target_, target);
  wake_.notify_one();
  done_.wait(lock, [&] { return handled_ >= target; });
}

ExecAuditWriter::Stats ExecAuditWriter::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void ExecAuditWriter::Loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || !queue_.empty() || !dropped_.empty(); });
    if (queue_.empty() && dropped_.empty()) return;  // stop_, and nothing left
    wake_.wait_for(lock, options_.linger, [&] {
      return stop_ || queue_.size() >= options_.max_batch || handled_ < flush_target_;
    });
    std::vector<audit::AuditEvent> events;
    size_t take = std::min(queue_.size(), options_.max_batch);
    events.reserve(take + dropped_.size());
    std::vector<Item> batch(std::make_move_iterator(queue_.begin()),
                            std::make_move_iterator(queue_.begin() + static_cast<ptrdiff_t>(take)));
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(take));
    // Drops happened while the queue was full, after what is still queued:
    // their count is written once the queue has drained.
    std::map<uint64_t, uint64_t> dropped;
    if (queue_.empty()) dropped.swap(dropped_);
    lock.unlock();
    size_t exec_rows = 0;
    for (Item& item : batch) {
      if (item.exec) {
        events.push_back(ExecAuditEvent(item.job, *item.exec));
        ++exec_rows;
      } else {
        events.push_back(std::move(item.event));
      }
    }
    uint64_t dropped_records = 0;
    for (const auto& [job, count] : dropped) {
      dropped_records += count;
      events.push_back({.actor = "ralphd",
                        .type = "job.exec-dropped",
                        .subject = fmt::format("job {}", job),
                        .details = {{"count", count},
                                    {"reason", fmt::format("the exec record queue was full ({})",
                                                           options_.queue_capacity)}}});
    }
    Result<std::vector<audit::AuditRecord>> rows = sink_->AppendBatch(events);
    if (!rows && log_) {
      log_(LogLevel::kError,
           fmt::format("audit: {} exec rows lost: {}", events.size(), rows.error().ToString()));
    }
    lock.lock();
    if (rows) {
      stats_.written += exec_rows;
    } else {
      stats_.failed += events.size();
    }
    handled_ += batch.size() + dropped_records;
    done_.notify_all();
  }
}

}  // namespace ralph::ralphd
