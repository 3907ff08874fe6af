// The sandbox service's network side: the job address pool, the NFLOG
// listener that turns logged packets into NetEvents, the DNS forwarder, and
// the service-wide forwarding table. One per network namespace that hosts
// jobs (the appliance's root netns in the product; a test netns in tests).
//
// Start() changes the calling thread's network namespace only as configured:
// with enable_forwarding it sets net.ipv4.ip_forward and
// net.ipv6.conf.all.forwarding to 1 and commits table inet ralph_service,
// which lets the kernel forward only to and from the job veths.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "platform/result.h"
#include "sandbox/net/address_pool.h"
#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

struct NetworkServiceConfig {
  std::string pool_v4 = "10.254.0.0/16";        // /30 per job
  std::string pool_v6 = "fd52:616c:7068::/48";  // /64 per job, must be ULA
  // Where allowlisted queries go: "198.51.100.53", "198.51.100.53:5353",
  // "2001:db8::53", "[2001:db8::53]:53". Empty: the first nameserver of
  // /etc/resolv.conf.
  std::string upstream_dns;
  uint16_t nflog_group = 7770;
  // Host-side veths are "<prefix><slot>"; at most 8 bytes.
  std::string ifname_prefix = "rj";
  bool enable_forwarding = true;
  uint32_t dns_min_ttl = 1;     // seconds an answered address stays open, at least
  uint32_t dns_max_ttl = 3600;  // and at most
  // Connection events per job and second; beyond it they are counted and
  // reported as one "rate-limited: N events suppressed" event (a job that
  // floods blocked destinations must not flood the audit log).
  uint32_t max_events_per_second = 200;
};

class DnsForwarder;
struct LoggedPacket;
class NflogListener;
class JobNetworkImpl;
class RateLimitedSink;

class NetworkService {
 public:
  // kInvalidArgument names a bad config field; kBusy when the NFLOG group is
  // taken; other errors name the step. Removes links and tables left behind
  // by a previous service that died ("<prefix><n>", "ralph_<prefix><n>").
  static Result<std::unique_ptr<NetworkService>> Start(const NetworkServiceConfig& config);
  // Jobs must be torn down first. Removes the service table.
  ~NetworkService();

  // See JobNetwork::Create.
  Result<std::unique_ptr<JobNetwork>> CreateJob(const std::string& job_id, pid_t child_pid,
                                                const NetworkSpec& spec,
                                                NetEventSinkInterface* events);

  // The process-wide service behind JobNetwork::Create(), started on first
  // use. SetDefaultConfig must come before that first use (kInvalidState after).
  static Result<NetworkService*> Default();
  static Result<void> SetDefaultConfig(const NetworkServiceConfig& config);

  size_t live_jobs() const { return pool_->in_use(); }

 private:
  friend class JobNetworkImpl;
  friend class RateLimitedSink;
  struct Registered {
    std::string job_id;
    NetEventSinkInterface* sink = nullptr;
    int64_t window_start_ms = 0;
    uint32_t in_window = 0;
    uint64_t suppressed = 0;
  };
  // Reports the suppressed count, if any, and starts a new window.
  static void FlushSuppressed(Registered& job);

  NetworkService(const NetworkServiceConfig& config, std::unique_ptr<AddressPool> pool);
  void OnLoggedPacket(const LoggedPacket& packet);
  // Hands `event` to the job's sink, within the job's event rate.
  void Deliver(const std::string& ifname, NetEvent event);
  void Register(const std::string& ifname, Registered job);
  void Unregister(const std::string& ifname);

  NetworkServiceConfig config_;
  std::unique_ptr<AddressPool> pool_;
  std::mutex registry_mutex_;
  std::map<std::string, Registered> registry_;
  std::unique_ptr<DnsForwarder> dns_;
  std::unique_ptr<NflogListener> nflog_;
  bool service_table_ = false;
};

}  // namespace ralph::sandbox
