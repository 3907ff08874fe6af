// Doing: nftables plans committed as one libnftnl batch over libmnl.
#pragma once

#include <cstdint>
#include <string_view>

#include "platform/result.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {

// Creates the table with all its sets, chains and rules in one transaction:
// either all of it exists afterwards or none of it. kAlreadyExists when a
// table of that name exists; other errors name the object the kernel refused
// ("chain egress rule 12: ...").
Result<void> ApplyTablePlan(const NftTablePlan& plan);

// Deletes an inet table and everything in it. A missing table is success.
Result<void> DeleteTable(std::string_view table);

// Adds `address` to the named set with a timeout (element expires after it).
Result<void> AddSetElement(std::string_view table, std::string_view set, const IpPrefix& address,
                           uint64_t timeout_ms);

}  // namespace ralph::sandbox
