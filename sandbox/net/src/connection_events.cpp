#include "connection_events.h"

#include <time.h>

#include <fmt/format.h>

#include "nflog_listener.h"

namespace ralph::sandbox {
namespace {

class KeyedSink final : public NetEventSinkInterface {
 public:
  KeyedSink(ConnectionEvents* events, std::string key) : events_(events), key_(std::move(key)) {}
  void OnNetEvent(const NetEvent& event) override { events_->Deliver(key_, event); }

 private:
  ConnectionEvents* events_;
  std::string key_;
};

}  // namespace

int64_t ConnectionEvents::MonotonicMs() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
}

void ConnectionEvents::Register(const std::string& key, std::string job_id,
                                NetEventSinkInterface* sink) {
  std::lock_guard lock(mutex_);
  registry_[key] = Registered{.job_id = std::move(job_id), .sink = sink};
}

void ConnectionEvents::Unregister(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto it = registry_.find(key);
  if (it == registry_.end()) return;
  FlushSuppressed(it->second);
  registry_.erase(it);
}

void ConnectionEvents::FlushSuppressed(Registered& job) {
  if (job.suppressed > 0 && job.sink) {
    NetEvent event;
    event.job_id = job.job_id;
    event.verdict = NetVerdict::kDenied;
    event.reason = fmt::format("rate-limited: {} events suppressed", job.suppressed);
    job.sink->OnNetEvent(event);
  }
  job.suppressed = 0;
  job.in_window = 0;
}

void ConnectionEvents::OnLoggedPacket(const LoggedPacket& packet) {
  NetEvent event;
  event.destination = packet.destination;
  event.port = packet.port;
  event.protocol = packet.protocol;
  event.verdict = packet.prefix.verdict;
  event.reason = packet.prefix.reason;
  Deliver(packet.prefix.ifname, std::move(event));
}

void ConnectionEvents::Deliver(const std::string& key, NetEvent event) {
  std::lock_guard lock(mutex_);
  auto it = registry_.find(key);
  if (it == registry_.end() || !it->second.sink) return;
  Registered& job = it->second;
  int64_t now_ms = clock_();
  if (now_ms - job.window_start_ms >= 1000) {
    FlushSuppressed(job);
    job.window_start_ms = now_ms;
  }
  if (job.in_window >= max_per_second_) {
    ++job.suppressed;
    ++suppressed_total_;
    return;
  }
  ++job.in_window;
  event.job_id = job.job_id;
  job.sink->OnNetEvent(event);
}

std::unique_ptr<NetEventSinkInterface> ConnectionEvents::SinkFor(std::string key) {
  return std::make_unique<KeyedSink>(this, std::move(key));
}

uint64_t ConnectionEvents::suppressed_total() const {
  std::lock_guard lock(mutex_);
  return suppressed_total_;
}

}  // namespace ralph::sandbox
