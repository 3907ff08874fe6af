// NetworkServiceConfig::prepared_tables: job tables committed ahead, for the
// spec (NetworkSpecKey) the last job had, on free address slots, so that the
// next job with an equal spec takes one and its start only makes and
// configures its veth. The commits run on a thread of its own, started by
// the first Request(); tables prepared for another spec are dropped there,
// off the jobs' paths. Thread-safe.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "platform/log.h"
#include "platform/result.h"
#include "sandbox/net/address_pool.h"
#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

class TablePreparer {
 public:
  // Commits a table for `spec` on a free slot (which it then holds).
  using Prepare = std::function<Result<JobAddresses>(const NetworkSpec& spec)>;
  // Deletes prepared tables and returns their slots.
  using Drop = std::function<void(std::vector<JobAddresses> tables)>;

  TablePreparer(uint32_t target, Prepare prepare, Drop drop,
                std::function<void(LogLevel, const std::string&)> log)
      : target_(target),
        prepare_(std::move(prepare)),
        drop_(std::move(drop)),
        log_(std::move(log)) {}
  // Stop().
  ~TablePreparer();

  // A table prepared for `key`, now the caller's; nullopt when there is none
  // (or `key` is empty).
  std::optional<JobAddresses> Take(const std::string& key);
  // Keeps up to `target` tables prepared for `spec` (key `key`) in the
  // background; those of another spec are dropped.
  void Request(const NetworkSpec& spec, std::string key);
  // Prepares one table for `spec` on the calling thread unless one is
  // prepared already; those of another spec are dropped.
  Result<void> PrepareNow(const NetworkSpec& spec, std::string key);
  // Blocks until the thread has nothing left to do; how many are prepared.
  size_t WaitUntilIdle();
  // Stops the thread and drops every table nobody took.
  void Stop();

 private:
  void Loop();
  // Makes `key` the prepared tables' spec, moving those of another one to
  // discard_; mutex_ held.
  void SwitchKey(std::string key);

  const uint32_t target_;
  const Prepare prepare_;
  const Drop drop_;
  const std::function<void(LogLevel, const std::string&)> log_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::string key_;                    // guarded by mutex_, as all below
  std::optional<NetworkSpec> spec_;    // what to prepare for; none: nothing
  std::deque<JobAddresses> prepared_;  // committed, for key_
  std::vector<JobAddresses> discard_;  // committed for another spec: to drop
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ralph::sandbox
