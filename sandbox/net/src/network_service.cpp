#include "sandbox/net/network_service.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstddef>
#include <cstring>

#include <fmt/format.h>

#include "dns_forwarder.h"
#include "nflog_listener.h"
#include "nft_apply.h"
#include "platform/file_io.h"
#include "rtnl.h"
#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {
namespace {

constexpr const char* kJobIfname = "eth0";
// Every network namespace's loopback device (LOOPBACK_IFINDEX,
// include/net/net_namespace.h).
constexpr int kLoopbackIndex = 1;

Result<std::pair<sockaddr_storage, socklen_t>> ParseUpstream(std::string text) {
  if (text.empty()) {
    // The first "nameserver <address>" line; a missing file names none.
    std::string resolv = ReadWholeFile("/etc/resolv.conf").value_or(std::string());
    auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
    for (std::string_view rest = resolv; !rest.empty() && text.empty();) {
      size_t end = rest.find('\n');
      std::string_view line = rest.substr(0, end);
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
      auto next_word = [&]() {
        while (!line.empty() && blank(line.front())) line.remove_prefix(1);
        size_t n = 0;
        while (n < line.size() && !blank(line[n])) ++n;
        std::string_view word = line.substr(0, n);
        line.remove_prefix(n);
        return word;
      };
      if (next_word() == "nameserver") text = std::string(next_word());
    }
    if (text.empty()) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         "upstream_dns is empty and /etc/resolv.conf names no nameserver");
    }
  }
  std::string host = text;
  uint16_t port = 53;
  auto parse_port = [&](std::string_view digits) -> Result<void> {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc() || end != digits.data() + digits.size() || value == 0 || value > 65535) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("upstream_dns \"{}\": bad port", text));
    }
    port = static_cast<uint16_t>(value);
    return {};
  };
  if (text.starts_with('[')) {
    size_t close = text.find(']');
    if (close == std::string::npos) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("upstream_dns \"{}\": missing ']'", text));
    }
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') {
        return Error::Make(ErrorCode::kInvalidArgument,
                           fmt::format("upstream_dns \"{}\": expected ':' after ']'", text));
      }
      TRY(parse_port(std::string_view(text).substr(close + 2)));
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    size_t colon = text.find(':');
    host = text.substr(0, colon);
    TRY(parse_port(std::string_view(text).substr(colon + 1)));
  }
  auto address = IpPrefix::Parse(host);
  if (!address || !address->is_address()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("upstream_dns \"{}\": not an IP address", text));
  }
  sockaddr_storage storage{};
  socklen_t len;
  if (address->family == IpFamily::kV4) {
    // reinterpret_cast: sockaddr_storage is the generic buffer for any family.
    auto* in = reinterpret_cast<sockaddr_in*>(&storage);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    std::memcpy(&in->sin_addr, address->bytes.data(), 4);
    len = sizeof(sockaddr_in);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&storage);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    std::memcpy(&in6->sin6_addr, address->bytes.data(), 16);
    len = sizeof(sockaddr_in6);
  }
  return std::make_pair(storage, len);
}

// The listed table named `name`, or null.
const NftTableInfo* FindTable(const std::vector<NftTableInfo>& tables, std::string_view name) {
  auto it = std::find_if(tables.begin(), tables.end(),
                         [&](const NftTableInfo& table) { return table.name == name; });
  return it == tables.end() ? nullptr : &*it;
}

// Whether `name` is listed as a warm job table.
bool ListedAsWarmJobTable(const std::vector<NftTableInfo>& tables, std::string_view name) {
  const NftTableInfo* table = FindTable(tables, name);
  return table && table->comment.starts_with(kWarmJobTableTag);
}

// Names "<prefix><digits>" of links in the calling thread's netns.
std::vector<std::string> StaleJobLinks(const std::string& prefix) {
  std::vector<std::string> names;
  struct if_nameindex* list = if_nameindex();
  if (!list) return names;
  for (struct if_nameindex* entry = list; entry->if_index != 0; ++entry) {
    std::string_view name = entry->if_name;
    if (!name.starts_with(prefix) || name.size() == prefix.size()) continue;
    std::string_view rest = name.substr(prefix.size());
    if (std::all_of(rest.begin(), rest.end(), [](char c) { return std::isdigit(c) != 0; })) {
      names.emplace_back(name);
    }
  }
  if_freenameindex(list);
  return names;
}

}  // namespace

// The DNS forwarder's sink for one job: its events go through the same
// per-job rate limit and unregistration as the NFLOG ones.
class RateLimitedSink final : public NetEventSinkInterface {
 public:
  RateLimitedSink(NetworkService* service, std::string ifname)
      : service_(service), ifname_(std::move(ifname)) {}
  void OnNetEvent(const NetEvent& event) override;

 private:
  NetworkService* service_;
  std::string ifname_;
};

class JobNetworkImpl final : public JobNetwork {
 public:
  JobNetworkImpl(NetworkService* service, std::string job_id, const NetworkSpec& spec,
                 std::optional<JobAddresses> addresses)
      : service_(service),
        job_id_(std::move(job_id)),
        enabled_(spec.enabled),
        addresses_(std::move(addresses)) {
    if (addresses_) {
      ifname_ = fmt::format("{}{}", service_->interface_prefix_, addresses_->slot);
      table_ = JobTableName(ifname_);
    }
  }
  ~JobNetworkImpl() override { IgnoreError(Teardown()); }

  Result<void> Teardown() override { return TeardownImpl(Veth::kDelete); }
  Result<void> TeardownWithNamespace() override { return TeardownImpl(Veth::kLeaveToKernel); }

 private:
  // What teardown does with the veth pair (see TeardownWithNamespace).
  enum class Veth { kDelete, kLeaveToKernel };
  Result<void> TeardownImpl(Veth veth) {
    if (torn_down_) return {};
    std::optional<Error> first;
    auto note = [&](Result<void> result) {
      if (!result && !first) first = std::move(result).error();
    };
    if (registered_) {
      service_->Unregister(ifname_);
      registered_ = false;
    }
    if (dns_registered_) {
      service_->dns_->RemoveJob(ifname_);
      dns_registered_ = false;
    }
    if (veth == Veth::kDelete && service_->config_.link_removal == LinkRemoval::kBackground &&
        addresses_) {
      // The reaper deletes the link, then the table, then returns the slot.
      auto queued = service_->QueueRemoval(
          {.job_id = job_id_,
           .ifname = veth_created_ ? ifname_ : std::string(),
           .table = table_created_ && !service_->IsWarmJobTable(table_) ? table_ : std::string(),
           .slot = addresses_->slot});
      if (!queued) {
        return std::move(queued).error().WithContext(
            fmt::format("tearing down network of job {}", job_id_));
      }
      veth_created_ = table_created_ = false;
      if (holds_service_table_) {
        std::lock_guard lock(service_->tables_mutex_);
        --service_->table_jobs_;
        holds_service_table_ = false;
      }
      torn_down_ = true;
      return {};
    }
    {
      std::lock_guard lock(service_->tables_mutex_);
      std::vector<std::string> tables;
      // A warm job table stays for the next job of its slot.
      if (table_created_ && service_->warm_job_tables_.count(table_) == 0) tables.push_back(table_);
      // The last job of a launcher that exits next: its service table goes
      // in the same transaction, so the kernel's RCU grace period for the
      // unregistered hooks passes while the launcher finishes its teardown
      // rather than in its exit (closing the nft socket waits for it).
      bool release = veth == Veth::kLeaveToKernel && service_->config_.release_when_idle &&
                     service_->config_.service_tables == ServiceTables::kPerService &&
                     holds_service_table_ && service_->table_jobs_ == 1 && service_->service_table_;
      if (release) tables.push_back(service_->service_table_name_);
      auto deleted = tables.empty() ? Result<void>() : service_->nft_->DeleteTables(tables);
      if (deleted) {
        table_created_ = false;
        if (release) service_->service_table_ = service_->service_table_stateful_ = false;
        if (holds_service_table_) --service_->table_jobs_;
        holds_service_table_ = false;
      }
      note(std::move(deleted));
    }
    // Left to the kernel: it goes with the job's netns.
    if (veth == Veth::kLeaveToKernel) veth_created_ = false;
    if (veth_created_) {
      auto rtnl = Rtnl::Open();
      if (!rtnl) {
        note(std::move(rtnl).error());
      } else {
        // Deleting one end removes the pair; when the job's netns died first
        // the pair is already gone and this finds nothing (success).
        auto deleted = rtnl->DeleteLink(ifname_);
        if (deleted) veth_created_ = false;
        note(std::move(deleted));
      }
    }
    if (first) return first->WithContext(fmt::format("tearing down network of job {}", job_id_));
    if (addresses_) service_->pool_->Release(addresses_->slot);
    torn_down_ = true;
    return {};
  }

 public:
  std::string resolver_address() const override {
    return addresses_ ? addresses_->host_v4.AddressString() : "";
  }
  std::string resolver_address_v6() const override {
    return addresses_ ? addresses_->host_v6.AddressString() : "";
  }
  std::string job_address_v4() const override {
    return addresses_ ? addresses_->job_v4.AddressString() : "";
  }
  std::string job_address_v6() const override {
    return addresses_ ? addresses_->job_v6.AddressString() : "";
  }
  std::string host_interface() const override { return ifname_; }

  // `plan`: null when the job's table was committed ahead (AdoptTable).
  Result<void> Setup(int netns_fd, const NftTablePlan* plan, DnsAllowlist allowlist,
                     NetEventSinkInterface* events);
  // The job's table already exists (a prepared table): Teardown deletes it.
  void AdoptTable() { table_created_ = true; }
  // Counts this job among those that need the service table, committing it
  // again if a launcher-mode teardown released it (release_when_idle).
  Result<void> HoldServiceTable(bool stateful) {
    std::lock_guard lock(service_->tables_mutex_);
    TRY_CTX(service_->CommitServiceTable(stateful), "committing the service table");
    ++service_->table_jobs_;
    holds_service_table_ = true;
    return {};
  }

 private:
  NetworkService* service_;
  std::string job_id_;
  bool enabled_;
  std::optional<JobAddresses> addresses_;
  std::string ifname_;
  std::string table_;
  bool veth_created_ = false;
  bool table_created_ = false;
  bool registered_ = false;
  bool dns_registered_ = false;
  bool torn_down_ = false;
  bool holds_service_table_ = false;
  std::unique_ptr<RateLimitedSink> dns_events_;
};

void RateLimitedSink::OnNetEvent(const NetEvent& event) {
  service_->Deliver(ifname_, event);
}

Result<void> JobNetworkImpl::Setup(int netns_fd, const NftTablePlan* plan, DnsAllowlist allowlist,
                                   NetEventSinkInterface* events) {
  Rtnl host = TRY(Rtnl::Open());
  TRY(host.CreateVeth(ifname_, kJobIfname, netns_fd));
  veth_created_ = true;

  const JobAddresses& a = *addresses_;
  {
    // A socket in the job's netns, made without a helper thread; each side
    // configured with one batch of requests.
    Rtnl job = TRY_CTX(Rtnl::OpenIn(netns_fd), "configuring the job side");
    int eth = TRY_CTX(job.LinkIndex(kJobIfname), "configuring the job side");
    Rtnl::Batch batch;
    batch.SetUp(kLoopbackIndex, "lo");
    batch.NoLinkLocal(eth, kJobIfname);
    batch.AddAddress(eth, kJobIfname, a.job_v4, JobAddresses::kV4LinkLength);
    batch.AddAddress(eth, kJobIfname, a.job_v6, JobAddresses::kV6LinkLength);
    batch.SetUp(eth, kJobIfname);
    batch.AddDefaultRoute(eth, kJobIfname, a.host_v4);
    batch.AddDefaultRoute(eth, kJobIfname, a.host_v6);
    TRY_CTX(job.Send(batch), "configuring the job side");
  }

  if (service_->config_.enable_forwarding) {
    TRY(WriteSysctl(fmt::format("/proc/sys/net/ipv4/conf/{}/forwarding", ifname_), "1"));
  }
  int host_index = TRY(host.LinkIndex(ifname_));
  Rtnl::Batch batch;
  batch.NoLinkLocal(host_index, ifname_);
  batch.AddAddress(host_index, ifname_, a.host_v4, JobAddresses::kV4LinkLength);
  batch.AddAddress(host_index, ifname_, a.host_v6, JobAddresses::kV6LinkLength);
  batch.SetUp(host_index, ifname_);
  TRY(host.Send(batch));

  // The rules exist before the job can send anything through the veth: the
  // job is still held by the spawner until Create() returns. A prepared
  // table has existed since before the veth.
  if (plan) {
    auto applied = service_->CommitJobTable(*plan, ExistingTable::kFail);
    // EEXIST: a table of that name is in the way; EPERM: one that another
    // socket owns (nft_table_lookup refuses before NLM_F_EXCL is looked at).
    if (!applied && (applied.error().code() == ErrorCode::kAlreadyExists ||
                     applied.error().code() == ErrorCode::kPermissionDenied)) {
      // The table is not ours (this slot is free in our pool) but its name is
      // in our instance's name space, which we hold. Unowned, it is a leftover
      // of a previous holder of the instance, which is gone: replace it in the
      // same transaction. Owned, a live socket holds it (the kernel deletes
      // owned tables with their socket): not ours to touch.
      auto tables = TRY_CTX(service_->nft_->ListTables(), "checking a table in the way");
      const NftTableInfo* it = FindTable(tables, plan->name);
      if (it && it->owned) {
        return Error::Make(ErrorCode::kAlreadyExists,
                           fmt::format("nft table inet {} exists and is owned by the live netlink "
                                       "socket with port id {}",
                                       plan->name, it->owner_portid));
      }
      if (it) {
        applied = service_->CommitJobTable(*plan, ExistingTable::kReplace);
        if (applied) {
          service_->Log(LogLevel::kInfo, fmt::format("replaced stale table inet {}", plan->name));
        }
      }
    }
    TRY(std::move(applied));
    table_created_ = true;
  }

  service_->Register(ifname_, {job_id_, events});
  registered_ = true;
  if (!allowlist.empty()) {
    dns_events_ = std::make_unique<RateLimitedSink>(service_, ifname_);
    DnsForwarder* dns = TRY(service_->Dns());
    TRY(dns->AddJob(DnsJobConfig{.key = ifname_,
                                 .job_id = job_id_,
                                 .allowlist = std::move(allowlist),
                                 .listen = {a.host_v4, a.host_v6},
                                 .sink = dns_events_.get()}));
    dns_registered_ = true;
  }
  return {};
}

NetworkService::NetworkService(const NetworkServiceConfig& config, UniqueFd claim,
                               unsigned instance, std::unique_ptr<AddressPool> pool)
    : config_(config),
      claim_(std::move(claim)),
      instance_(instance),
      interface_prefix_(
          fmt::format("{}{}", config.ifname_prefix, static_cast<char>('a' + instance))),
      service_table_name_(ServiceTableName(interface_prefix_)),
      pool_(std::move(pool)) {}

namespace {

// Claims instance `n` of `ifname_prefix` in the calling thread's netns, or
// nullopt when a live socket holds it.
Result<std::optional<UniqueFd>> TryClaimInstance(const std::string& ifname_prefix, unsigned n) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("claiming a network service instance: socket", errno);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::string name = fmt::format("ralph-sandbox-net.{}.{}", ifname_prefix, n);
  // Abstract name: a leading NUL, not NUL-terminated (length-delimited).
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  // reinterpret_cast: bind() takes the generic sockaddr.
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) {
    return std::optional<UniqueFd>(std::move(fd));
  }
  if (errno != EADDRINUSE) {
    return Error::FromErrno(fmt::format("claiming network service instance {}", n), errno);
  }
  return std::optional<UniqueFd>();
}

// Claims the first free instance number of `ifname_prefix` in the calling
// thread's netns: binding an abstract unix socket name succeeds for exactly
// one socket per netns, and the kernel frees the name when the socket
// closes, also when its process dies (unix(7), "Abstract sockets").
Result<std::pair<UniqueFd, unsigned>> ClaimInstance(const std::string& ifname_prefix) {
  for (unsigned n = 0; n < NetworkService::kMaxInstances; ++n) {
    auto claim = TRY(TryClaimInstance(ifname_prefix, n));
    if (claim) return std::make_pair(std::move(*claim), n);
  }
  return Error::Make(ErrorCode::kBusy,
                     fmt::format("all {} network service instances for ifname_prefix \"{}\" are "
                                 "in use in this network namespace",
                                 NetworkService::kMaxInstances, ifname_prefix));
}

bool ValidIfnamePrefix(const std::string& prefix) {
  return !prefix.empty() && prefix.size() <= 8 &&
         std::all_of(prefix.begin(), prefix.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
         });
}

}  // namespace

Result<std::unique_ptr<NetworkService>> NetworkService::Start(const NetworkServiceConfig& config) {
  auto v4 = IpPrefix::Parse(config.pool_v4);
  if (!v4) return std::move(v4).error().WithContext("pool_v4");
  auto v6 = IpPrefix::Parse(config.pool_v6);
  if (!v6) return std::move(v6).error().WithContext("pool_v6");
  if (!ValidIfnamePrefix(config.ifname_prefix)) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("ifname_prefix \"{}\": must be 1..8 bytes of [a-z0-9_]", config.ifname_prefix));
  }
  if (config.prepared_tables > kMaxPreparedTables) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("prepared_tables {}: at most {}", config.prepared_tables, kMaxPreparedTables));
  }
  if (config.dns_min_ttl == 0 || config.dns_min_ttl > config.dns_max_ttl) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("dns_min_ttl {} must be 1..dns_max_ttl ({})", config.dns_min_ttl,
                                   config.dns_max_ttl));
  }
  if (config.nflog_group_count == 0 ||
      uint32_t{config.nflog_group} + config.nflog_group_count > 65536) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("nflog_group {} + nflog_group_count {}: must be a non-empty "
                                   "range of 0..65535",
                                   config.nflog_group, config.nflog_group_count));
  }
  auto upstream = TRY(ParseUpstream(config.upstream_dns));
  // The pools are checked whole before any instance is claimed: a pool too
  // small for kMaxInstances is a config error, not a busy netns.
  for (auto [pool, name] : {std::pair{&*v4, "pool_v4"}, std::pair{&*v6, "pool_v6"}}) {
    auto last = pool->Subnet(kMaxInstancesLog2, kMaxInstances - 1);
    if (!last) return std::move(last).error().WithContext(name);
  }
  auto [claim, instance] = TRY(ClaimInstance(config.ifname_prefix));
  IpPrefix v4_part = TRY_CTX(v4->Subnet(kMaxInstancesLog2, instance), "pool_v4");
  IpPrefix v6_part = TRY_CTX(v6->Subnet(kMaxInstancesLog2, instance), "pool_v6");
  auto pool = TRY_CTX(AddressPool::Create(v4_part, v6_part), "network service");

  std::unique_ptr<NetworkService> service(
      new NetworkService(config, std::move(claim), instance, std::move(pool)));

  service->nft_ = TRY_CTX(NftSocket::Open(), "network service");
  if (config.table_ownership == TableOwnership::kIfSupported) {
    if (config.service_tables == ServiceTables::kWarm) {
      // A launcher's start makes no owned table of its own: whether the
      // kernel takes the owner flag is found out by the first job table
      // (ApplyOwnedTable), not by a probe transaction at every start.
      service->tables_owned_ = true;
    } else {
      TRY(service->ProbeOwnership());
    }
  }

  // Leftovers of this instance's previous holder, which died: its links
  // would collide with the slots we are about to hand out. Other instances'
  // links are live and not ours to touch. Not in a launcher (kWarm): the
  // links of the one before it go with that one's job namespace, in the
  // kernel's time (tens of ms after it exits); deleting one here would wait
  // out the kernel's rcu_barrier (netdev_run_todo, 20 ms measured) on this
  // start's path, and AllocateFreeSlot skips a slot whose link still exists.
  if (config.service_tables != ServiceTables::kWarm) {
    Rtnl rtnl = TRY(Rtnl::Open());
    for (const std::string& name : StaleJobLinks(service->interface_prefix_)) {
      TRY_CTX(rtnl.DeleteLink(name), "removing a stale job link");
    }
  }
  std::vector<NftTableInfo> tables = TRY(service->SweepStaleTables());

  if (config.enable_forwarding) {
    TRY(WriteSysctl("/proc/sys/net/ipv4/ip_forward", "1"));
    TRY(WriteSysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1"));
  }
  // Every instance's table accepts forwarding for all "<ifname_prefix>*"
  // veths: a packet must pass every base chain of the hook, so a narrower
  // pattern would make each instance drop the others' traffic. A leftover
  // of this name went with the sweep above.
  {
    std::lock_guard lock(service->tables_mutex_);
    if (config.service_tables == ServiceTables::kWarm) {
      // Warm tables that the listing shows are taken as they are, without
      // sending their plan only to have it refused (EEXIST).
      service->service_table_ = FindTable(tables, WarmTableName(config.ifname_prefix)) != nullptr;
      service->service_table_stateful_ =
          FindTable(tables, WarmConntrackTableName(config.ifname_prefix)) != nullptr;
    }
    TRY(service->CommitServiceTable(config.expect_egress));
  }

  NetworkService* raw = service.get();
  // The first NFLOG group of the range that no other socket in this netns
  // holds (another instance, or any other nfnetlink_log user): the bind is
  // the atomic test.
  for (uint32_t group = config.nflog_group;
       config.report_events && group < uint32_t{config.nflog_group} + config.nflog_group_count &&
       !service->nflog_;
       ++group) {
    auto listener =
        NflogListener::Start(static_cast<uint16_t>(group),
                             [raw](const LoggedPacket& packet) { raw->OnLoggedPacket(packet); });
    if (listener) {
      service->nflog_ = std::move(*listener);
      service->nflog_group_ = static_cast<uint16_t>(group);
    } else if (listener.error().code() != ErrorCode::kBusy) {
      return std::move(listener).error();
    }
  }
  if (config.report_events && !service->nflog_) {
    return Error::Make(ErrorCode::kBusy,
                       fmt::format("nflog groups {}..{} are all bound by other sockets in this "
                                   "network namespace (nflog_group, nflog_group_count)",
                                   config.nflog_group,
                                   uint32_t{config.nflog_group} + config.nflog_group_count - 1));
  }

  // The DNS forwarder starts with the first job that names domains.
  service->upstream_ = upstream.first;
  service->upstream_len_ = upstream.second;
  return service;
}

Result<DnsForwarder*> NetworkService::Dns() {
  std::lock_guard lock(dns_mutex_);
  if (dns_) return dns_.get();
  DnsForwarder::Options options;
  options.upstream = upstream_;
  options.upstream_len = upstream_len_;
  options.min_ttl = config_.dns_min_ttl;
  options.max_ttl = config_.dns_max_ttl;
  // Through the service's socket: only it may change an owned table.
  dns_ = TRY_CTX(
      DnsForwarder::Start(options,
                          [this](const std::string& key, const IpPrefix& address, uint32_t ttl) {
                            return nft_->AddSetElement(
                                JobTableName(key),
                                address.family == IpFamily::kV4 ? kDnsSetV4 : kDnsSetV6, address,
                                static_cast<uint64_t>(ttl) * 1000);
                          }),
      "starting the DNS forwarder");
  return dns_.get();
}

NetworkService::~NetworkService() {
  StopPreparing();
  if (reaper_.joinable()) {
    {
      std::lock_guard lock(reap_mutex_);
      reap_stop_ = true;
    }
    reap_cv_.notify_all();
    reaper_.join();  // after it has done the whole queue
  }
  dns_.reset();
  nflog_.reset();
  std::lock_guard lock(tables_mutex_);
  // Warm tables stay for the next service (RemoveWarmTables).
  if (service_table_ && config_.service_tables == ServiceTables::kPerService)
    IgnoreError(nft_->DeleteTable(service_table_name_));
}

Result<void> NetworkService::ProbeOwnership() {
  tables_owned_ = TRY(nft_->ProbeTableOwner(fmt::format("ralph_probe_{}", interface_prefix_)));
  owner_known_ = true;
  if (tables_owned_) {
    Log(LogLevel::kDebug,
        "nft tables are owned by the network service's netlink socket "
        "(NFT_TABLE_F_OWNER): the kernel removes them when this process exits");
  } else {
    Log(LogLevel::kWarning,
        "the kernel lacks nft table ownership (NFT_TABLE_F_OWNER, Linux 5.12): tables a "
        "killed service leaves are removed by the next service's start");
  }
  return {};
}

Result<void> NetworkService::ApplyOwnedTable(const NftTablePlan& plan, ExistingTable existing) {
  if (!tables_owned_) return nft_->ApplyTablePlan(plan, TableOwner::kNone, existing);
  auto applied = nft_->ApplyTablePlan(plan, TableOwner::kThisSocket, existing);
  if (applied || owner_known_) return applied;
  // Before 5.12 nf_tables_newtable refused the owner flag with EINVAL
  // (EOPNOTSUPP for unknown flags since): only a probe tells that EINVAL
  // from one a rule of the plan caused.
  int code = applied.error().sys_errno();
  if (code != EINVAL && code != EOPNOTSUPP) return applied;
  TRY(ProbeOwnership());
  if (tables_owned_) return applied;
  return nft_->ApplyTablePlan(plan, TableOwner::kNone, existing);
}

Result<void> NetworkService::CommitJobTable(const NftTablePlan& plan, ExistingTable existing) {
  if (plan.comment.empty()) return ApplyOwnedTable(plan, existing);
  std::lock_guard lock(tables_mutex_);
  auto it = warm_job_tables_.find(plan.name);
  if (it != warm_job_tables_.end() && it->second == plan.comment) return {};
  TRY(nft_->ApplyTablePlan(plan, TableOwner::kNone,
                           it != warm_job_tables_.end() ? ExistingTable::kReplace : existing));
  warm_job_tables_[plan.name] = plan.comment;
  return {};
}

bool NetworkService::IsWarmJobTable(const std::string& table) {
  std::lock_guard lock(tables_mutex_);
  return warm_job_tables_.count(table) != 0;
}

Result<void> NetworkService::CommitServiceTable(bool stateful) {
  if (service_table_ && (service_table_stateful_ || !stateful)) return {};
  if (config_.service_tables == ServiceTables::kWarm) return EnsureWarmTables(stateful);
  // Replacing our own table in one transaction: the forwarding policy never
  // lapses, and the hooks it shares with the new one stay registered.
  TRY(ApplyOwnedTable(PlanServiceTable(service_table_name_, config_.ifname_prefix,
                                       config_.enable_forwarding ? ForwardingPolicy::kOnlyJobs
                                                                 : ForwardingPolicy::kUntouched,
                                       stateful),
                      service_table_ ? ExistingTable::kReplace : ExistingTable::kFail));
  service_table_ = true;
  service_table_stateful_ = stateful;
  return {};
}

Result<void> NetworkService::EnsureWarmTables(bool stateful) {
  // Another service of the prefix (now or before) may have made them: a
  // table that exists is taken as it is. Unowned, so they outlive this
  // service; created, never replaced, so a running service's hold never
  // lapses (the conntrack part is a table of its own for that reason).
  auto create = [&](const NftTablePlan& plan) -> Result<void> {
    auto created = nft_->ApplyTablePlan(plan, TableOwner::kNone);
    if (!created && created.error().code() == ErrorCode::kAlreadyExists) return {};
    TRY_CTX(std::move(created), fmt::format("making the warm table inet {}", plan.name));
    Log(LogLevel::kDebug, fmt::format("made the warm table inet {}", plan.name));
    return {};
  };
  if (!service_table_) {
    TRY(create(PlanWarmTable(config_.ifname_prefix, config_.enable_forwarding
                                                        ? ForwardingPolicy::kOnlyJobs
                                                        : ForwardingPolicy::kUntouched)));
    service_table_ = true;
  }
  if (stateful && !service_table_stateful_) {
    TRY(create(PlanWarmConntrackTable(config_.ifname_prefix)));
    service_table_stateful_ = true;
  }
  return {};
}

Result<std::vector<std::string>> NetworkService::RemoveWarmTables(std::string_view ifname_prefix) {
  auto nft = TRY_CTX(NftSocket::Open(), "removing the warm tables");
  auto tables = TRY_CTX(nft->ListTables(), "removing the warm tables");
  std::vector<std::string> removed;
  for (const std::string& name :
       {WarmTableName(ifname_prefix), WarmConntrackTableName(ifname_prefix)}) {
    if (FindTable(tables, name)) removed.push_back(name);
  }
  // Warm job tables of an instance that a live service holds may be its
  // next job's; the others' instances are claimed until theirs are gone.
  std::vector<UniqueFd> claims;
  for (const auto& [instance, names] :
       UnownedTablesByInstance(tables, ifname_prefix, kMaxInstances)) {
    auto claimed =
        TRY_CTX(TryClaimInstance(std::string(ifname_prefix), instance), "removing the warm tables");
    if (!claimed) continue;  // held
    claims.push_back(std::move(*claimed));
    for (const std::string& name : names) {
      if (ListedAsWarmJobTable(tables, name)) removed.push_back(name);
    }
  }
  if (!removed.empty()) TRY_CTX(nft->DeleteTables(removed), "removing the warm tables");
  return removed;
}

Result<void> NetworkService::QueueRemoval(Removal removal) {
  std::unique_lock lock(reap_mutex_);
  if (!reap_rtnl_) {
    // Bound to the netns of the calling thread: the service's, where the
    // host ends of its veths live.
    auto rtnl = Rtnl::Open();
    if (!rtnl) return std::move(rtnl).error().WithContext("starting the link reaper");
    reap_rtnl_ = std::make_unique<Rtnl>(std::move(*rtnl));
  }
  if (!reaper_.joinable()) reaper_ = std::thread([this] { ReapLoop(); });
  removal.deadline = std::chrono::steady_clock::now() + kKernelGrace;
  reap_queue_.push_back(std::move(removal));
  ++reap_queued_;
  lock.unlock();
  reap_cv_.notify_all();
  return {};
}

void NetworkService::ReapLoop() {
  std::unique_lock lock(reap_mutex_);
  for (;;) {
    reap_cv_.wait(lock, [this] { return reap_stop_ || !reap_queue_.empty(); });
    if (reap_queue_.empty()) return;  // stopping, and nothing left to do
    // A job's veth normally goes with its network namespace: once its last
    // process is gone, the kernel's netns cleanup deletes the pair, many
    // namespaces' devices in one batch (one RTNL hold, one rcu_barrier). An
    // RTM_DELLINK of our own would hold the RTNL lock through an expedited
    // grace period per link, stalling every job being created meanwhile
    // (a new netns, `lo` up, veth creation all take it). So the oldest
    // removal waits up to kKernelGrace for that (polled), and the link is
    // deleted here only after it — or at once when the service stops.
    const Removal& oldest = reap_queue_.front();
    bool link_gone = oldest.ifname.empty() || if_nametoindex(oldest.ifname.c_str()) == 0;
    if (!link_gone && !reap_stop_ && std::chrono::steady_clock::now() < oldest.deadline) {
      reap_cv_.wait_for(lock, kReapPoll);
      continue;
    }
    Removal removal = std::move(reap_queue_.front());
    reap_queue_.pop_front();
    if (link_gone) removal.ifname.clear();
    lock.unlock();
    auto removed = Remove(removal);
    if (!removed) {
      Log(LogLevel::kWarning, removed.error().ToString());
    }
    lock.lock();
    if (!removed && !reap_error_) reap_error_ = std::move(removed).error();
    ++reap_done_;
    reap_cv_.notify_all();
  }
}

Result<void> NetworkService::Remove(const Removal& removal) {
  auto context = [&] { return fmt::format("removing the network of job {}", removal.job_id); };
  // Link first: the table keeps dropping whatever the link still carries.
  // When the job's namespace died first, the kernel has already deleted
  // the pair and this finds nothing (success).
  if (!removal.ifname.empty()) TRY_CTX(reap_rtnl_->DeleteLink(removal.ifname), context());
  if (!removal.table.empty()) TRY_CTX(nft_->DeleteTable(removal.table), context());
  pool_->Release(removal.slot);
  return {};
}

Result<void> NetworkService::WaitForRemovals() {
  std::unique_lock lock(reap_mutex_);
  uint64_t target = reap_queued_;
  reap_cv_.wait(lock, [&] { return reap_done_ >= target; });
  if (reap_error_) {
    Error error = std::move(*reap_error_);
    reap_error_.reset();
    return error;
  }
  return {};
}

void NetworkService::Log(LogLevel level, const std::string& message) const {
  if (config_.log) config_.log(level, message);
}

Result<std::vector<NftTableInfo>> NetworkService::SweepStaleTables() {
  auto tables = TRY_CTX(nft_->ListTables(), "sweeping stale tables");
  for (auto& [instance, names] :
       UnownedTablesByInstance(tables, config_.ifname_prefix, kMaxInstances)) {
    // Another instance's tables are stale only while nobody holds it; its
    // claim, taken here, keeps a new holder out until they are gone.
    UniqueFd claim;
    if (instance == instance_ && config_.service_tables == ServiceTables::kWarm) {
      // A launcher takes its instance's warm job tables as they are; the
      // rest of them are leftovers.
      std::vector<std::string> stale;
      for (const std::string& name : names) {
        if (ListedAsWarmJobTable(tables, name)) {
          std::lock_guard lock(tables_mutex_);
          warm_job_tables_[name] = FindTable(tables, name)->comment;
        } else {
          stale.push_back(name);
        }
      }
      names = std::move(stale);
    }
    if (instance != instance_) {
      auto claimed = TryClaimInstance(config_.ifname_prefix, instance);
      if (!claimed) return std::move(claimed).error().WithContext("sweeping stale tables");
      if (!*claimed) continue;  // alive
      claim = std::move(**claimed);
    }
    for (const std::string& name : names) {
      TRY_CTX(nft_->DeleteTable(name), "removing a stale table");
      Log(LogLevel::kInfo,
          fmt::format("removed stale table inet {} (instance {} of \"{}\" is gone)", name,
                      static_cast<char>('a' + instance), config_.ifname_prefix));
    }
  }
  return tables;
}

void NetworkService::Register(const std::string& ifname, Registered job) {
  std::lock_guard lock(registry_mutex_);
  registry_[ifname] = std::move(job);
}

void NetworkService::Unregister(const std::string& ifname) {
  std::lock_guard lock(registry_mutex_);
  auto it = registry_.find(ifname);
  if (it == registry_.end()) return;
  FlushSuppressed(it->second);
  registry_.erase(it);
}

void NetworkService::FlushSuppressed(Registered& job) {
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

void NetworkService::OnLoggedPacket(const LoggedPacket& packet) {
  NetEvent event;
  event.destination = packet.destination;
  event.port = packet.port;
  event.protocol = packet.protocol;
  event.verdict = packet.prefix.verdict;
  event.reason = packet.prefix.reason;
  Deliver(packet.prefix.ifname, std::move(event));
}

void NetworkService::Deliver(const std::string& ifname, NetEvent event) {
  // The sink is called under the lock so that Unregister() (and so
  // Teardown()) returning means no further events for that job.
  std::lock_guard lock(registry_mutex_);
  auto it = registry_.find(ifname);
  if (it == registry_.end() || !it->second.sink) return;
  Registered& job = it->second;
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  int64_t now_ms = static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
  if (now_ms - job.window_start_ms >= 1000) {
    FlushSuppressed(job);
    job.window_start_ms = now_ms;
  }
  if (job.in_window >= config_.max_events_per_second) {
    ++job.suppressed;
    return;
  }
  ++job.in_window;
  event.job_id = job.job_id;
  job.sink->OnNetEvent(event);
}

Result<std::unique_ptr<JobNetwork>> NetworkService::CreateJob(const std::string& job_id,
                                                              pid_t child_pid,
                                                              const NetworkSpec& spec,
                                                              NetEventSinkInterface* events) {
  auto context = [&] { return fmt::format("network of job {}", job_id); };
  DnsAllowlist allowlist = TRY_CTX(DnsAllowlist::Create(spec.allowed_domains), context());
  UniqueFd netns = TRY_CTX(OpenNetns(child_pid), context());

  if (!spec.enabled) {
    Rtnl job = TRY_CTX(Rtnl::OpenIn(netns.get()), context());
    Rtnl::Batch batch;
    batch.SetUp(kLoopbackIndex, "lo");
    TRY_CTX(job.Send(batch), context());
    return std::unique_ptr<JobNetwork>(new JobNetworkImpl(this, job_id, spec, std::nullopt));
  }

  // A table committed ahead for this very spec, if there is one: then this
  // start only makes and configures the veth.
  std::string key = NetworkSpecKey(spec);
  std::optional<JobAddresses> prepared = TakePreparedTable(key);
  JobAddresses addresses;
  if (prepared) {
    addresses = *prepared;
  } else {
    addresses = TRY_CTX(AllocateFreeSlot(), context());
  }
  auto job = std::make_unique<JobNetworkImpl>(this, job_id, spec, addresses);
  // From here on `job` owns the slot (and a prepared table): any early
  // return tears down what exists.
  std::optional<NftTablePlan> plan;
  if (prepared) {
    job->AdoptTable();
  } else {
    JobAddressing addressing{.host_ifname = job->host_interface(),
                             .host_v4 = addresses.host_v4,
                             .job_v4 = addresses.job_v4,
                             .host_v6 = addresses.host_v6,
                             .job_v6 = addresses.job_v6};
    plan = TRY_CTX(PlanJob(addressing, spec), context());
  }
  TRY_CTX(job->HoldServiceTable(JobHasEgress(spec)), context());
  TRY_CTX(job->Setup(netns.get(), plan ? &*plan : nullptr, std::move(allowlist), events),
          context());
  // The next jobs with this spec find their tables made.
  if (config_.prepared_tables > 0) RequestPreparedTables(spec, std::move(key));
  return std::unique_ptr<JobNetwork>(std::move(job));
}

Result<NftTablePlan> NetworkService::PlanJob(const JobAddressing& addressing,
                                             const NetworkSpec& spec) const {
  NftTablePlan plan = TRY(PlanJobTable(addressing, spec, nflog_group_));
  if (!config_.report_events) plan = WithoutLogging(std::move(plan));
  if (config_.service_tables == ServiceTables::kWarm)
    plan.comment = WarmJobTableComment(plan, spec);
  return plan;
}

Result<JobAddresses> NetworkService::AllocateFreeSlot() {
  JobAddresses addresses = TRY(pool_->Allocate());
  // A slot whose host-side link still exists belongs to a job whose veth the
  // kernel is still removing with its namespace (TeardownWithNamespace):
  // take the next one, and give the skipped ones back afterwards.
  std::vector<uint32_t> skipped;
  while (if_nametoindex(fmt::format("{}{}", interface_prefix_, addresses.slot).c_str()) != 0) {
    skipped.push_back(addresses.slot);
    auto next = pool_->Allocate();
    if (!next) {
      for (uint32_t slot : skipped) pool_->Release(slot);
      return std::move(next).error();
    }
    addresses = *next;
  }
  for (uint32_t slot : skipped) pool_->Release(slot);
  return addresses;
}

std::optional<JobAddresses> NetworkService::TakePreparedTable(const std::string& key) {
  if (key.empty()) return std::nullopt;
  std::lock_guard lock(prepare_mutex_);
  if (key != prepared_key_ || prepared_.empty()) return std::nullopt;
  JobAddresses addresses = prepared_.front();
  prepared_.pop_front();
  prepare_cv_.notify_all();  // one to make again
  return addresses;
}

void NetworkService::SwitchPreparedKey(std::string key) {
  if (key == prepared_key_) return;
  // Tables for another spec are of no use to the next jobs: to be dropped.
  discard_.insert(discard_.end(), prepared_.begin(), prepared_.end());
  prepared_.clear();
  prepared_key_ = std::move(key);
}

void NetworkService::RequestPreparedTables(const NetworkSpec& spec, std::string key) {
  std::lock_guard lock(prepare_mutex_);
  SwitchPreparedKey(std::move(key));  // the stale ones go by the preparer, off the caller's path
  prepare_spec_ = spec;
  if (!preparer_.joinable()) preparer_ = std::thread([this] { PrepareLoop(); });
  prepare_cv_.notify_all();
}

Result<void> NetworkService::PrepareJob(const NetworkSpec& spec) {
  if (!spec.enabled) return {};
  std::string key = NetworkSpecKey(spec);
  {
    std::lock_guard lock(prepare_mutex_);
    if (key == prepared_key_ && !prepared_.empty()) return {};
  }
  JobAddresses addresses = TRY(PrepareTable(spec));
  std::vector<JobAddresses> stale;
  {
    std::lock_guard lock(prepare_mutex_);
    SwitchPreparedKey(std::move(key));
    prepared_.push_back(addresses);
    // Without a preparer thread nobody else drops them.
    if (!preparer_.joinable()) stale.swap(discard_);
  }
  DropPreparedTables(std::move(stale));
  return {};
}

Result<JobAddresses> NetworkService::PrepareTable(const NetworkSpec& spec) {
  JobAddresses addresses = TRY(AllocateFreeSlot());
  auto release = [&](Error error) {
    pool_->Release(addresses.slot);
    return std::move(error).WithContext(
        fmt::format("preparing the table of slot {}", addresses.slot));
  };
  std::string ifname = fmt::format("{}{}", interface_prefix_, addresses.slot);
  JobAddressing addressing{.host_ifname = ifname,
                           .host_v4 = addresses.host_v4,
                           .job_v4 = addresses.job_v4,
                           .host_v6 = addresses.host_v6,
                           .job_v6 = addresses.job_v6};
  auto plan = PlanJob(addressing, spec);
  if (!plan) return release(std::move(plan).error());
  {
    // As a job's start would: the service table first (stateful when the
    // spec may send out), so the job's table registers no hook of its own.
    std::lock_guard lock(tables_mutex_);
    if (auto committed = CommitServiceTable(JobHasEgress(spec)); !committed)
      return release(std::move(committed).error());
  }
  // A table in the way (a stale one) is left to a job's own start, which
  // knows how to replace it: this slot is simply not prepared.
  if (auto applied = CommitJobTable(*plan, ExistingTable::kFail); !applied)
    return release(std::move(applied).error());
  return addresses;
}

void NetworkService::DropPreparedTables(std::vector<JobAddresses> tables) {
  if (tables.empty()) return;
  std::vector<std::string> names;
  for (const JobAddresses& table : tables) {
    std::string name = JobTableName(fmt::format("{}{}", interface_prefix_, table.slot));
    if (!IsWarmJobTable(name)) names.push_back(std::move(name));
  }
  if (auto deleted = names.empty() ? Result<void>() : nft_->DeleteTables(names); !deleted) {
    // The slots stay taken: their tables' names are still in use.
    Log(LogLevel::kWarning, deleted.error().WithContext("dropping prepared tables").ToString());
    return;
  }
  for (const JobAddresses& table : tables) pool_->Release(table.slot);
}

void NetworkService::PrepareLoop() {
  std::unique_lock lock(prepare_mutex_);
  auto wanted = [&] { return prepare_spec_ && prepared_.size() < config_.prepared_tables; };
  for (;;) {
    prepare_cv_.wait(lock, [&] { return prepare_stop_ || !discard_.empty() || wanted(); });
    if (prepare_stop_) break;
    prepare_busy_ = true;
    if (!discard_.empty()) {
      std::vector<JobAddresses> stale(discard_.begin(), discard_.end());
      discard_.clear();
      lock.unlock();
      DropPreparedTables(std::move(stale));
      lock.lock();
    } else {
      NetworkSpec spec = *prepare_spec_;
      std::string key = prepared_key_;
      lock.unlock();
      auto prepared = PrepareTable(spec);
      lock.lock();
      if (!prepared) {
        // Not retried until the next job asks again: a failing kernel must
        // not be hammered from the background.
        Log(LogLevel::kWarning, prepared.error().ToString());
        prepare_spec_.reset();
      } else if (key != prepared_key_) {
        discard_.push_back(*prepared);  // the spec changed meanwhile
      } else {
        prepared_.push_back(*prepared);
      }
    }
    prepare_busy_ = false;
    prepare_cv_.notify_all();
  }
}

size_t NetworkService::WaitForPreparedTables() {
  std::unique_lock lock(prepare_mutex_);
  prepare_cv_.wait(lock, [&] {
    return prepare_stop_ || (!prepare_busy_ && discard_.empty() &&
                             (!prepare_spec_ || prepared_.size() >= config_.prepared_tables));
  });
  return prepared_.size();
}

void NetworkService::StopPreparing() {
  if (preparer_.joinable()) {
    {
      std::lock_guard lock(prepare_mutex_);
      prepare_stop_ = true;
    }
    prepare_cv_.notify_all();
    preparer_.join();
  }
  // What the preparer or PrepareJob made and no job took.
  std::vector<JobAddresses> left;
  {
    std::lock_guard lock(prepare_mutex_);
    left.assign(prepared_.begin(), prepared_.end());
    left.insert(left.end(), discard_.begin(), discard_.end());
    prepared_.clear();
    discard_.clear();
  }
  DropPreparedTables(std::move(left));
}

}  // namespace ralph::sandbox
