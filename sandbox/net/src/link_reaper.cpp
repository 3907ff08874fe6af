#include "link_reaper.h"

#include <net/if.h>

#include <fmt/format.h>

namespace ralph::sandbox {

LinkReaper::~LinkReaper() {
  Stop();
}

Result<void> LinkReaper::Queue(PendingRemoval removal) {
  std::unique_lock lock(mutex_);
  if (!rtnl_) {
    auto rtnl = Rtnl::Open();
    if (!rtnl) return std::move(rtnl).error().WithContext("starting the link reaper");
    rtnl_ = std::make_unique<Rtnl>(std::move(*rtnl));
  }
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  removal.deadline = std::chrono::steady_clock::now() + kKernelGrace;
  queue_.push_back(std::move(removal));
  ++queued_;
  lock.unlock();
  cv_.notify_all();
  return {};
}

void LinkReaper::Stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();  // after it has done the whole queue
}

void LinkReaper::Loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to do
    const PendingRemoval& oldest = queue_.front();
    bool link_gone = oldest.ifname.empty() || if_nametoindex(oldest.ifname.c_str()) == 0;
    if (!link_gone && !stop_ && std::chrono::steady_clock::now() < oldest.deadline) {
      cv_.wait_for(lock, kReapPoll);
      continue;
    }
    PendingRemoval removal = std::move(queue_.front());
    queue_.pop_front();
    if (link_gone) removal.ifname.clear();
    lock.unlock();
    auto removed = Remove(removal);
    if (!removed && log_) log_(LogLevel::kWarning, removed.error().ToString());
    lock.lock();
    if (!removed && !error_) error_ = std::move(removed).error();
    ++done_;
    cv_.notify_all();
  }
}

Result<void> LinkReaper::Remove(const PendingRemoval& removal) {
  auto context = [&] { return fmt::format("removing the network of job {}", removal.job_id); };
  // Link first: the table keeps dropping whatever the link still carries.
  // When the job's namespace died first, the kernel has already deleted
  // the pair and this finds nothing (success).
  if (!removal.ifname.empty()) TRY_CTX(rtnl_->DeleteLink(removal.ifname), context());
  TRY_CTX(finish_(removal), context());
  return {};
}

Result<void> LinkReaper::WaitForRemovals() {
  std::unique_lock lock(mutex_);
  uint64_t target = queued_;
  cv_.wait(lock, [&] { return done_ >= target; });
  if (error_) {
    Error error = std::move(*error_);
    error_.reset();
    return error;
  }
  return {};
}

}  // namespace ralph::sandbox
