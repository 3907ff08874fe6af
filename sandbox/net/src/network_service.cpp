// NetworkService's lifecycle: Start() (config checks, the instance claim,
// the parts below, the sweep of a dead holder's links, sysctls, the service
// table, the NFLOG group) and CreateJob(). The parts:
//   JobTables         which nft tables are committed and deleted (job_tables.h)
//   ConnectionEvents  logged packets and DNS events to the jobs' sinks, rate-limited
//   TablePreparer     tables committed ahead (prepared_tables)
//   LinkReaper        LinkRemoval::kBackground
//   JobNetworkImpl    one job's veth, table and registrations
#include "sandbox/net/network_service.h"

#include <net/if.h>

#include <algorithm>

#include <fmt/format.h>

#include "connection_events.h"
#include "dns_forwarder.h"
#include "instance_claim.h"
#include "job_network_impl.h"
#include "job_tables.h"
#include "link_reaper.h"
#include "nflog_listener.h"
#include "nft_apply.h"
#include "platform/file_io.h"
#include "rtnl.h"
#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/rule_plan.h"
#include "table_preparer.h"
#include "upstream_dns.h"

namespace ralph::sandbox {
namespace {

bool ValidIfnamePrefix(const std::string& prefix) {
  return !prefix.empty() && prefix.size() <= 8 &&
         std::all_of(prefix.begin(), prefix.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
         });
}

Result<void> CheckConfig(const NetworkServiceConfig& config) {
  if (!ValidIfnamePrefix(config.ifname_prefix)) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("ifname_prefix \"{}\": must be 1..8 bytes of [a-z0-9_]", config.ifname_prefix));
  }
  if (config.prepared_tables > NetworkService::kMaxPreparedTables) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("prepared_tables {}: at most {}", config.prepared_tables,
                                   NetworkService::kMaxPreparedTables));
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
  return {};
}

// The first NFLOG group of the configured range that no other socket in
// this netns holds (another instance, or any other nfnetlink_log user): the
// bind is the atomic test.
Result<std::pair<std::unique_ptr<NflogListener>, uint16_t>> BindNflog(
    const NetworkServiceConfig& config, ConnectionEvents* events) {
  for (uint32_t group = config.nflog_group;
       group < uint32_t{config.nflog_group} + config.nflog_group_count; ++group) {
    auto listener = NflogListener::Start(
        static_cast<uint16_t>(group),
        [events](const LoggedPacket& packet) { events->OnLoggedPacket(packet); });
    if (listener) return std::make_pair(std::move(*listener), static_cast<uint16_t>(group));
    if (listener.error().code() != ErrorCode::kBusy) return std::move(listener).error();
  }
  return Error::Make(
      ErrorCode::kBusy,
      fmt::format("nflog groups {}..{} are all bound by other sockets in this "
                  "network namespace (nflog_group, nflog_group_count)",
                  config.nflog_group, uint32_t{config.nflog_group} + config.nflog_group_count - 1));
}

InstanceClaimer ClaimerFor(std::string ifname_prefix) {
  return [prefix = std::move(ifname_prefix)](unsigned n) { return TryClaimInstance(prefix, n); };
}

}  // namespace

NetworkService::NetworkService(const NetworkServiceConfig& config, UniqueFd claim,
                               unsigned instance, std::unique_ptr<AddressPool> pool)
    : config_(config),
      claim_(std::move(claim)),
      instance_(instance),
      interface_prefix_(
          fmt::format("{}{}", config.ifname_prefix, static_cast<char>('a' + instance))),
      pool_(std::move(pool)) {}

Result<std::unique_ptr<NetworkService>> NetworkService::Start(const NetworkServiceConfig& config) {
  auto v4 = IpPrefix::Parse(config.pool_v4);
  if (!v4) return std::move(v4).error().WithContext("pool_v4");
  auto v6 = IpPrefix::Parse(config.pool_v6);
  if (!v6) return std::move(v6).error().WithContext("pool_v6");
  TRY(CheckConfig(config));
  UpstreamDns upstream = TRY(ParseUpstreamDns(
      config.upstream_dns, config.upstream_dns.empty()
                               ? ReadWholeFile("/etc/resolv.conf").value_or(std::string())
                               : std::string()));
  // The pools are checked whole before any instance is claimed: a pool too
  // small for kMaxInstances is a config error, not a busy netns.
  for (auto [pool, name] : {std::pair{&*v4, "pool_v4"}, std::pair{&*v6, "pool_v6"}}) {
    auto last = pool->Subnet(kMaxInstancesLog2, kMaxInstances - 1);
    if (!last) return std::move(last).error().WithContext(name);
  }
  auto [claim, instance] = TRY(ClaimInstance(config.ifname_prefix, kMaxInstances));
  IpPrefix v4_part = TRY_CTX(v4->Subnet(kMaxInstancesLog2, instance), "pool_v4");
  IpPrefix v6_part = TRY_CTX(v6->Subnet(kMaxInstancesLog2, instance), "pool_v6");
  auto pool = TRY_CTX(AddressPool::Create(v4_part, v6_part), "network service");

  std::unique_ptr<NetworkService> service(
      new NetworkService(config, std::move(claim), instance, std::move(pool)));
  NetworkService* raw = service.get();
  auto log = [raw](LogLevel level, const std::string& message) { raw->Log(level, message); };
  service->upstream_ = upstream.address;
  service->upstream_len_ = upstream.length;
  service->nft_ = TRY_CTX(NftSocket::Open(), "network service");
  service->tables_ = std::make_unique<JobTables>(
      *service->nft_,
      JobTablesConfig{.ifname_prefix = config.ifname_prefix,
                      .instance = instance,
                      .max_instances = kMaxInstances,
                      .service_table_name = ServiceTableName(service->interface_prefix_),
                      .service_tables = config.service_tables,
                      .forwarding = config.enable_forwarding ? ForwardingPolicy::kOnlyJobs
                                                             : ForwardingPolicy::kUntouched,
                      .ownership = config.table_ownership,
                      .release_when_idle = config.release_when_idle,
                      .try_claim = ClaimerFor(config.ifname_prefix),
                      .log = log});
  service->events_ = std::make_unique<ConnectionEvents>(config.max_events_per_second);
  service->preparer_ = std::make_unique<TablePreparer>(
      config.prepared_tables, [raw](const NetworkSpec& spec) { return raw->PrepareTable(spec); },
      [raw](std::vector<JobAddresses> tables) { raw->DropPreparedTables(std::move(tables)); }, log);
  service->reaper_ = std::make_unique<LinkReaper>(
      [raw](const PendingRemoval& removal) -> Result<void> {
        if (!removal.table.empty())
          TRY(raw->tables_->DeleteJobTables({removal.table}, false, WhenIdle::kKeepServiceTable));
        raw->pool_->Release(removal.slot);
        return {};
      },
      log);

  // Leftovers of this instance's previous holder, which died: its links
  // would collide with the slots we are about to hand out. Other instances'
  // links are live and not ours to touch. Not in a launcher (kWarm): the
  // links of the one before it go with that one's job namespace, in the
  // kernel's time (tens of ms after it exits); deleting one here would wait
  // out the kernel's rcu_barrier (netdev_run_todo, 20 ms measured) on this
  // start's path, and AllocateFreeSlot skips a slot whose link still exists.
  if (config.service_tables != ServiceTables::kWarm) {
    Rtnl rtnl = TRY(Rtnl::Open());
    for (const std::string& name : InstanceLinks(service->interface_prefix_)) {
      TRY_CTX(rtnl.DeleteLink(name), "removing a stale job link");
    }
  }
  if (config.enable_forwarding) {
    TRY(WriteSysctl("/proc/sys/net/ipv4/ip_forward", "1"));
    TRY(WriteSysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1"));
  }
  TRY(service->tables_->Start(config.expect_egress));

  if (config.report_events) {
    std::tie(service->nflog_, service->nflog_group_) =
        TRY(BindNflog(config, service->events_.get()));
  }
  // The DNS forwarder starts with the first job that names domains.
  return service;
}

Result<std::vector<std::string>> NetworkService::RemoveWarmTables(std::string_view ifname_prefix) {
  auto nft = TRY_CTX(NftSocket::Open(), "removing the warm tables");
  return TRY_CTX(JobTables::RemoveWarmTables(*nft, ifname_prefix, kMaxInstances,
                                             ClaimerFor(std::string(ifname_prefix))),
                 "removing the warm tables");
}

NetworkService::~NetworkService() {
  // Also after a Start() that failed part of the way: any part may be null.
  preparer_.reset();
  reaper_.reset();  // after it has done the whole queue
  dns_.reset();
  nflog_.reset();
  if (tables_) tables_->Stop();
}

bool NetworkService::tables_owned() const {
  return tables_->owned();
}

uint64_t NetworkService::suppressed_events() const {
  return events_->suppressed_total();
}

size_t NetworkService::WaitForPreparedTables() {
  return preparer_->WaitUntilIdle();
}

Result<void> NetworkService::WaitForRemovals() {
  return reaper_->WaitForRemovals();
}

void NetworkService::Log(LogLevel level, const std::string& message) const {
  if (config_.log) config_.log(level, message);
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
                            return tables_->AddDnsAddress(JobTableName(key), address,
                                                          static_cast<uint64_t>(ttl) * 1000);
                          }),
      "starting the DNS forwarder");
  return dns_.get();
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
    return std::unique_ptr<JobNetwork>(new JobNetworkImpl(this, job_id, std::nullopt));
  }

  // A table committed ahead for this very spec, if there is one: then this
  // start only makes and configures the veth.
  std::string key = NetworkSpecKey(spec);
  std::optional<JobAddresses> prepared = preparer_->Take(key);
  JobAddresses addresses = prepared ? *prepared : TRY_CTX(AllocateFreeSlot(), context());
  auto job = std::make_unique<JobNetworkImpl>(this, job_id, addresses);
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
  if (config_.prepared_tables > 0) preparer_->Request(spec, std::move(key));
  return std::unique_ptr<JobNetwork>(std::move(job));
}

Result<void> NetworkService::PrepareJob(const NetworkSpec& spec) {
  if (!spec.enabled) return {};
  return preparer_->PrepareNow(spec, NetworkSpecKey(spec));
}

Result<NftTablePlan> NetworkService::PlanJob(const JobAddressing& addressing,
                                             const NetworkSpec& spec) const {
  NftTablePlan plan = TRY(PlanJobTable(addressing, spec, nflog_group_));
  if (!config_.report_events) plan = WithoutLogging(std::move(plan));
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
  // As a job's start would: the service table first (stateful when the
  // spec may send out), so the job's table registers no hook of its own.
  if (auto committed = tables_->EnsureServiceTable(JobHasEgress(spec)); !committed)
    return release(std::move(committed).error());
  // A table in the way (a stale one) is left to a job's own start, which
  // replaces it: this slot is simply not prepared.
  if (auto applied = tables_->CommitJobTable(*plan, JobTables::InTheWay::kFail); !applied)
    return release(std::move(applied).error());
  return addresses;
}

void NetworkService::DropPreparedTables(std::vector<JobAddresses> tables) {
  std::vector<std::string> names;
  for (const JobAddresses& table : tables)
    names.push_back(JobTableName(fmt::format("{}{}", interface_prefix_, table.slot)));
  if (auto deleted = tables_->DeleteJobTables(names, false, WhenIdle::kKeepServiceTable);
      !deleted) {
    // The slots stay taken: their tables' names are still in use.
    Log(LogLevel::kWarning, deleted.error().WithContext("dropping prepared tables").ToString());
    return;
  }
  for (const JobAddresses& table : tables) pool_->Release(table.slot);
}

}  // namespace ralph::sandbox
