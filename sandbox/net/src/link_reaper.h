// LinkRemoval::kBackground: what torn-down jobs leave is removed by a
// thread of its own, off the jobs' paths. A job's veth normally goes with
// its network namespace: once its last process is gone, the kernel's netns
// cleanup deletes the pair, many namespaces' devices in one batch (one RTNL
// hold, one rcu_barrier). An RTM_DELLINK of our own would hold the RTNL lock
// through an expedited grace period per link, stalling every job being
// created meanwhile (a new netns, `lo` up, veth creation all take it). So
// the oldest removal waits up to kKernelGrace for that (polled), and the
// link is deleted here only after it — or at once when the reaper stops.
// Then the removal's `finish` (the table, the address slot) runs.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "platform/log.h"
#include "platform/result.h"
#include "rtnl.h"

namespace ralph::sandbox {

struct PendingRemoval {
  std::string job_id;
  std::string ifname;  // empty: no link to delete
  std::string table;   // empty: no table to delete
  uint32_t slot = 0;
  // Until when the kernel may delete the link with the job's netns.
  std::chrono::steady_clock::time_point deadline;
};

class LinkReaper {
 public:
  // Runs once the removal's link is gone: deletes its table, returns its slot.
  using Finish = std::function<Result<void>(const PendingRemoval& removal)>;
  static constexpr std::chrono::milliseconds kKernelGrace{2000};
  static constexpr std::chrono::milliseconds kReapPoll{10};

  LinkReaper(Finish finish, std::function<void(LogLevel, const std::string&)> log)
      : finish_(std::move(finish)), log_(std::move(log)) {}
  // Stop().
  ~LinkReaper();

  // Queues `removal`. The first call opens the reaper's rtnetlink socket in
  // the calling thread's netns (the service's, where the host ends of its
  // veths live) and starts its thread.
  Result<void> Queue(PendingRemoval removal);
  // Blocks until every removal queued before the call is done. The first
  // error a removal met since the last call, if any.
  Result<void> WaitForRemovals();
  // Does all that are queued, without waiting for the kernel, and stops the
  // thread.
  void Stop();

 private:
  void Loop();
  Result<void> Remove(const PendingRemoval& removal);

  const Finish finish_;
  const std::function<void(LogLevel, const std::string&)> log_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<PendingRemoval> queue_;  // guarded by mutex_, as below
  uint64_t queued_ = 0;               // removals queued so far
  uint64_t done_ = 0;                 // of which done (or failed)
  std::optional<Error> error_;
  bool stop_ = false;
  std::unique_ptr<Rtnl> rtnl_;
  std::thread thread_;
};

}  // namespace ralph::sandbox
