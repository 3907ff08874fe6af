#include "fake_nft_tables.h"

#include <cerrno>

#include <fmt/format.h>

namespace ralph::sandbox::testing {

std::optional<Error> FakeNftTables::Failure(Op op, std::string_view what) {
  auto it = failures_.find(op);
  if (it == failures_.end()) return std::nullopt;
  int err = it->second;
  failures_.erase(it);
  return Error::FromErrno(fmt::format("fake nft: {}", what), err);
}

Result<bool> FakeNftTables::ProbeTableOwner(std::string_view probe_table) {
  if (auto failure = Failure(Op::kProbe, probe_table)) return std::move(*failure);
  return supports_owner_;
}

Result<void> FakeNftTables::ApplyTablePlan(const NftTablePlan& plan, TableOwner owner,
                                           ExistingTable existing) {
  std::string what = fmt::format("table {}", plan.name);
  if (auto failure = Failure(Op::kApply, what)) return std::move(*failure);
  if (owner == TableOwner::kThisSocket && !supports_owner_) {
    // What a pre-5.12 kernel says to an unknown table flag.
    return Error::FromErrno(fmt::format("nft batch: {}", what), EINVAL);
  }
  auto it = tables_.find(plan.name);
  if (it != tables_.end()) {
    // nft_table_lookup refuses another socket's table before NLM_F_EXCL.
    if (it->second.owned && it->second.owner_portid != kPortId) {
      return Error::FromErrno(fmt::format("nft batch: {}", what), EPERM);
    }
    if (existing == ExistingTable::kFail) {
      return Error::FromErrno(fmt::format("nft batch: {}", what), EEXIST);
    }
  }
  Table table{.plan = plan,
              .owned = owner == TableOwner::kThisSocket,
              .owner_portid = owner == TableOwner::kThisSocket ? kPortId : 0};
  tables_[plan.name] = std::move(table);
  ++commits_;
  return {};
}

Result<void> FakeNftTables::DeleteTables(const std::vector<std::string>& names) {
  if (auto failure = Failure(Op::kDelete, fmt::format("{}", fmt::join(names, ", "))))
    return std::move(*failure);
  bool any = false;
  for (const std::string& name : names) {
    auto it = tables_.find(name);
    if (it == tables_.end()) continue;
    if (it->second.owned && it->second.owner_portid != kPortId) {
      return Error::FromErrno(fmt::format("deleting table(s) inet {}", name), EPERM);
    }
    any = true;
  }
  for (const std::string& name : names) tables_.erase(name);
  if (any) ++commits_;
  return {};
}

Result<void> FakeNftTables::AddSetElement(std::string_view table_name, std::string_view set,
                                          const IpPrefix& address, uint64_t /*timeout_ms*/) {
  std::string what = fmt::format("element {} in set {}", address.AddressString(), set);
  if (auto failure = Failure(Op::kAddElement, what)) return std::move(*failure);
  Table* table = Find(std::string(table_name));
  if (!table) return Error::FromErrno(what, ENOENT);
  if (table->owned && table->owner_portid != kPortId) return Error::FromErrno(what, EPERM);
  table->elements[std::string(set)].push_back(address.AddressString());
  ++commits_;
  return {};
}

Result<std::vector<NftTableInfo>> FakeNftTables::ListTables() {
  if (auto failure = Failure(Op::kList, "listing")) return std::move(*failure);
  std::vector<NftTableInfo> list;
  for (const auto& [name, table] : tables_) {
    list.push_back({.name = name, .owned = table.owned, .owner_portid = table.owner_portid});
  }
  return list;
}

Result<bool> FakeNftTables::TableMatches(const NftTablePlan& plan) {
  if (auto failure = Failure(Op::kRead, plan.name)) return std::move(*failure);
  ++reads_;
  const Table* table = Find(plan.name);
  return table && !table->owned && RenderNft(table->plan) == RenderNft(plan);
}

void FakeNftTables::Plant(const NftTablePlan& plan, uint32_t owner_portid) {
  tables_[plan.name] =
      Table{.plan = plan, .owned = owner_portid != 0, .owner_portid = owner_portid};
}

FakeNftTables::Table* FakeNftTables::Find(const std::string& name) {
  auto it = tables_.find(name);
  return it == tables_.end() ? nullptr : &it->second;
}

std::vector<std::string> FakeNftTables::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, table] : tables_) names.push_back(name);
  return names;
}

}  // namespace ralph::sandbox::testing
