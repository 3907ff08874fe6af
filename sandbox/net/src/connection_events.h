// Connection events of a service's jobs: which job a logged packet (by its
// host interface) or a DNS event belongs to, and the per-job rate limit
// (NetworkServiceConfig::max_events_per_second): beyond it events are
// counted and reported as one "rate-limited: N events suppressed" event when
// the next window starts or the job is unregistered. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

struct LoggedPacket;

class ConnectionEvents {
 public:
  // Milliseconds of a monotonic clock.
  using Clock = std::function<int64_t()>;
  static int64_t MonotonicMs();

  explicit ConnectionEvents(uint32_t max_events_per_second, Clock clock = MonotonicMs)
      : max_per_second_(max_events_per_second), clock_(std::move(clock)) {}

  // Events for `key` (a job's host interface) go to `sink` as job `job_id`
  // until Unregister(key). A null sink drops them.
  void Register(const std::string& key, std::string job_id, NetEventSinkInterface* sink);
  // Reports the job's suppressed count, if any; once it returns, the job's
  // sink gets no further event.
  void Unregister(const std::string& key);

  // Hands `event` to the job's sink, within the job's event rate.
  void Deliver(const std::string& key, NetEvent event);
  // A packet an nft rule logged (NflogListener's handler).
  void OnLoggedPacket(const LoggedPacket& packet);
  // A sink whose events are Deliver()ed as `key`'s (the DNS forwarder's
  // for one job).
  std::unique_ptr<NetEventSinkInterface> SinkFor(std::string key);

  // Events held back by the rate limit so far, over all jobs.
  uint64_t suppressed_total() const;

 private:
  struct Registered {
    std::string job_id;
    NetEventSinkInterface* sink = nullptr;
    int64_t window_start_ms = 0;
    uint32_t in_window = 0;
    uint64_t suppressed = 0;
  };
  // Reports the suppressed count, if any, and starts a new window.
  static void FlushSuppressed(Registered& job);

  const uint32_t max_per_second_;
  const Clock clock_;
  // Sinks are called under it, so that Unregister() returning means no
  // further events for that job.
  mutable std::mutex mutex_;
  std::map<std::string, Registered> registry_;  // guarded by mutex_
  uint64_t suppressed_total_ = 0;               // guarded by mutex_
};

}  // namespace ralph::sandbox
