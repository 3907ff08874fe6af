#include "job_tables.h"

#include <algorithm>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

// The listed table named `name`, or null.
const NftTableInfo* FindTable(const std::vector<NftTableInfo>& tables, std::string_view name) {
  auto it = std::find_if(tables.begin(), tables.end(),
                         [&](const NftTableInfo& table) { return table.name == name; });
  return it == tables.end() ? nullptr : &*it;
}

}  // namespace

Result<void> JobTables::Start(bool stateful) {
  // A launcher's tables are all unowned: its job's stays after it, and no
  // probe transaction is spent at every start.
  if (config_.ownership == TableOwnership::kIfSupported &&
      config_.service_tables == ServiceTables::kPerService) {
    TRY(ProbeOwnership());
  }
  std::vector<NftTableInfo> tables = TRY(SweepStaleTables());
  // Every instance's table accepts forwarding for all "<ifname_prefix>*"
  // veths: a packet must pass every base chain of the hook, so a narrower
  // pattern would make each instance drop the others' traffic. A leftover
  // of this name went with the sweep above.
  std::lock_guard lock(tables_mutex_);
  if (config_.service_tables == ServiceTables::kWarm) {
    // Warm tables that the listing shows are taken as they are, without
    // sending their plan only to have it refused (EEXIST). They hold hooks
    // and the forwarding policy for other interfaces; a job's confinement
    // is all in its own table.
    service_table_ = FindTable(tables, WarmTableName(config_.ifname_prefix)) != nullptr;
    service_table_stateful_ =
        FindTable(tables, WarmConntrackTableName(config_.ifname_prefix)) != nullptr;
  }
  return CommitServiceTable(stateful);
}

void JobTables::Stop() {
  std::lock_guard lock(tables_mutex_);
  // Warm tables stay for the next service (RemoveWarmTables).
  if (service_table_ && config_.service_tables == ServiceTables::kPerService)
    IgnoreError(nft_.DeleteTable(config_.service_table_name));
  service_table_ = service_table_stateful_ = false;
}

Result<void> JobTables::ProbeOwnership() {
  owned_ = TRY(nft_.ProbeTableOwner(fmt::format("ralph_probe_{}{}", config_.ifname_prefix,
                                                static_cast<char>('a' + config_.instance))));
  owner_known_ = true;
  if (owned_) {
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

Result<void> JobTables::ApplyOwnedTable(const NftTablePlan& plan, ExistingTable existing) {
  if (!owned_) return nft_.ApplyTablePlan(plan, TableOwner::kNone, existing);
  auto applied = nft_.ApplyTablePlan(plan, TableOwner::kThisSocket, existing);
  if (applied || owner_known_) return applied;
  // Before 5.12 nf_tables_newtable refused the owner flag with EINVAL
  // (EOPNOTSUPP for unknown flags since): only a probe tells that EINVAL
  // from one a rule of the plan caused.
  int code = applied.error().sys_errno();
  if (code != EINVAL && code != EOPNOTSUPP) return applied;
  TRY(ProbeOwnership());
  if (owned_) return applied;
  return nft_.ApplyTablePlan(plan, TableOwner::kNone, existing);
}

Result<void> JobTables::CommitJobTable(const NftTablePlan& plan, InTheWay in_the_way) {
  bool leftover;
  {
    std::lock_guard lock(tables_mutex_);
    leftover = leftovers_.erase(plan.name) != 0;
  }
  if (leftover) {
    // Listed unowned in our instance's name space, which we hold. Taken
    // only when the kernel's rules are the plan's, read back and compared
    // (a table whose DNS sets another job filled never is); replaced in the
    // job's own transaction otherwise (the kernel refuses, changing nothing,
    // should a live socket own it by now).
    bool uses_sets = false;
    for (const NftChain& chain : plan.chains) {
      for (const NftRule& rule : chain.rules) uses_sets = uses_sets || rule.daddr_set.has_value();
    }
    if (!uses_sets) {
      auto same = nft_.TableMatches(plan);
      if (same && *same) return {};
      if (!same) Log(LogLevel::kWarning, same.error().ToString());
    }
    auto replaced = ApplyOwnedTable(plan, ExistingTable::kReplace);
    if (!replaced) {
      std::lock_guard lock(tables_mutex_);
      leftovers_.insert(plan.name);
    }
    return replaced;
  }
  auto applied = ApplyOwnedTable(plan, ExistingTable::kFail);
  // EEXIST: a table of that name is in the way; EPERM: one that another
  // socket owns (nft_table_lookup refuses before NLM_F_EXCL is looked at).
  if (applied || in_the_way == InTheWay::kFail ||
      (applied.error().code() != ErrorCode::kAlreadyExists &&
       applied.error().code() != ErrorCode::kPermissionDenied)) {
    return applied;
  }
  // The table is not ours (its slot is free in our pool) but its name is in
  // our instance's name space, which we hold. Unowned, it is a leftover of a
  // previous holder of the instance, which is gone: replaced in the same
  // transaction, whatever it holds. Owned, a live socket holds it (the
  // kernel deletes owned tables with their socket): not ours to touch.
  auto tables = TRY_CTX(nft_.ListTables(), "checking a table in the way");
  const NftTableInfo* it = FindTable(tables, plan.name);
  if (it && it->owned) {
    return Error::Make(ErrorCode::kAlreadyExists,
                       fmt::format("nft table inet {} exists and is owned by the live netlink "
                                   "socket with port id {}",
                                   plan.name, it->owner_portid));
  }
  if (!it) return applied;
  TRY(ApplyOwnedTable(plan, ExistingTable::kReplace));
  Log(LogLevel::kInfo, fmt::format("replaced stale table inet {}", plan.name));
  return {};
}

Result<void> JobTables::HoldServiceTable(bool stateful) {
  std::lock_guard lock(tables_mutex_);
  TRY_CTX(CommitServiceTable(stateful), "committing the service table");
  ++holders_;
  return {};
}

Result<void> JobTables::EnsureServiceTable(bool stateful) {
  std::lock_guard lock(tables_mutex_);
  return CommitServiceTable(stateful);
}

void JobTables::DropHold() {
  std::lock_guard lock(tables_mutex_);
  --holders_;
}

Result<void> JobTables::DeleteJobTables(const std::vector<std::string>& tables, bool held,
                                        WhenIdle when_idle) {
  std::lock_guard lock(tables_mutex_);
  if (config_.service_tables == ServiceTables::kWarm) {
    // Left for their slots' next jobs to replace: see the header.
    leftovers_.insert(tables.begin(), tables.end());
    if (held) --holders_;
    return {};
  }
  std::vector<std::string> names = tables;
  // The last job of a launcher that exits next: its service table goes in
  // the same transaction, so the kernel's RCU grace period for the
  // unregistered hooks passes while the launcher finishes its teardown
  // rather than in its exit (closing the nft socket waits for it).
  bool release = when_idle == WhenIdle::kReleaseServiceTable && config_.release_when_idle &&
                 config_.service_tables == ServiceTables::kPerService && held && holders_ == 1 &&
                 service_table_;
  if (release) names.push_back(config_.service_table_name);
  if (!names.empty()) TRY(nft_.DeleteTables(names));
  if (release) service_table_ = service_table_stateful_ = false;
  if (held) --holders_;
  return {};
}

Result<void> JobTables::AddDnsAddress(const std::string& table, const IpPrefix& address,
                                      uint64_t ttl_ms) {
  return nft_.AddSetElement(table, address.family == IpFamily::kV4 ? kDnsSetV4 : kDnsSetV6, address,
                            ttl_ms);
}

Result<std::vector<NftTableInfo>> JobTables::SweepStaleTables() {
  auto tables = TRY_CTX(nft_.ListTables(), "sweeping stale tables");
  for (auto& [instance, names] :
       UnownedTablesByInstance(tables, config_.ifname_prefix, config_.max_instances)) {
    // Another instance's tables are stale only while nobody holds it; its
    // claim, taken here, keeps a new holder out until they are gone.
    UniqueFd claim;
    if (instance == config_.instance && config_.service_tables == ServiceTables::kWarm) {
      // A launcher leaves its job tables for the next job of their slot to
      // replace; the rest of them are leftovers.
      std::vector<std::string> stale;
      std::lock_guard lock(tables_mutex_);
      for (std::string& name : names) {
        if (name == config_.service_table_name) {
          stale.push_back(std::move(name));
        } else {
          leftovers_.insert(std::move(name));
        }
      }
      names = std::move(stale);
    }
    if (instance != config_.instance) {
      auto claimed = config_.try_claim(instance);
      if (!claimed) return std::move(claimed).error().WithContext("sweeping stale tables");
      if (!*claimed) continue;  // alive
      claim = std::move(**claimed);
    }
    for (const std::string& name : names) {
      TRY_CTX(nft_.DeleteTable(name), "removing a stale table");
      Log(LogLevel::kInfo,
          fmt::format("removed stale table inet {} (instance {} of \"{}\" is gone)", name,
                      static_cast<char>('a' + instance), config_.ifname_prefix));
    }
  }
  return tables;
}

Result<void> JobTables::CommitServiceTable(bool stateful) {
  if (service_table_ && (service_table_stateful_ || !stateful)) return {};
  if (config_.service_tables == ServiceTables::kWarm) return EnsureWarmTables(stateful);
  // Replacing our own table in one transaction: the forwarding policy never
  // lapses, and the hooks it shares with the new one stay registered.
  TRY(ApplyOwnedTable(PlanServiceTable(config_.service_table_name, config_.ifname_prefix,
                                       config_.forwarding, stateful),
                      service_table_ ? ExistingTable::kReplace : ExistingTable::kFail));
  service_table_ = true;
  service_table_stateful_ = stateful;
  return {};
}

Result<void> JobTables::EnsureWarmTables(bool stateful) {
  // Another service of the prefix (now or before) may have made them: a
  // table that exists is taken as it is. Unowned, so they outlive this
  // service; created, never replaced, so a running service's hold never
  // lapses (the conntrack part is a table of its own for that reason).
  auto create = [&](const NftTablePlan& plan) -> Result<void> {
    auto created = nft_.ApplyTablePlan(plan, TableOwner::kNone, ExistingTable::kFail);
    if (!created && created.error().code() == ErrorCode::kAlreadyExists) return {};
    TRY_CTX(std::move(created), fmt::format("making the warm table inet {}", plan.name));
    Log(LogLevel::kDebug, fmt::format("made the warm table inet {}", plan.name));
    return {};
  };
  if (!service_table_) {
    TRY(create(PlanWarmTable(config_.ifname_prefix, config_.forwarding)));
    service_table_ = true;
  }
  if (stateful && !service_table_stateful_) {
    TRY(create(PlanWarmConntrackTable(config_.ifname_prefix)));
    service_table_stateful_ = true;
  }
  return {};
}

Result<std::vector<std::string>> JobTables::RemoveWarmTables(NftTables& nft,
                                                             std::string_view ifname_prefix,
                                                             unsigned max_instances,
                                                             const InstanceClaimer& try_claim) {
  auto tables = TRY(nft.ListTables());
  std::vector<std::string> removed;
  for (const std::string& name :
       {WarmTableName(ifname_prefix), WarmConntrackTableName(ifname_prefix)}) {
    if (FindTable(tables, name)) removed.push_back(name);
  }
  // The unowned tables of an instance that a live service holds may be its
  // jobs'; the others' instances are claimed until theirs are gone.
  std::vector<UniqueFd> claims;
  for (const auto& [instance, names] :
       UnownedTablesByInstance(tables, ifname_prefix, max_instances)) {
    auto claimed = TRY(try_claim(instance));
    if (!claimed) continue;  // held
    claims.push_back(std::move(*claimed));
    removed.insert(removed.end(), names.begin(), names.end());
  }
  if (!removed.empty()) TRY(nft.DeleteTables(removed));
  return removed;
}

}  // namespace ralph::sandbox
