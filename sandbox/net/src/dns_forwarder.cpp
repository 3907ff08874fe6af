#include "dns_forwarder.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "sandbox/net/dns_message.h"

namespace ralph::sandbox {
namespace {

constexpr size_t kMaxTcpConnectionsPerJob = 16;
constexpr size_t kMaxPendingPerJob = 64;
constexpr int64_t kTcpIdleMs = 10000;

int64_t NowMs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

socklen_t ToSockaddr(const IpPrefix& address, uint16_t port, sockaddr_storage& storage) {
  std::memset(&storage, 0, sizeof(storage));
  if (address.family == IpFamily::kV4) {
    // reinterpret_cast: sockaddr_storage is the generic buffer for any family.
    auto* in = reinterpret_cast<sockaddr_in*>(&storage);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    std::memcpy(&in->sin_addr, address.bytes.data(), 4);
    return sizeof(sockaddr_in);
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&storage);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(port);
  std::memcpy(&in6->sin6_addr, address.bytes.data(), 16);
  return sizeof(sockaddr_in6);
}

Result<UniqueFd> Listen(const IpPrefix& address, int type) {
  int family = address.family == IpFamily::kV4 ? AF_INET : AF_INET6;
  UniqueFd fd(socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  std::string what = fmt::format("DNS {} listener on {}", type == SOCK_DGRAM ? "UDP" : "TCP",
                                 address.AddressString());
  if (!fd) return Error::FromErrno(what + ": socket", errno);
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // The veth address may still be settling (IPv6); bind anyway.
  if (family == AF_INET) {
    setsockopt(fd.get(), IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
  } else {
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  sockaddr_storage storage;
  socklen_t len = ToSockaddr(address, 53, storage);
  // reinterpret_cast: the socket API takes the generic sockaddr.
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), len) != 0) {
    return Error::FromErrno(what + ": bind", errno);
  }
  if (type == SOCK_STREAM && listen(fd.get(), 16) != 0) {
    return Error::FromErrno(what + ": listen", errno);
  }
  return fd;
}

uint16_t RandomId() {
  uint16_t id = 0;
  if (getrandom(&id, sizeof(id), 0) != sizeof(id)) id = static_cast<uint16_t>(NowMs());
  return id;
}

}  // namespace

Result<std::unique_ptr<DnsForwarder>> DnsForwarder::Start(const Options& options, Opener opener) {
  if (options.upstream_len == 0) {
    return Error::Make(ErrorCode::kInvalidArgument, "DNS forwarder: no upstream resolver");
  }
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return Error::FromErrno("DNS forwarder: epoll_create1", errno);
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Error::FromErrno("DNS forwarder: eventfd", errno);
  std::unique_ptr<DnsForwarder> forwarder(
      new DnsForwarder(options, std::move(opener), std::move(epoll), std::move(wake)));
  epoll_event event{.events = EPOLLIN, .data = {.u64 = 0}};
  if (epoll_ctl(forwarder->epoll_.get(), EPOLL_CTL_ADD, forwarder->wake_.get(), &event) != 0) {
    return Error::FromErrno("DNS forwarder: epoll_ctl", errno);
  }
  forwarder->thread_ = std::thread([raw = forwarder.get()] { raw->Run(); });
  return forwarder;
}

DnsForwarder::~DnsForwarder() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
    // Only fails on counter overflow, which still leaves it readable.
  }
  if (thread_.joinable()) thread_.join();
}

uint64_t DnsForwarder::AddItem(Item item, uint32_t events) {
  uint64_t id = next_id_++;
  epoll_event event{.events = events, .data = {.u64 = id}};
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, item.fd.get(), &event) != 0) return 0;
  auto job = jobs_.find(item.job_key);
  if (job != jobs_.end()) job->second.items.push_back(id);
  items_.emplace(id, std::move(item));
  return id;
}

void DnsForwarder::RemoveItem(uint64_t id) {
  auto it = items_.find(id);
  if (it == items_.end()) return;
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd.get(), nullptr);
  auto job = jobs_.find(it->second.job_key);
  if (job != jobs_.end()) std::erase(job->second.items, id);
  items_.erase(it);
}

Result<void> DnsForwarder::AddJob(DnsJobConfig config) {
  std::vector<Item> listeners;
  for (const IpPrefix& address : config.listen) {
    for (int type : {SOCK_DGRAM, SOCK_STREAM}) {
      Item item;
      item.kind = type == SOCK_DGRAM ? Kind::kUdpListener : Kind::kTcpListener;
      item.fd = TRY(Listen(address, type));
      item.job_key = config.key;
      listeners.push_back(std::move(item));
    }
  }
  std::lock_guard lock(mutex_);
  std::string key = config.key;
  if (jobs_.count(key)) {
    return Error::Make(ErrorCode::kAlreadyExists,
                       fmt::format("DNS forwarder: job {} already registered", key));
  }
  jobs_.emplace(key, Job{std::move(config), {}});
  for (Item& item : listeners) {
    if (AddItem(std::move(item), EPOLLIN) == 0) {
      int err = errno;
      std::vector<uint64_t> items = jobs_.at(key).items;
      for (uint64_t id : items) RemoveItem(id);
      jobs_.erase(key);
      return Error::FromErrno("DNS forwarder: epoll_ctl", err);
    }
  }
  return {};
}

void DnsForwarder::RemoveJob(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto job = jobs_.find(key);
  if (job == jobs_.end()) return;
  std::vector<uint64_t> items = job->second.items;
  for (uint64_t id : items) RemoveItem(id);
  jobs_.erase(key);
}

void DnsForwarder::Run() {
  epoll_event events[32];
  for (;;) {
    int n = epoll_wait(epoll_.get(), events, 32, 500);
    if (n < 0 && errno != EINTR) return;
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    for (int i = 0; i < n; ++i) {
      uint64_t id = events[i].data.u64;
      auto it = items_.find(id);
      if (it == items_.end()) continue;  // removed while we waited
      switch (it->second.kind) {
        case Kind::kWake: break;
        case Kind::kUdpListener: HandleUdp(id); break;
        case Kind::kTcpListener: HandleAccept(id); break;
        case Kind::kTcpConnection: HandleTcpData(id); break;
        case Kind::kUpstream: HandleUpstream(id); break;
      }
    }
    SweepTimeouts();
  }
}

void DnsForwarder::Emit(const Job& job, const std::string& name, Protocol protocol,
                        NetVerdict verdict, const std::string& reason) {
  if (!job.config.sink) return;
  NetEvent event;
  event.job_id = job.config.job_id;
  event.destination = name;
  event.port = 53;
  event.protocol = protocol;
  event.verdict = verdict;
  event.reason = reason;
  job.config.sink->OnNetEvent(event);
}

void DnsForwarder::HandleUdp(uint64_t id) {
  Item& listener = items_.at(id);
  for (int budget = 0; budget < 64; ++budget) {
    sockaddr_storage client{};
    socklen_t client_len = sizeof(client);
    // reinterpret_cast: the socket API takes the generic sockaddr.
    ssize_t n = recvfrom(listener.fd.get(), scratch_.get(), kScratchSize, 0,
                         reinterpret_cast<sockaddr*>(&client), &client_len);
    if (n < 0) return;
    std::string job_key = items_.at(id).job_key;
    HandleQuery(job_key, id, client, client_len,
                std::vector<uint8_t>(scratch_.get(), scratch_.get() + n), Protocol::kUdp);
    if (!items_.count(id)) return;
  }
}

void DnsForwarder::HandleAccept(uint64_t id) {
  std::string job_key = items_.at(id).job_key;
  UniqueFd fd(accept4(items_.at(id).fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!fd) return;
  auto job = jobs_.find(job_key);
  if (job == jobs_.end()) return;
  size_t connections = 0;
  for (uint64_t item : job->second.items) {
    auto it = items_.find(item);
    if (it != items_.end() && it->second.kind == Kind::kTcpConnection) ++connections;
  }
  if (connections >= kMaxTcpConnectionsPerJob) return;  // closes it
  Item item;
  item.kind = Kind::kTcpConnection;
  item.fd = std::move(fd);
  item.job_key = job_key;
  item.deadline_ms = NowMs() + kTcpIdleMs;
  AddItem(std::move(item), EPOLLIN);
}

void DnsForwarder::HandleTcpData(uint64_t id) {
  Item& connection = items_.at(id);
  uint8_t chunk[4096];
  ssize_t n = read(connection.fd.get(), chunk, sizeof(chunk));
  if (n <= 0) {
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    RemoveItem(id);
    return;
  }
  connection.buffer.insert(connection.buffer.end(), chunk, chunk + n);
  connection.deadline_ms = NowMs() + kTcpIdleMs;
  // RFC 1035 4.2.2: each message is preceded by a two-byte length.
  while (connection.buffer.size() >= 2) {
    size_t length = static_cast<size_t>(connection.buffer[0] << 8 | connection.buffer[1]);
    if (connection.buffer.size() < 2 + length) break;
    std::vector<uint8_t> query(connection.buffer.begin() + 2,
                               connection.buffer.begin() + 2 + static_cast<long>(length));
    connection.buffer.erase(connection.buffer.begin(),
                            connection.buffer.begin() + 2 + static_cast<long>(length));
    std::string job_key = connection.job_key;
    HandleQuery(job_key, id, {}, 0, std::move(query), Protocol::kTcp);
    if (!items_.count(id)) return;
  }
}

void DnsForwarder::HandleQuery(const std::string& job_key, uint64_t client_item,
                               const sockaddr_storage& client, socklen_t client_len,
                               std::vector<uint8_t> query, Protocol protocol) {
  auto job = jobs_.find(job_key);
  if (job == jobs_.end()) return;
  DnsQueryDecision decision = DecideDnsQuery(query, job->second.config.allowlist);
  if (decision.action == DnsAction::kFormErr) {
    Emit(job->second, decision.name, protocol, NetVerdict::kDenied, decision.reason);
    Reply(client_item, client, client_len, MakeDnsError(query, kDnsFormErr));
    return;
  }
  if (decision.action == DnsAction::kRefuse) {
    Emit(job->second, decision.name, protocol, NetVerdict::kDenied, decision.reason);
    Reply(client_item, client, client_len, MakeDnsError(query, kDnsRefused));
    return;
  }
  size_t pending = 0;
  for (uint64_t item : job->second.items) {
    auto it = items_.find(item);
    if (it != items_.end() && it->second.kind == Kind::kUpstream) ++pending;
  }
  if (pending >= kMaxPendingPerJob) {
    Reply(client_item, client, client_len, MakeDnsError(query, kDnsServFail));
    return;
  }
  // A fresh socket and id per query: answers cannot be matched across jobs,
  // and the job does not choose the id the upstream sees.
  int family = options_.upstream.ss_family;
  UniqueFd fd(socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  // reinterpret_cast: the socket API takes the generic sockaddr.
  if (!fd || connect(fd.get(), reinterpret_cast<const sockaddr*>(&options_.upstream),
                     options_.upstream_len) != 0) {
    Reply(client_item, client, client_len, MakeDnsError(query, kDnsServFail));
    return;
  }
  Item item;
  item.kind = Kind::kUpstream;
  item.job_key = job_key;
  item.client_item = client_item;
  item.client = client;
  item.client_len = client_len;
  item.client_id = decision.id;
  item.upstream_id = RandomId();
  item.name = decision.name;
  item.deadline_ms = NowMs() + options_.upstream_timeout_ms;
  query[0] = static_cast<uint8_t>(item.upstream_id >> 8);
  query[1] = static_cast<uint8_t>(item.upstream_id & 0xff);
  item.buffer = query;  // kept for the SERVFAIL on timeout
  if (send(fd.get(), query.data(), query.size(), 0) != static_cast<ssize_t>(query.size())) {
    Reply(client_item, client, client_len, MakeDnsError(query, kDnsServFail));
    return;
  }
  item.fd = std::move(fd);
  AddItem(std::move(item), EPOLLIN);
}

void DnsForwarder::HandleUpstream(uint64_t id) {
  Item& pending = items_.at(id);
  ssize_t n = recv(pending.fd.get(), scratch_.get(), kScratchSize, 0);
  if (n < 0) return;
  std::vector<uint8_t> answer(scratch_.get(), scratch_.get() + n);
  auto job = jobs_.find(pending.job_key);
  if (job == jobs_.end()) {
    RemoveItem(id);
    return;
  }
  Protocol protocol = pending.client_len == 0 ? Protocol::kTcp : Protocol::kUdp;
  auto addresses = ExtractDnsAddresses(answer, pending.upstream_id, pending.name);
  if (!addresses) return;  // not our answer (spoofed or stale): keep waiting
  // Open every answered address before the job sees the answer, so its
  // connect right after resolving finds the door open.
  for (const DnsAddress& address : *addresses) {
    uint32_t ttl = std::clamp(address.ttl, options_.min_ttl, options_.max_ttl);
    auto opened = opener_(pending.job_key, address.address, ttl);
    if (!opened) {
      Emit(job->second, pending.name, protocol, NetVerdict::kDenied,
           fmt::format("dns: opening {} failed: {}", address.address.AddressString(),
                       opened.error().message()));
      std::vector<uint8_t> query = pending.buffer;
      query[0] = static_cast<uint8_t>(pending.client_id >> 8);
      query[1] = static_cast<uint8_t>(pending.client_id & 0xff);
      Reply(pending.client_item, pending.client, pending.client_len,
            MakeDnsError(query, kDnsServFail));
      RemoveItem(id);
      return;
    }
  }
  Emit(job->second, pending.name, protocol, NetVerdict::kAllowed, "dns: allowed");
  answer[0] = static_cast<uint8_t>(pending.client_id >> 8);
  answer[1] = static_cast<uint8_t>(pending.client_id & 0xff);
  Reply(pending.client_item, pending.client, pending.client_len, answer);
  RemoveItem(id);
}

void DnsForwarder::Reply(uint64_t client_item, const sockaddr_storage& client, socklen_t client_len,
                         const std::vector<uint8_t>& message) {
  auto it = items_.find(client_item);
  if (it == items_.end()) return;
  if (it->second.kind == Kind::kUdpListener) {
    // reinterpret_cast: the socket API takes the generic sockaddr.
    sendto(it->second.fd.get(), message.data(), message.size(), MSG_DONTWAIT,
           reinterpret_cast<const sockaddr*>(&client), client_len);
    return;
  }
  std::vector<uint8_t> framed;
  framed.push_back(static_cast<uint8_t>(message.size() >> 8));
  framed.push_back(static_cast<uint8_t>(message.size() & 0xff));
  framed.insert(framed.end(), message.begin(), message.end());
  // Non-blocking: a job that does not read its answers loses them.
  if (send(it->second.fd.get(), framed.data(), framed.size(), MSG_DONTWAIT | MSG_NOSIGNAL) !=
      static_cast<ssize_t>(framed.size())) {
    RemoveItem(client_item);
  }
}

void DnsForwarder::SweepTimeouts() {
  int64_t now = NowMs();
  std::vector<uint64_t> expired;
  for (auto& [id, item] : items_) {
    if ((item.kind == Kind::kUpstream || item.kind == Kind::kTcpConnection) &&
        item.deadline_ms < now) {
      expired.push_back(id);
    }
  }
  for (uint64_t id : expired) {
    Item& item = items_.at(id);
    if (item.kind == Kind::kUpstream) {
      std::vector<uint8_t> query = item.buffer;
      query[0] = static_cast<uint8_t>(item.client_id >> 8);
      query[1] = static_cast<uint8_t>(item.client_id & 0xff);
      Reply(item.client_item, item.client, item.client_len, MakeDnsError(query, kDnsServFail));
    }
    RemoveItem(id);
  }
}

}  // namespace ralph::sandbox
