// One job's network as NetworkService::CreateJob makes it: the veth pair
// and its addresses, the job's nft table (committed here, or taken
// prepared), its event and DNS registrations; and their teardown, inline or
// through the service's LinkReaper.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "sandbox/net/address_pool.h"
#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/job_network.h"
#include "sandbox/net/network_service.h"

namespace ralph::sandbox {

struct NftTablePlan;

class JobNetworkImpl final : public JobNetwork {
 public:
  // `addresses`: nullopt for a job without network (loopback only).
  JobNetworkImpl(NetworkService* service, std::string job_id,
                 std::optional<JobAddresses> addresses);
  ~JobNetworkImpl() override;

  Result<void> Teardown() override { return TeardownImpl(Veth::kDelete); }
  Result<void> TeardownWithNamespace() override { return TeardownImpl(Veth::kLeaveToKernel); }

  std::string resolver_address() const override;
  std::string resolver_address_v6() const override;
  std::string job_address_v4() const override;
  std::string job_address_v6() const override;
  std::string host_interface() const override { return ifname_; }

  // Makes the veth pair into `netns_fd`, configures both ends, commits
  // `plan` (null when the job's table was committed ahead: AdoptTable) and
  // registers the job's events and allowlist.
  Result<void> Setup(int netns_fd, const NftTablePlan* plan, DnsAllowlist allowlist,
                     NetEventSinkInterface* events);
  // The job's table already exists (a prepared table): Teardown deletes it.
  void AdoptTable() { table_created_ = true; }
  // Counts this job among those that need the service table, committing it
  // again if a launcher-mode teardown released it (release_when_idle).
  Result<void> HoldServiceTable(bool stateful);

 private:
  // What teardown does with the veth pair (see TeardownWithNamespace).
  enum class Veth { kDelete, kLeaveToKernel };
  Result<void> TeardownImpl(Veth veth);

  NetworkService* service_;
  std::string job_id_;
  std::optional<JobAddresses> addresses_;
  std::string ifname_;
  std::string table_;
  bool veth_created_ = false;
  bool table_created_ = false;
  bool registered_ = false;
  bool dns_registered_ = false;
  bool torn_down_ = false;
  bool holds_service_table_ = false;
  std::unique_ptr<NetEventSinkInterface> dns_events_;
};

}  // namespace ralph::sandbox
