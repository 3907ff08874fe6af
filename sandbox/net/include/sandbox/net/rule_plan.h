// Deciding, not doing: the nftables ruleset of one job as plain data.
//
// PlanJobTable() turns a NetworkSpec and the job's addressing into an
// NftTablePlan (pure, unit-tested); nft_apply turns a plan into one libnftnl
// batch. RenderNft() prints a plan in nft(8) syntax for tests and logs.
//
// Shape of a job table ("inet ralph_<host ifname>"):
//   forward  (filter hook, policy accept): iifname <veth> jump egress,
//                                          oifname <veth> jump ingress
//   egress   established/related accept; invalid drop; spoofed source drop;
//            always-blocked destinations: log + drop (reason per range);
//            allowlist rules: log + accept; DNS-learned sets @dns4/@dns6 on
//            the domain ports: log + accept; everything else: log + drop
//   ingress  established/related accept; drop (nothing may connect in)
//   input    (filter hook, policy accept): iifname <veth> jump host_in
//   host_in  established/related accept; DNS (udp/tcp 53) to the host end
//            of the veth accept; IPv6 neighbour discovery accept; IPv6
//            multicast housekeeping drop; everything else: log + drop
//            (host addresses, loopback services, other jobs' gateways)
//   postrouting (nat hook): the job's own source addresses masquerade
// Log prefixes are "<ifname> <a|d> <reason>" so the NFLOG listener can map
// a packet to its job and verdict.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

enum class NftHook { kNone, kForward, kInput, kPostrouting };
enum class NftVerdict { kNone, kAccept, kDrop, kJump, kReturn };

// conntrack state bits as the kernel defines them (NF_CT_STATE_BIT).
inline constexpr uint32_t kCtInvalid = 1;
inline constexpr uint32_t kCtEstablished = 2;
inline constexpr uint32_t kCtRelated = 4;
inline constexpr uint32_t kCtNew = 8;

struct NftRule {
  // Interface names: exact, or a prefix when the name ends in '*'.
  std::optional<std::string> iifname;
  std::optional<std::string> oifname;
  std::optional<IpFamily> family;  // meta nfproto; required by address matches
  std::optional<IpPrefix> saddr;
  bool saddr_negate = false;  // match when the source is NOT in saddr
  std::optional<IpPrefix> daddr;
  std::optional<std::string> daddr_set;  // named set of the table
  std::optional<uint8_t> l4proto;        // IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6
  uint16_t dport_min = 0;                // with l4proto tcp/udp; 0 = any port
  uint16_t dport_max = 0;
  std::optional<uint8_t> icmpv6_type;     // with l4proto IPPROTO_ICMPV6
  uint32_t ct_state = 0;                  // any of these bits; 0 = no match
  std::optional<std::string> log_prefix;  // log group <nflog_group> prefix ...
  bool masquerade = false;
  NftVerdict verdict = NftVerdict::kNone;
  std::string jump_chain;  // with kJump
};

struct NftChain {
  std::string name;
  NftHook hook = NftHook::kNone;  // kNone: a regular chain reached by jump
  bool nat = false;               // type nat instead of type filter
  int32_t priority = 0;
  NftVerdict policy = NftVerdict::kAccept;
  std::vector<NftRule> rules;
};

struct NftSet {
  std::string name;
  IpFamily family = IpFamily::kV4;  // ipv4_addr or ipv6_addr keys
  bool timeout = true;              // elements carry a timeout
};

struct NftTablePlan {
  std::string name;  // family inet
  uint16_t nflog_group = 0;
  std::vector<NftSet> sets;
  std::vector<NftChain> chains;
};

// A destination that is always dropped, whatever the allowlist says.
struct BlockedRange {
  IpPrefix prefix;
  std::string reason;  // "metadata", "rfc1918", "link-local", ...
};

// The built-in block list, most specific first (metadata before the ranges
// containing it, so the event names the sharper reason).
const std::vector<BlockedRange>& AlwaysBlockedRanges();

// The job's side of the addressing, as PlanJobTable needs it.
struct JobAddressing {
  std::string host_ifname;  // host end of the veth, <= 15 bytes
  IpPrefix host_v4;         // single addresses (/32, /128)
  IpPrefix job_v4;
  IpPrefix host_v6;
  IpPrefix job_v6;
};

inline constexpr std::string_view kDnsSetV4 = "dns4";
inline constexpr std::string_view kDnsSetV6 = "dns6";
inline constexpr uint16_t kDnsPort = 53;

// Table name for a job's host interface: "ralph_<ifname>".
std::string JobTableName(std::string_view host_ifname);

// Validates the spec (kInvalidArgument naming the bad rule) and plans the
// job's table; stateful (conntrack, NAT) only when JobHasEgress(spec). Pure.
Result<NftTablePlan> PlanJobTable(const JobAddressing& addressing, const NetworkSpec& spec,
                                  uint16_t nflog_group);

// `plan` without its log statements, for a service that reports no events:
// rules that only logged are gone, the others keep their matches and
// verdicts, and a chain of drops that ends in a drop of everything (the
// default-deny chains, whose rules differed only in the reason they logged)
// is that one drop. It drops and accepts exactly the packets `plan` does.
// Pure.
NftTablePlan WithoutLogging(NftTablePlan plan);

// A canonical text of everything in `spec` that shapes the job's table
// (enabled, allow rules, domains, domain ports): equal keys, equal tables
// (up to the slot's names and addresses). Pure.
std::string NetworkSpecKey(const NetworkSpec& spec);

enum class ForwardingPolicy {
  kOnlyJobs,   // forward only to and from the job veths, drop the rest
  kUntouched,  // leave other forwarding to whoever configured it
};

// The service-wide table "ralph_service": with kOnlyJobs, forwarding is
// allowed only to and from interfaces whose names start with `ifname_prefix`
// (the job veths), so enabling ip_forward for jobs does not turn the
// appliance into a router for anything else. `stateful` (needed once any
// job may send past the host): invalid conntrack state is dropped, and an
// idle nat chain keeps conntrack and NAT registered for the service's
// lifetime, so job tables do not register them. Pure.
NftTablePlan PlanServiceTable(std::string_view table_name, std::string_view ifname_prefix,
                              ForwardingPolicy forwarding, bool stateful = true);

// The warm tables (NetworkServiceConfig::service_tables = kWarm) that
// services of `ifname_prefix` share and leave in place between them:
// "ralph-warm-<ifname_prefix>" and "ralph-warm-ct-<ifname_prefix>". The
// '-' keeps them out of every prefix's instance name space (TableInstance:
// ifname prefixes are [a-z0-9_]), so no stale-table sweep ever takes them.
std::string WarmTableName(std::string_view ifname_prefix);
std::string WarmConntrackTableName(std::string_view ifname_prefix);

// The warm table: the service table's forwarding policy (PlanServiceTable,
// stateless) plus an empty input chain (policy accept), i.e. a hold on the
// forward and input hooks that every job table registers. While any table
// holds a hook point the kernel keeps its static key on, so a job table's
// base chains do not patch the kernel's code (first user) or patch it back
// (last user). Changes no verdict beyond the forwarding policy. Pure.
NftTablePlan PlanWarmTable(std::string_view ifname_prefix, ForwardingPolicy forwarding);
// The warm conntrack table, for once a job may send past the host: the
// stateful half of the service table (invalid conntrack state dropped when
// forwarded, an idle nat chain), which holds conntrack, NAT and masquerade
// registered. Pure.
NftTablePlan PlanWarmConntrackTable(std::string_view ifname_prefix);

// A table of the inet family as the kernel lists it.
struct NftTableInfo {
  std::string name;
  // NFT_TABLE_F_OWNER: the table belongs to the netlink socket that made it
  // (port id `owner_portid`) and the kernel deletes it when that socket
  // closes, so an owned table always has a live owner.
  bool owned = false;
  uint32_t owner_portid = 0;
};

// The service table's name for one instance: "ralph_service_<instance prefix>".
std::string ServiceTableName(std::string_view instance_prefix);

// Which instance (0..max_instances-1) of the services with `ifname_prefix`
// a table belongs to by its name — a job table
// "ralph_<ifname_prefix><letter><digits>" or a service table
// "ralph_service_<ifname_prefix><letter>", letter 'a' + instance — or
// nullopt for any other name. Pure.
std::optional<unsigned> TableInstance(std::string_view table, std::string_view ifname_prefix,
                                      unsigned max_instances);

// The candidates for the stale-table sweep: the unowned tables of
// `ifname_prefix`'s services, by instance. Owned tables are never
// candidates (their owner is alive by the kernel's guarantee). Whether an
// instance's holder is gone is the caller's question. Pure.
std::map<unsigned, std::vector<std::string>> UnownedTablesByInstance(
    const std::vector<NftTableInfo>& tables, std::string_view ifname_prefix,
    unsigned max_instances);

// nft(8) syntax of the plan ("table inet ... { ... }").
std::string RenderNft(const NftTablePlan& plan);

// Parses a log prefix made by the planner: "<ifname> <a|d> <reason>".
struct LogPrefix {
  std::string ifname;
  NetVerdict verdict = NetVerdict::kDenied;
  std::string reason;
};
std::optional<LogPrefix> ParseLogPrefix(std::string_view prefix);

}  // namespace ralph::sandbox
