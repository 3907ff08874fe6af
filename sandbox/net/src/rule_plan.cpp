#include "sandbox/net/rule_plan.h"

#include <netinet/in.h>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

IpPrefix MustParse(std::string_view text) {
  // Only called on the compile-time constant block list below; a typo there
  // is a bug caught by the unit test that walks the whole list.
  auto parsed = IpPrefix::Parse(text);
  return parsed ? *parsed : IpPrefix{};
}

std::vector<BlockedRange> MakeBlockedRanges() {
  struct Entry {
    const char* cidr;
    const char* reason;
  };
  // Cloud metadata endpoints first: they sit inside the broader ranges below.
  static constexpr Entry kEntries[] = {
      {"169.254.169.254", "metadata"},    // AWS, GCP, Azure IMDS, OpenStack, Oracle
      {"169.254.170.2", "metadata"},      // AWS ECS task metadata
      {"100.100.100.200", "metadata"},    // Alibaba Cloud
      {"168.63.129.16", "metadata"},      // Azure wireserver (a public address)
      {"fd00:ec2::254", "metadata"},      // AWS IMDS over IPv6
      {"fd00:ec2::23", "metadata"},       // AWS Time Sync / DNS over IPv6
      {"0.0.0.0/8", "this-network"},      // RFC 1122
      {"127.0.0.0/8", "loopback"},        // RFC 1122
      {"10.0.0.0/8", "rfc1918"},          // RFC 1918
      {"172.16.0.0/12", "rfc1918"},       // RFC 1918
      {"192.168.0.0/16", "rfc1918"},      // RFC 1918
      {"100.64.0.0/10", "cgnat"},         // RFC 6598
      {"169.254.0.0/16", "link-local"},   // RFC 3927
      {"192.0.0.0/24", "ietf-protocol"},  // RFC 6890
      {"224.0.0.0/4", "multicast"},       // RFC 5771
      {"240.0.0.0/4", "reserved"},        // RFC 1112, includes 255.255.255.255
      {"::/128", "unspecified"},          // RFC 4291
      {"::1/128", "loopback"},            // RFC 4291
      {"::ffff:0:0/96", "v4-mapped"},     // would reach IPv4 through a v6 socket
      {"64:ff9b::/96", "nat64"},          // RFC 6052: embeds any IPv4 address
      {"64:ff9b:1::/48", "nat64"},        // RFC 8215
      {"2002::/16", "6to4"},              // RFC 3056: embeds any IPv4 address
      {"fc00::/7", "ula"},                // RFC 4193, includes the job pool
      {"fe80::/10", "link-local"},        // RFC 4291
      {"ff00::/8", "multicast"},          // RFC 4291
  };
  std::vector<BlockedRange> ranges;
  for (const Entry& entry : kEntries) ranges.push_back({MustParse(entry.cidr), entry.reason});
  return ranges;
}

std::string Prefix(std::string_view ifname, NetVerdict verdict, std::string_view reason) {
  return fmt::format("{} {} {}", ifname, verdict == NetVerdict::kAllowed ? 'a' : 'd', reason);
}

}  // namespace

const std::vector<BlockedRange>& AlwaysBlockedRanges() {
  static const std::vector<BlockedRange> ranges = MakeBlockedRanges();
  return ranges;
}

std::string JobTableName(std::string_view host_ifname) {
  return fmt::format("ralph_{}", host_ifname);
}

std::string ServiceTableName(std::string_view instance_prefix) {
  return fmt::format("ralph_service_{}", instance_prefix);
}

std::optional<unsigned> TableInstance(std::string_view table, std::string_view ifname_prefix,
                                      unsigned max_instances) {
  auto instance_of = [&](char letter) -> std::optional<unsigned> {
    if (letter < 'a' || static_cast<unsigned>(letter - 'a') >= max_instances) return std::nullopt;
    return static_cast<unsigned>(letter - 'a');
  };
  // Service table: "ralph_service_<prefix><letter>", nothing after.
  constexpr std::string_view kService = "ralph_service_";
  if (table.starts_with(kService) && table.substr(kService.size()).starts_with(ifname_prefix)) {
    std::string_view rest = table.substr(kService.size() + ifname_prefix.size());
    if (rest.size() == 1) return instance_of(rest[0]);
  }
  // Job table: "ralph_<prefix><letter><one or more digits>".
  constexpr std::string_view kJob = "ralph_";
  if (!table.starts_with(kJob) || !table.substr(kJob.size()).starts_with(ifname_prefix)) {
    return std::nullopt;
  }
  std::string_view rest = table.substr(kJob.size() + ifname_prefix.size());
  if (rest.size() < 2) return std::nullopt;
  for (char c : rest.substr(1)) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  return instance_of(rest[0]);
}

std::map<unsigned, std::vector<std::string>> UnownedTablesByInstance(
    const std::vector<NftTableInfo>& tables, std::string_view ifname_prefix,
    unsigned max_instances) {
  std::map<unsigned, std::vector<std::string>> result;
  for (const NftTableInfo& table : tables) {
    if (table.owned) continue;
    if (auto instance = TableInstance(table.name, ifname_prefix, max_instances)) {
      result[*instance].push_back(table.name);
    }
  }
  return result;
}

Result<NftTablePlan> PlanJobTable(const JobAddressing& addressing, const NetworkSpec& spec,
                                  uint16_t nflog_group) {
  const bool stateful = JobHasEgress(spec);
  const std::string& ifname = addressing.host_ifname;
  if (ifname.empty() || ifname.size() > 15) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("host interface name \"{}\" must be 1..15 bytes", ifname));
  }
  if (addressing.host_v4.family != IpFamily::kV4 || addressing.job_v4.family != IpFamily::kV4 ||
      addressing.host_v6.family != IpFamily::kV6 || addressing.job_v6.family != IpFamily::kV6 ||
      !addressing.host_v4.is_address() || !addressing.job_v4.is_address() ||
      !addressing.host_v6.is_address() || !addressing.job_v6.is_address()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "job addressing needs single IPv4 and IPv6 host/job addresses");
  }

  NftTablePlan plan;
  plan.name = JobTableName(ifname);
  plan.nflog_group = nflog_group;
  plan.sets = {{std::string(kDnsSetV4), IpFamily::kV4, true},
               {std::string(kDnsSetV6), IpFamily::kV6, true}};

  // forward: dispatch this job's traffic; leave everything else alone.
  NftChain forward{.name = "forward", .hook = NftHook::kForward, .priority = 0};
  forward.rules.push_back(
      {.iifname = ifname, .verdict = NftVerdict::kJump, .jump_chain = "egress"});
  forward.rules.push_back(
      {.oifname = ifname, .verdict = NftVerdict::kJump, .jump_chain = "ingress"});

  NftChain egress{.name = "egress"};
  if (stateful) {
    egress.rules.push_back(
        {.ct_state = kCtEstablished | kCtRelated, .verdict = NftVerdict::kAccept});
    egress.rules.push_back({.ct_state = kCtInvalid, .verdict = NftVerdict::kDrop});
  }
  egress.rules.push_back({.family = IpFamily::kV4,
                          .saddr = addressing.job_v4,
                          .saddr_negate = true,
                          .log_prefix = Prefix(ifname, NetVerdict::kDenied, "spoofed-source"),
                          .verdict = NftVerdict::kDrop});
  egress.rules.push_back({.family = IpFamily::kV6,
                          .saddr = addressing.job_v6,
                          .saddr_negate = true,
                          .log_prefix = Prefix(ifname, NetVerdict::kDenied, "spoofed-source"),
                          .verdict = NftVerdict::kDrop});
  for (const BlockedRange& blocked : AlwaysBlockedRanges()) {
    egress.rules.push_back({.family = blocked.prefix.family,
                            .daddr = blocked.prefix,
                            .log_prefix = Prefix(ifname, NetVerdict::kDenied, blocked.reason),
                            .verdict = NftVerdict::kDrop});
  }

  for (size_t i = 0; i < spec.allow.size(); ++i) {
    const EgressRule& rule = spec.allow[i];
    auto prefix = IpPrefix::Parse(rule.cidr);
    if (!prefix) return std::move(prefix).error().WithContext(fmt::format("allow[{}]", i));
    uint16_t port_min = rule.port_min;
    uint16_t port_max = rule.port_max == 0 ? rule.port_min : rule.port_max;
    if (port_min == 0 && port_max != 0) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("allow[{}] ({}): port range 0-{}: port_min must be 1..65535 "
                                     "when port_max is set",
                                     i, rule.cidr, port_max));
    }
    if (port_max < port_min) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("allow[{}] ({}): port range {}-{} is reversed", i, rule.cidr,
                                     port_min, port_max));
    }
    NftRule base{.family = prefix->family,
                 .daddr = *prefix,
                 .dport_min = port_min,
                 .dport_max = port_max,
                 .log_prefix = Prefix(ifname, NetVerdict::kAllowed, "allowlist"),
                 .verdict = NftVerdict::kAccept};
    if (prefix->length == 0) base.daddr.reset();  // "0.0.0.0/0": family match alone
    std::vector<uint8_t> protocols;
    switch (rule.protocol) {
      case Protocol::kTcp: protocols = {IPPROTO_TCP}; break;
      case Protocol::kUdp: protocols = {IPPROTO_UDP}; break;
      case Protocol::kAny:
        // Ports only exist for TCP and UDP; without ports, every protocol.
        if (port_min != 0) protocols = {IPPROTO_TCP, IPPROTO_UDP};
        break;
    }
    if (protocols.empty()) {
      egress.rules.push_back(base);
    } else {
      for (uint8_t protocol : protocols) {
        NftRule with_protocol = base;
        with_protocol.l4proto = protocol;
        egress.rules.push_back(with_protocol);
      }
    }
  }

  for (size_t i = 0; i < spec.domain_ports.size(); ++i) {
    uint16_t port = spec.domain_ports[i];
    if (port == 0) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("domain_ports[{}]: port 0 is not a port", i));
    }
    if (spec.allowed_domains.empty()) continue;
    for (IpFamily family : {IpFamily::kV4, IpFamily::kV6}) {
      egress.rules.push_back(
          {.family = family,
           .daddr_set = std::string(family == IpFamily::kV4 ? kDnsSetV4 : kDnsSetV6),
           .l4proto = IPPROTO_TCP,
           .dport_min = port,
           .dport_max = port,
           .log_prefix = Prefix(ifname, NetVerdict::kAllowed, "dns-allowlist"),
           .verdict = NftVerdict::kAccept});
    }
  }
  egress.rules.push_back({.log_prefix = Prefix(ifname, NetVerdict::kDenied, "not-allowlisted"),
                          .verdict = NftVerdict::kDrop});

  NftChain ingress{.name = "ingress"};
  if (stateful) {
    ingress.rules.push_back(
        {.ct_state = kCtEstablished | kCtRelated, .verdict = NftVerdict::kAccept});
  }
  ingress.rules.push_back({.verdict = NftVerdict::kDrop});

  NftChain input{.name = "input", .hook = NftHook::kInput, .priority = 0};
  input.rules.push_back({.iifname = ifname, .verdict = NftVerdict::kJump, .jump_chain = "host_in"});

  NftChain host_in{.name = "host_in"};
  if (stateful) {
    host_in.rules.push_back(
        {.ct_state = kCtEstablished | kCtRelated, .verdict = NftVerdict::kAccept});
  }
  // Only from the job's own address: with a spoofed source the forwarder's
  // answer (which echoes the question, i.e. job-chosen bytes) would be
  // reflected to an arbitrary host, an exfiltration path around egress.
  for (const IpPrefix& resolver : {addressing.host_v4, addressing.host_v6}) {
    const IpPrefix& job = resolver.family == IpFamily::kV4 ? addressing.job_v4 : addressing.job_v6;
    for (uint8_t protocol : {IPPROTO_UDP, IPPROTO_TCP}) {
      host_in.rules.push_back({.family = resolver.family,
                               .saddr = job,
                               .daddr = resolver,
                               .l4proto = protocol,
                               .dport_min = kDnsPort,
                               .dport_max = kDnsPort,
                               .verdict = NftVerdict::kAccept});
    }
  }
  // Neighbour discovery keeps IPv6 to the gateway working (RFC 4861 types
  // 135/136); router solicitations and MLD reports to ff02:: are the job's
  // kernel talking, not the job connecting, so they are dropped silently.
  for (uint8_t type : {135, 136}) {
    host_in.rules.push_back({.family = IpFamily::kV6,
                             .l4proto = IPPROTO_ICMPV6,
                             .icmpv6_type = type,
                             .verdict = NftVerdict::kAccept});
  }
  host_in.rules.push_back(
      {.family = IpFamily::kV6, .daddr = MustParse("ff00::/8"), .verdict = NftVerdict::kDrop});
  host_in.rules.push_back(
      {.log_prefix = Prefix(ifname, NetVerdict::kDenied, "host"), .verdict = NftVerdict::kDrop});

  plan.chains = {std::move(forward), std::move(egress), std::move(ingress), std::move(input),
                 std::move(host_in)};
  if (stateful) {
    NftChain postrouting{
        .name = "postrouting", .hook = NftHook::kPostrouting, .nat = true, .priority = 100};
    postrouting.rules.push_back(
        {.family = IpFamily::kV4, .saddr = addressing.job_v4, .masquerade = true});
    postrouting.rules.push_back(
        {.family = IpFamily::kV6, .saddr = addressing.job_v6, .masquerade = true});
    plan.chains.push_back(std::move(postrouting));
  }
  return plan;
}

NftTablePlan PlanServiceTable(std::string_view table_name, std::string_view ifname_prefix,
                              ForwardingPolicy forwarding, bool stateful) {
  NftTablePlan plan;
  plan.name = std::string(table_name);
  std::string pattern = fmt::format("{}*", ifname_prefix);
  // Priority -10: decided before the per-job tables, which only add drops.
  NftChain forward{.name = "forward",
                   .hook = NftHook::kForward,
                   .priority = -10,
                   .policy = forwarding == ForwardingPolicy::kOnlyJobs ? NftVerdict::kDrop
                                                                       : NftVerdict::kAccept};
  // Besides its own use, this ct expression and the nat chain below keep
  // conntrack, NAT and masquerade registered for the service's lifetime.
  // Otherwise every job table that is the first (last) user of them
  // registers (unregisters) the conntrack/NAT hooks: the first user of a
  // hook point anywhere in the kernel switches its static key, i.e. patches
  // every call site with IPIs to all CPUs (perf: 70% of a launcher's CPU),
  // and the masquerade notifiers are registered under the RTNL lock.
  if (stateful) forward.rules.push_back({.ct_state = kCtInvalid, .verdict = NftVerdict::kDrop});
  if (forwarding == ForwardingPolicy::kOnlyJobs) {
    forward.rules.push_back({.iifname = pattern, .verdict = NftVerdict::kAccept});
    forward.rules.push_back({.oifname = pattern, .verdict = NftVerdict::kAccept});
  }
  plan.chains.push_back(std::move(forward));
  if (!stateful) return plan;
  NftChain postrouting{
      .name = "postrouting", .hook = NftHook::kPostrouting, .nat = true, .priority = 100};
  // Never matches (255.255.255.255 is never a source, RFC 1122 3.2.1.3); it
  // holds the masquerade module's netdevice/address notifiers, which the
  // first masquerade rule registers under the RTNL lock (tens of ms).
  postrouting.rules.push_back(
      {.family = IpFamily::kV4, .saddr = MustParse("255.255.255.255"), .masquerade = true});
  plan.chains.push_back(std::move(postrouting));
  return plan;
}

NftTablePlan WithoutLogging(NftTablePlan plan) {
  auto matches_all = [](const NftRule& rule) {
    return !rule.iifname && !rule.oifname && !rule.family && !rule.saddr && !rule.daddr &&
           !rule.daddr_set && !rule.l4proto && rule.dport_min == 0 && rule.dport_max == 0 &&
           !rule.icmpv6_type && rule.ct_state == 0;
  };
  for (NftChain& chain : plan.chains) {
    std::erase_if(chain.rules, [](NftRule& rule) {
      bool logged = rule.log_prefix.has_value();
      rule.log_prefix.reset();
      return logged && rule.verdict == NftVerdict::kNone && !rule.masquerade;
    });
    // Drops that only differed in the reason they logged, ending in a drop
    // of everything (the default-deny chains): that last drop alone.
    bool only_drops = std::all_of(chain.rules.begin(), chain.rules.end(), [](const NftRule& r) {
      return r.verdict == NftVerdict::kDrop && !r.masquerade;
    });
    if (only_drops && chain.rules.size() > 1 && matches_all(chain.rules.back()))
      chain.rules.erase(chain.rules.begin(), chain.rules.end() - 1);
  }
  return plan;
}

std::string NetworkSpecKey(const NetworkSpec& spec) {
  // Lengths before strings: no two specs can print alike.
  std::string key = fmt::format("enabled={};allow={};", spec.enabled ? 1 : 0, spec.allow.size());
  for (const EgressRule& rule : spec.allow) {
    key += fmt::format("{}:{}|{}-{}/{};", rule.cidr.size(), rule.cidr, rule.port_min, rule.port_max,
                       static_cast<int>(rule.protocol));
  }
  key += fmt::format("domains={};", spec.allowed_domains.size());
  for (const std::string& domain : spec.allowed_domains)
    key += fmt::format("{}:{};", domain.size(), domain);
  key += fmt::format("ports={};", spec.domain_ports.size());
  for (uint16_t port : spec.domain_ports) key += fmt::format("{};", port);
  return key;
}

std::string WarmTableName(std::string_view ifname_prefix) {
  return fmt::format("ralph-warm-{}", ifname_prefix);
}

std::string WarmConntrackTableName(std::string_view ifname_prefix) {
  return fmt::format("ralph-warm-ct-{}", ifname_prefix);
}

NftTablePlan PlanWarmTable(std::string_view ifname_prefix, ForwardingPolicy forwarding) {
  NftTablePlan plan =
      PlanServiceTable(WarmTableName(ifname_prefix), ifname_prefix, forwarding, false);
  // No rules, policy accept: it decides nothing, it only keeps the input
  // hook registered for the job tables' input chains.
  plan.chains.push_back({.name = "input", .hook = NftHook::kInput, .priority = 0});
  return plan;
}

NftTablePlan PlanWarmConntrackTable(std::string_view ifname_prefix) {
  // kUntouched: the forwarding policy is the warm table's; this one only
  // adds the stateful part (policy accept).
  return PlanServiceTable(WarmConntrackTableName(ifname_prefix), ifname_prefix,
                          ForwardingPolicy::kUntouched, true);
}

namespace {

std::string_view VerdictName(NftVerdict verdict) {
  switch (verdict) {
    case NftVerdict::kAccept: return "accept";
    case NftVerdict::kDrop: return "drop";
    case NftVerdict::kJump: return "jump";
    case NftVerdict::kReturn: return "return";
    case NftVerdict::kNone: return "";
  }
  return "";
}

std::string_view HookName(NftHook hook) {
  switch (hook) {
    case NftHook::kForward: return "forward";
    case NftHook::kInput: return "input";
    case NftHook::kPostrouting: return "postrouting";
    case NftHook::kNone: return "";
  }
  return "";
}

std::string RenderRule(const NftRule& rule, uint16_t nflog_group) {
  std::vector<std::string> parts;
  if (rule.iifname) parts.push_back(fmt::format("iifname \"{}\"", *rule.iifname));
  if (rule.oifname) parts.push_back(fmt::format("oifname \"{}\"", *rule.oifname));
  if (rule.family && !rule.saddr && !rule.daddr && !rule.daddr_set && !rule.l4proto) {
    parts.push_back(rule.family == IpFamily::kV4 ? "meta nfproto ipv4" : "meta nfproto ipv6");
  }
  std::string_view ip = rule.family == IpFamily::kV6 ? "ip6" : "ip";
  if (rule.saddr) {
    parts.push_back(
        fmt::format("{} saddr {}{}", ip, rule.saddr_negate ? "!= " : "", rule.saddr->ToString()));
  }
  if (rule.daddr) parts.push_back(fmt::format("{} daddr {}", ip, rule.daddr->ToString()));
  if (rule.daddr_set) parts.push_back(fmt::format("{} daddr @{}", ip, *rule.daddr_set));
  if (rule.l4proto) {
    std::string_view name = *rule.l4proto == IPPROTO_TCP   ? "tcp"
                            : *rule.l4proto == IPPROTO_UDP ? "udp"
                                                           : "icmpv6";
    if (rule.icmpv6_type) {
      parts.push_back(fmt::format("icmpv6 type {}", *rule.icmpv6_type));
    } else if (rule.dport_min != 0) {
      parts.push_back(rule.dport_min == rule.dport_max
                          ? fmt::format("{} dport {}", name, rule.dport_min)
                          : fmt::format("{} dport {}-{}", name, rule.dport_min, rule.dport_max));
    } else {
      parts.push_back(fmt::format("meta l4proto {}", name));
    }
    if (rule.family && !rule.saddr && !rule.daddr && !rule.daddr_set) {
      parts.insert(parts.end() - 1,
                   rule.family == IpFamily::kV4 ? "meta nfproto ipv4" : "meta nfproto ipv6");
    }
  }
  if (rule.ct_state != 0) {
    std::vector<std::string> states;
    if (rule.ct_state & kCtInvalid) states.push_back("invalid");
    if (rule.ct_state & kCtEstablished) states.push_back("established");
    if (rule.ct_state & kCtRelated) states.push_back("related");
    if (rule.ct_state & kCtNew) states.push_back("new");
    parts.push_back(fmt::format("ct state {}", fmt::join(states, ",")));
  }
  if (rule.log_prefix) {
    parts.push_back(fmt::format("log prefix \"{}\" group {}", *rule.log_prefix, nflog_group));
  }
  if (rule.masquerade) parts.push_back("masquerade");
  if (rule.verdict == NftVerdict::kJump) {
    parts.push_back(fmt::format("jump {}", rule.jump_chain));
  } else if (rule.verdict != NftVerdict::kNone) {
    parts.push_back(std::string(VerdictName(rule.verdict)));
  }
  return fmt::format("{}", fmt::join(parts, " "));
}

}  // namespace

std::string RenderNft(const NftTablePlan& plan) {
  std::string out = fmt::format("table inet {} {{\n", plan.name);
  for (const NftSet& set : plan.sets) {
    out += fmt::format("\tset {} {{\n\t\ttype {}\n{}\t}}\n", set.name,
                       set.family == IpFamily::kV4 ? "ipv4_addr" : "ipv6_addr",
                       set.timeout ? "\t\tflags timeout\n" : "");
  }
  for (const NftChain& chain : plan.chains) {
    out += fmt::format("\tchain {} {{\n", chain.name);
    if (chain.hook != NftHook::kNone) {
      out +=
          fmt::format("\t\ttype {} hook {} priority {}; policy {};\n", chain.nat ? "nat" : "filter",
                      HookName(chain.hook), chain.priority, VerdictName(chain.policy));
    }
    for (const NftRule& rule : chain.rules) {
      out += fmt::format("\t\t{}\n", RenderRule(rule, plan.nflog_group));
    }
    out += "\t}\n";
  }
  out += "}\n";
  return out;
}

std::optional<LogPrefix> ParseLogPrefix(std::string_view prefix) {
  size_t first = prefix.find(' ');
  if (first == std::string_view::npos || first == 0) return std::nullopt;
  size_t second = prefix.find(' ', first + 1);
  if (second != first + 2) return std::nullopt;
  char verdict = prefix[first + 1];
  if (verdict != 'a' && verdict != 'd') return std::nullopt;
  std::string_view reason = prefix.substr(second + 1);
  if (reason.empty()) return std::nullopt;
  return LogPrefix{.ifname = std::string(prefix.substr(0, first)),
                   .verdict = verdict == 'a' ? NetVerdict::kAllowed : NetVerdict::kDenied,
                   .reason = std::string(reason)};
}

}  // namespace ralph::sandbox
