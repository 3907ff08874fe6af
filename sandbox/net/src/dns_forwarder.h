// Doing: the DNS forwarder of the sandbox service. One thread, epoll; per job
// a UDP and a TCP listener on each host-side veth address (port 53).
// Allowlisted queries go to the upstream resolver; each A/AAAA address in the
// answer is opened (nft set element with the record's TTL) before the answer
// reaches the job. Everything else gets REFUSED and is never forwarded.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

struct DnsJobConfig {
  std::string key;  // the job's host ifname, unique per live job
  std::string job_id;
  DnsAllowlist allowlist;
  std::vector<IpPrefix> listen;  // host-side veth addresses
  NetEventSinkInterface* sink = nullptr;
};

class DnsForwarder {
 public:
  // Opens `address` for the job `key` for `ttl_seconds`.
  using Opener =
      std::function<Result<void>(const std::string& key, const IpPrefix& address, uint32_t ttl)>;

  struct Options {
    sockaddr_storage upstream{};
    socklen_t upstream_len = 0;
    uint32_t min_ttl = 1;
    uint32_t max_ttl = 3600;
    int upstream_timeout_ms = 3000;
  };

  static Result<std::unique_ptr<DnsForwarder>> Start(const Options& options, Opener opener);
  ~DnsForwarder();

  // Binds the job's listeners. kAlreadyExists / kIo name the address.
  Result<void> AddJob(DnsJobConfig job);
  // Closes the job's listeners, connections and pending queries. After it
  // returns, the job's sink is never called again.
  void RemoveJob(const std::string& key);

 private:
  enum class Kind { kWake, kUdpListener, kTcpListener, kTcpConnection, kUpstream };
  struct Item {
    Kind kind = Kind::kWake;
    UniqueFd fd;
    std::string job_key;
    // kTcpConnection: bytes received so far.
    std::vector<uint8_t> buffer;
    // kUpstream: where the answer goes.
    uint64_t client_item = 0;  // listener (UDP) or connection (TCP)
    sockaddr_storage client{};
    socklen_t client_len = 0;
    uint16_t client_id = 0;
    uint16_t upstream_id = 0;
    std::string name;
    int64_t deadline_ms = 0;
  };
  struct Job {
    DnsJobConfig config;
    std::vector<uint64_t> items;
  };

  DnsForwarder(const Options& options, Opener opener, UniqueFd epoll, UniqueFd wake)
      : options_(options),
        opener_(std::move(opener)),
        epoll_(std::move(epoll)),
        wake_(std::move(wake)) {}

  void Run();
  uint64_t AddItem(Item item, uint32_t events);  // mutex_ held
  void RemoveItem(uint64_t id);                  // mutex_ held
  void HandleUdp(uint64_t id);
  void HandleAccept(uint64_t id);
  void HandleTcpData(uint64_t id);
  void HandleUpstream(uint64_t id);
  void HandleQuery(const std::string& job_key, uint64_t client_item, const sockaddr_storage& client,
                   socklen_t client_len, std::vector<uint8_t> query, Protocol protocol);
  void Reply(uint64_t client_item, const sockaddr_storage& client, socklen_t client_len,
             const std::vector<uint8_t>& message);
  void Emit(const Job& job, const std::string& name, Protocol protocol, NetVerdict verdict,
            const std::string& reason);
  void SweepTimeouts();

  Options options_;
  Opener opener_;
  UniqueFd epoll_;
  UniqueFd wake_;
  std::mutex mutex_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Item> items_;
  std::map<std::string, Job> jobs_;
  // One receive buffer for the thread (a DNS message is at most 64 KiB).
  static constexpr size_t kScratchSize = 65535;
  std::unique_ptr<uint8_t[]> scratch_{new uint8_t[kScratchSize]};
  std::thread thread_;
};

}  // namespace ralph::sandbox
