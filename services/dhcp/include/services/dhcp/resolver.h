// DNS from DHCP. dhcpcd runs our hook (`script` in the slot's
// /etc/dhcpcd.conf; a C++ binary, since a slot has no shell) on every lease
// event with the lease in its environment (dhcpcd-run-hooks(8): `reason`,
// `interface`, `new_domain_name_servers`, `new_domain_search`,
// `new_domain_name`). The hook keeps the resolver file current:
//
//   /run/ralph/dns/<interface>   what that interface's lease says (servers,
//                                search list), in resolv.conf syntax
//   /run/ralph/resolv.conf       all interfaces merged; /etc/resolv.conf in
//                                the read-only root is a link to it
//
// Every file is replaced atomically (WriteFileAtomically, platform/file_io.h),
// so a resolver sees the old or the new file, never a torn one; /run is a
// tmpfs, so nothing is synced. Deciding (PlanDnsUpdate, RenderResolvConf) is pure; ApplyDnsUpdate
// does the file work.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::dhcp {

// What one interface's lease says about DNS.
struct InterfaceDns {
  std::string interface;
  std::vector<std::string> servers;  // IPv4/IPv6 literals, in lease order
  std::vector<std::string> search;   // domain_search, else domain_name
  friend bool operator==(const InterfaceDns&, const InterfaceDns&) = default;
};

enum class DnsAction {
  kSet,    // the interface has a lease with DNS servers: record them
  kClear,  // the interface's lease is gone (or names no server): forget it
  kNone,   // nothing about DNS changed (PREINIT, CARRIER, IPv6 events, ...)
};

struct DnsUpdate {
  DnsAction action = DnsAction::kNone;
  InterfaceDns dns;  // kSet: the new state; kClear: the interface
  std::string why;   // "BOUND on eth0: 1 server", for the log
};

// Decides from dhcpcd's environment:
//   BOUND RENEW REBIND REBOOT INFORM STATIC TIMEOUT -> kSet from new_*
//     (kClear when the lease names no server);
//   EXPIRE FAIL RELEASE STOP STOPPED NOCARRIER NOCARRIER_ROAMING DEPARTED
//   IPV4LL -> kClear;
//   anything else -> kNone.
// kInvalidArgument naming the variable and value when `reason` or
// `interface` is missing, the interface is not a plain name, a server is
// not an IPv4/IPv6 address, or a search domain is not a domain name (a
// lease is untrusted input: nothing it says reaches the file unchecked).
Result<DnsUpdate> PlanDnsUpdate(const std::map<std::string, std::string>& env);

// At most this many nameservers reach resolv.conf (glibc's MAXNS) and this
// many search domains.
inline constexpr size_t kMaxNameservers = 3;
inline constexpr size_t kMaxSearchDomains = 6;

// The merged resolver file: interfaces in name order, their servers then
// search domains de-duplicated and capped as above. No interface: a file
// that says so and names no server.
std::string RenderResolvConf(std::vector<InterfaceDns> interfaces);

// One interface's state file ("nameserver X" lines, a "search" line) and
// back. ParseInterfaceState checks what it reads as PlanDnsUpdate does.
std::string RenderInterfaceState(const InterfaceDns& dns);
Result<InterfaceDns> ParseInterfaceState(std::string_view interface, std::string_view text);

struct ResolverPaths {
  std::string state_dir = "/run/ralph/dns";
  std::string resolv_conf = "/run/ralph/resolv.conf";
};

// Records (kSet) or removes (kClear) the interface's state file, then
// rewrites resolv.conf from every state file. kNone does nothing. Creates
// the directories it needs.
Result<void> ApplyDnsUpdate(const DnsUpdate& update, const ResolverPaths& paths = {});

}  // namespace ralph::dhcp
