// The nftables operations the network service needs, as an interface:
// NftSocket (nft_apply.h) does them over netlink; FakeNftTables
// (sandbox/net/testing) keeps the tables in memory, so that the table logic
// (JobTables) is unit-tested without a kernel.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {

// Whether a table being created is owned by the creating socket.
enum class TableOwner { kThisSocket, kNone };

// What ApplyTablePlan does about a table of the same name.
enum class ExistingTable {
  kFail,  // kAlreadyExists
  // Deletes it and creates the new one in the same transaction. Only for a
  // table the caller has proven stale: the kernel refuses (EPERM, nothing
  // changes) when another socket owns it.
  kReplace,
};

class NftTables {
 public:
  virtual ~NftTables() = default;

  // Whether the kernel accepts NFT_TABLE_F_OWNER: commits the creation and
  // deletion of table `probe_table` (owned) in one transaction, which leaves
  // nothing behind. false when the kernel rejects the flag (EOPNOTSUPP, or
  // EINVAL before 5.12's flag mask); other failures are errors.
  virtual Result<bool> ProbeTableOwner(std::string_view probe_table) = 0;

  // Creates the table with all its sets, chains and rules in one
  // transaction: either all of it exists afterwards or none of it.
  // kAlreadyExists when a table of that name exists (kFail), kPermission
  // when another socket owns it; other errors name the object the kernel
  // refused ("chain egress rule 12: ...").
  virtual Result<void> ApplyTablePlan(const NftTablePlan& plan, TableOwner owner,
                                      ExistingTable existing) = 0;

  // Deletes the inet tables in one transaction (missing ones are skipped);
  // a table another socket owns is an error (EPERM).
  virtual Result<void> DeleteTables(const std::vector<std::string>& tables) = 0;
  Result<void> DeleteTable(std::string_view table) { return DeleteTables({std::string(table)}); }

  // Adds `address` to the named set with a timeout (element expires after it).
  virtual Result<void> AddSetElement(std::string_view table, std::string_view set,
                                     const IpPrefix& address, uint64_t timeout_ms) = 0;

  // The inet tables of this netns, with their owner flag.
  virtual Result<std::vector<NftTableInfo>> ListTables() = 0;

  // Whether the table `plan.name` holds exactly what ApplyTablePlan(plan)
  // commits, as the kernel reports it: not dormant, not owned, the planned
  // chains (hook, priority, type, policy), each with the planned rules, in
  // order, expression by expression, and sets of the planned names (their
  // elements are not compared). false on any difference; an error only
  // when the kernel could not be asked.
  virtual Result<bool> TableMatches(const NftTablePlan& plan) = 0;
};

}  // namespace ralph::sandbox
