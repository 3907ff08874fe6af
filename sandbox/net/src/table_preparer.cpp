#include "table_preparer.h"

namespace ralph::sandbox {

TablePreparer::~TablePreparer() {
  Stop();
}

std::optional<JobAddresses> TablePreparer::Take(const std::string& key) {
  if (key.empty()) return std::nullopt;
  std::lock_guard lock(mutex_);
  if (key != key_ || prepared_.empty()) return std::nullopt;
  JobAddresses addresses = prepared_.front();
  prepared_.pop_front();
  cv_.notify_all();  // one to make again
  return addresses;
}

void TablePreparer::SwitchKey(std::string key) {
  if (key == key_) return;
  // Tables for another spec are of no use to the next jobs: to be dropped.
  discard_.insert(discard_.end(), prepared_.begin(), prepared_.end());
  prepared_.clear();
  key_ = std::move(key);
}

void TablePreparer::Request(const NetworkSpec& spec, std::string key) {
  std::lock_guard lock(mutex_);
  SwitchKey(std::move(key));  // the stale ones go by the thread, off the caller's path
  spec_ = spec;
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  cv_.notify_all();
}

Result<void> TablePreparer::PrepareNow(const NetworkSpec& spec, std::string key) {
  {
    std::lock_guard lock(mutex_);
    if (key == key_ && !prepared_.empty()) return {};
  }
  JobAddresses addresses = TRY(prepare_(spec));
  std::vector<JobAddresses> stale;
  {
    std::lock_guard lock(mutex_);
    SwitchKey(std::move(key));
    prepared_.push_back(addresses);
    // Without the thread nobody else drops them.
    if (!thread_.joinable()) stale.swap(discard_);
  }
  if (!stale.empty()) drop_(std::move(stale));
  return {};
}

void TablePreparer::Loop() {
  std::unique_lock lock(mutex_);
  auto wanted = [&] { return spec_ && prepared_.size() < target_; };
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !discard_.empty() || wanted(); });
    if (stop_) break;
    busy_ = true;
    if (!discard_.empty()) {
      std::vector<JobAddresses> stale(discard_.begin(), discard_.end());
      discard_.clear();
      lock.unlock();
      drop_(std::move(stale));
      lock.lock();
    } else {
      NetworkSpec spec = *spec_;
      std::string key = key_;
      lock.unlock();
      auto prepared = prepare_(spec);
      lock.lock();
      if (!prepared) {
        // Not retried until the next job asks again: a failing kernel must
        // not be hammered from the background.
        if (log_) log_(LogLevel::kWarning, prepared.error().ToString());
        spec_.reset();
      } else if (key != key_) {
        discard_.push_back(*prepared);  // the spec changed meanwhile
      } else {
        prepared_.push_back(*prepared);
      }
    }
    busy_ = false;
    cv_.notify_all();
  }
}

size_t TablePreparer::WaitUntilIdle() {
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] {
    return stop_ || (!busy_ && discard_.empty() && (!spec_ || prepared_.size() >= target_));
  });
  return prepared_.size();
}

void TablePreparer::Stop() {
  if (thread_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // What the thread or PrepareNow made and no job took.
  std::vector<JobAddresses> left;
  {
    std::lock_guard lock(mutex_);
    left.assign(prepared_.begin(), prepared_.end());
    left.insert(left.end(), discard_.begin(), discard_.end());
    prepared_.clear();
    discard_.clear();
  }
  if (!left.empty()) drop_(std::move(left));
}

}  // namespace ralph::sandbox
