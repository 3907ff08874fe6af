// What the DHCP client hook does with the resolver file, decided from the
// environment dhcpcd(8) gives its script (dhcpcd-run-hooks(8)): `reason`
// and, for a lease, `new_domain_name_servers` / `new_domain_search` /
// `new_domain_name`. Pure: the hook binary applies the plan.
#pragma once

#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::network {

// The file the hook keeps; the slot's /etc/resolv.conf is a link to it
// (the slot is read-only, /run is a tmpfs).
inline constexpr const char* kResolvConfPath = "/run/ralph/resolv.conf";

struct LeaseEnvironment {
  std::string reason;         // BOUND, RENEW, EXPIRE, ...
  std::string interface;      // eth0
  std::string name_servers;   // space-separated addresses
  std::string domain_search;  // space-separated domains
  std::string domain_name;    // one domain
};

struct ResolvConfPlan {
  enum class Action {
    kNone,    // nothing changes (an event that is not about a lease)
    kWrite,   // write `content`
    kRemove,  // the lease is gone: remove the file
  };
  Action action = Action::kNone;
  std::string content;
};

// BOUND, RENEW, REBIND, REBOOT, INFORM, STATIC: write the servers (no
// servers: remove the file); EXPIRE, NOCARRIER, RELEASE, STOP, DEPARTED,
// FAIL: remove it; anything else: nothing. kInvalidArgument names a server
// that is not an IPv4/IPv6 address or a domain with characters that would
// break the file (a hostile DHCP server must not inject lines).
Result<ResolvConfPlan> PlanResolvConf(const LeaseEnvironment& lease);

}  // namespace ralph::network
