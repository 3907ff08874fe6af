// An in-memory NftTables for unit tests of the table logic (JobTables):
// tables keep the plan they were committed with, ownership and the kernel's
// refusals (EEXIST, EPERM for another socket's table, EINVAL for the owner
// flag on a kernel without it) behave as nf_tables does, every operation is
// one all-or-nothing transaction, and tests may plant tables (a dead
// service's, another socket's), tamper with them, and fail the next
// transaction of a given kind.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nft_tables.h"

namespace ralph::sandbox::testing {

class FakeNftTables final : public NftTables {
 public:
  // The fake socket's port id, the owner of the tables it makes owned.
  static constexpr uint32_t kPortId = 4242;

  struct Table {
    NftTablePlan plan;
    bool owned = false;
    uint32_t owner_portid = 0;
    // set name -> addresses added (AddSetElement)
    std::map<std::string, std::vector<std::string>> elements;
  };
  enum class Op { kProbe, kApply, kDelete, kAddElement, kList, kRead };

  // `supports_owner`: whether the "kernel" has NFT_TABLE_F_OWNER.
  explicit FakeNftTables(bool supports_owner = true) : supports_owner_(supports_owner) {}

  Result<bool> ProbeTableOwner(std::string_view probe_table) override;
  Result<void> ApplyTablePlan(const NftTablePlan& plan, TableOwner owner,
                              ExistingTable existing) override;
  Result<void> DeleteTables(const std::vector<std::string>& tables) override;
  Result<void> AddSetElement(std::string_view table, std::string_view set, const IpPrefix& address,
                             uint64_t timeout_ms) override;
  Result<std::vector<NftTableInfo>> ListTables() override;
  // Compares the stored plan's nft text (RenderNft) and ownership.
  Result<bool> TableMatches(const NftTablePlan& plan) override;

  // The next operation of kind `op` fails with `err`, changing nothing.
  void FailNext(Op op, int err) { failures_[op] = err; }
  // Puts a table in place as another process would (owner_portid 0: unowned).
  void Plant(const NftTablePlan& plan, uint32_t owner_portid = 0);
  // The table of that name, null when there is none; tests may change it
  // (its rules, its comment) behind the code's back.
  Table* Find(const std::string& name);
  std::vector<std::string> Names() const;
  // Tables read back (TableMatches).
  int reads() const { return reads_; }
  // Transactions committed (successful ApplyTablePlan, DeleteTables with
  // something to delete, AddSetElement).
  int commits() const { return commits_; }

 private:
  std::optional<Error> Failure(Op op, std::string_view what);

  bool supports_owner_;
  std::map<std::string, Table> tables_;
  std::map<Op, int> failures_;
  int commits_ = 0;
  int reads_ = 0;
};

}  // namespace ralph::sandbox::testing
