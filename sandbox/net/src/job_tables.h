// Deciding which nft tables one service instance commits and deletes, over
// the NftTables interface (the kernel, or a fake in unit tests):
//
// - ownership: whether tables are made owned by the service's socket
//   (NFT_TABLE_F_OWNER), probed or found out by the first table;
// - the service-wide tables (the instance's own service table, or the warm
//   tables a launcher shares and leaves), committed while any job holds
//   them and, with release_when_idle, released with the last one;
// - job tables, always committed by the job that uses them, in one
//   transaction, so that what filters a job is what this process sent: a
//   table of the job's name that a dead holder of the instance left (of
//   whatever content) is replaced in that transaction, never taken. With
//   ServiceTables::kWarm (a launcher: one job, then exit) job tables are
//   unowned and left in place after their job, inert (no link of their
//   name exists). The next job of the slot takes what is there only when
//   the kernel's rules, read back, are its plan's (NftTables::TableMatches)
//   and its plan looks up no set (DNS sets hold another job's answers);
//   otherwise it replaces it in its own transaction. Any transaction, a
//   deletion as much as a commit, makes a launcher's exit wait out the
//   kernel's RCU grace period (releasing an nft socket flushes pending
//   nf_tables destruction work), which under load costs more than the rest
//   of its network: reading back costs no grace period;
// - the stale-table sweep of Start(), and RemoveWarmTables (`drain`).
// Thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "nft_tables.h"
#include "platform/log.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/net/network_service.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {

// Claims instance `n` of the service's ifname prefix (held until the fd
// closes), or nullopt when a live service holds it.
using InstanceClaimer = std::function<Result<std::optional<UniqueFd>>(unsigned n)>;

struct JobTablesConfig {
  std::string ifname_prefix;  // the services' prefix ("rj")
  unsigned instance = 0;
  unsigned max_instances = NetworkService::kMaxInstances;
  std::string service_table_name;  // ServiceTables::kPerService
  ServiceTables service_tables = ServiceTables::kPerService;
  ForwardingPolicy forwarding = ForwardingPolicy::kOnlyJobs;
  TableOwnership ownership = TableOwnership::kIfSupported;
  bool release_when_idle = false;
  InstanceClaimer try_claim;
  std::function<void(LogLevel level, const std::string& message)> log;
};

// What DeleteJobTable does with the service table when its job was the last
// one holding it.
enum class WhenIdle { kKeepServiceTable, kReleaseServiceTable };

class JobTables {
 public:
  JobTables(NftTables& nft, JobTablesConfig config) : nft_(nft), config_(std::move(config)) {}

  // Settles ownership (a probe transaction with kPerService; kWarm makes
  // every table unowned), removes the unowned tables of this instance and
  // of instances nobody holds, and commits the service table (stateful:
  // with conntrack and NAT). kWarm: this instance's job tables are kept as
  // leftovers for their slots' next jobs to replace, and warm tables that
  // the listing shows are taken as they are.
  Result<void> Start(bool stateful);
  // Deletes the service table (kPerService; warm tables stay).
  void Stop();

  // Whether tables are made owned by the service's socket.
  bool owned() const { return owned_; }

  // Counts one more job that needs the service table, committing it (or its
  // stateful version) first when it is missing.
  Result<void> HoldServiceTable(bool stateful);
  // Commits the service table as HoldServiceTable would, holding nothing.
  Result<void> EnsureServiceTable(bool stateful);
  // One job less needs it (its table is deleted elsewhere).
  void DropHold();

  // What CommitJobTable does about a table of the job's name in the way.
  enum class InTheWay {
    kReplaceStale,  // unowned (its maker is gone): replaced in the same transaction
    kFail,          // kAlreadyExists / kPermissionDenied
  };
  // Commits a job's table, owned when tables are. A table of that name in
  // the way is never taken as it is; one owned by a live socket is
  // kAlreadyExists naming its port id. A leftover (kWarm) is taken when it
  // matches the plan, else replaced in the same transaction whatever
  // `in_the_way` says.
  Result<void> CommitJobTable(const NftTablePlan& plan, InTheWay in_the_way);

  // Deletes `tables` (job tables) in one transaction (kWarm: leaves them in
  // place as leftovers, committing nothing); with kReleaseServiceTable
  // and release_when_idle, when `held` was the last hold on the service
  // table, that table goes in the same transaction. On success a held job's
  // hold is dropped.
  Result<void> DeleteJobTables(const std::vector<std::string>& tables, bool held,
                               WhenIdle when_idle);

  // Opens `address` in the DNS set of the job table `table` for `ttl_ms`.
  Result<void> AddDnsAddress(const std::string& table, const IpPrefix& address, uint64_t ttl_ms);

  // Removes the warm tables of `ifname_prefix`, and the unowned tables of
  // every instance that nobody holds (claimed through `try_claim` while they
  // go), and returns their names. Missing ones are not an error.
  static Result<std::vector<std::string>> RemoveWarmTables(NftTables& nft,
                                                           std::string_view ifname_prefix,
                                                           unsigned max_instances,
                                                           const InstanceClaimer& try_claim);

 private:
  Result<void> ProbeOwnership();
  // Commits `plan` owned by the service's socket where the kernel allows it.
  Result<void> ApplyOwnedTable(const NftTablePlan& plan, ExistingTable existing);
  Result<std::vector<NftTableInfo>> SweepStaleTables();
  // tables_mutex_ held.
  Result<void> CommitServiceTable(bool stateful);
  Result<void> EnsureWarmTables(bool stateful);
  void Log(LogLevel level, const std::string& message) const {
    if (config_.log) config_.log(level, message);
  }

  NftTables& nft_;
  const JobTablesConfig config_;
  // Whether tables are made owned, and whether that is known (set before
  // jobs start, or by the first table's commit; atomic for the preparer
  // thread's reads).
  std::atomic<bool> owned_ = false;
  std::atomic<bool> owner_known_ = false;
  std::mutex tables_mutex_;
  bool service_table_ = false;           // guarded by tables_mutex_, as below
  bool service_table_stateful_ = false;  // its conntrack/NAT part exists
  size_t holders_ = 0;                   // jobs that need it
  // kWarm: this instance's job tables in place that no job uses (left by
  // an earlier job, of this process or of an earlier holder of the
  // instance), each to be replaced by the next job of its slot.
  std::set<std::string> leftovers_;  // guarded by tables_mutex_
};

}  // namespace ralph::sandbox
