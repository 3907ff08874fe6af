#include "job_network_impl.h"

#include <fmt/format.h>

#include "connection_events.h"
#include "dns_forwarder.h"
#include "job_tables.h"
#include "link_reaper.h"
#include "rtnl.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {
namespace {

constexpr const char* kJobIfname = "eth0";

}  // namespace

JobNetworkImpl::JobNetworkImpl(NetworkService* service, std::string job_id,
                               std::optional<JobAddresses> addresses)
    : service_(service), job_id_(std::move(job_id)), addresses_(std::move(addresses)) {
  if (addresses_) {
    ifname_ = fmt::format("{}{}", service_->interface_prefix_, addresses_->slot);
    table_ = JobTableName(ifname_);
  }
}

JobNetworkImpl::~JobNetworkImpl() {
  IgnoreError(Teardown());
}

std::string JobNetworkImpl::resolver_address() const {
  return addresses_ ? addresses_->host_v4.AddressString() : "";
}
std::string JobNetworkImpl::resolver_address_v6() const {
  return addresses_ ? addresses_->host_v6.AddressString() : "";
}
std::string JobNetworkImpl::job_address_v4() const {
  return addresses_ ? addresses_->job_v4.AddressString() : "";
}
std::string JobNetworkImpl::job_address_v6() const {
  return addresses_ ? addresses_->job_v6.AddressString() : "";
}

Result<void> JobNetworkImpl::HoldServiceTable(bool stateful) {
  TRY(service_->tables_->HoldServiceTable(stateful));
  holds_service_table_ = true;
  return {};
}

Result<void> JobNetworkImpl::TeardownImpl(Veth veth) {
  if (torn_down_) return {};
  std::optional<Error> first;
  auto note = [&](Result<void> result) {
    if (!result && !first) first = std::move(result).error();
  };
  if (registered_) {
    service_->events_->Unregister(ifname_);
    registered_ = false;
  }
  if (dns_registered_) {
    service_->dns_->RemoveJob(ifname_);
    dns_registered_ = false;
  }
  if (veth == Veth::kDelete && service_->config_.link_removal == LinkRemoval::kBackground &&
      addresses_) {
    // The reaper deletes the link, then the table, then returns the slot.
    auto queued = service_->reaper_->Queue({.job_id = job_id_,
                                            .ifname = veth_created_ ? ifname_ : std::string(),
                                            .table = table_created_ ? table_ : std::string(),
                                            .slot = addresses_->slot});
    if (!queued) {
      return std::move(queued).error().WithContext(
          fmt::format("tearing down network of job {}", job_id_));
    }
    veth_created_ = table_created_ = false;
    if (holds_service_table_) {
      service_->tables_->DropHold();
      holds_service_table_ = false;
    }
    torn_down_ = true;
    return {};
  }
  {
    std::vector<std::string> tables;
    if (table_created_) tables.push_back(table_);
    auto deleted = service_->tables_->DeleteJobTables(tables, holds_service_table_,
                                                      veth == Veth::kLeaveToKernel
                                                          ? WhenIdle::kReleaseServiceTable
                                                          : WhenIdle::kKeepServiceTable);
    if (deleted) table_created_ = holds_service_table_ = false;
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
    TRY(service_->tables_->CommitJobTable(*plan, JobTables::InTheWay::kReplaceStale));
    table_created_ = true;
  }

  service_->events_->Register(ifname_, job_id_, events);
  registered_ = true;
  if (!allowlist.empty()) {
    dns_events_ = service_->events_->SinkFor(ifname_);
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

}  // namespace ralph::sandbox
