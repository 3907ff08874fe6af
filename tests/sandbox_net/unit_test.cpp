// Pure parts of the network code: prefixes, the rule plan, the DNS
// allowlist and message decisions, the address pool, log decoding.
#include <gtest/gtest.h>
#include <ldns/ldns.h>
#include <netinet/in.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "nflog_listener.h"
#include "sandbox/net/address_pool.h"
#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/dns_message.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {
namespace {

IpPrefix P(const char* text) {
  auto parsed = IpPrefix::Parse(text);
  EXPECT_TRUE(parsed) << text << ": " << parsed.error().message();
  return parsed ? *parsed : IpPrefix{};
}

// ---- IpPrefix -------------------------------------------------------------

TEST(IpPrefixTest, ParsesAddressesAndPrefixes) {
  EXPECT_EQ(P("203.0.113.7").ToString(), "203.0.113.7");
  EXPECT_EQ(P("203.0.113.7").length, 32);
  EXPECT_EQ(P("203.0.113.0/24").ToString(), "203.0.113.0/24");
  EXPECT_EQ(P("2001:db8::/32").ToString(), "2001:db8::/32");
  EXPECT_EQ(P("fd00:ec2::254").family, IpFamily::kV6);
  EXPECT_EQ(P("0.0.0.0/0").length, 0);
}

TEST(IpPrefixTest, RejectsBadInputWithTheReason) {
  auto bad = IpPrefix::Parse("example.com");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().message(), "\"example.com\": not an IPv4 or IPv6 address");
  auto host_bits = IpPrefix::Parse("203.0.113.7/24");
  ASSERT_FALSE(host_bits);
  EXPECT_EQ(host_bits.error().message(), "\"203.0.113.7/24\": host bits set below the /24 prefix");
  auto too_long = IpPrefix::Parse("10.0.0.0/33");
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().message(), "\"10.0.0.0/33\": prefix length must be 0..32");
  EXPECT_FALSE(IpPrefix::Parse("10.0.0.0/"));
  EXPECT_FALSE(IpPrefix::Parse("10.0.0.0/8x"));
  EXPECT_FALSE(IpPrefix::Parse("2001:db8::/129"));
}

TEST(IpPrefixTest, SubnetSplitsIntoEqualParts) {
  IpPrefix pool = *IpPrefix::Parse("10.254.0.0/16");
  EXPECT_EQ(pool.Subnet(4, 0)->ToString(), "10.254.0.0/20");
  EXPECT_EQ(pool.Subnet(4, 1)->ToString(), "10.254.16.0/20");
  EXPECT_EQ(pool.Subnet(4, 15)->ToString(), "10.254.240.0/20");
  IpPrefix v6 = *IpPrefix::Parse("fd52:616c:7068::/48");
  EXPECT_EQ(v6.Subnet(4, 3)->ToString(), "fd52:616c:7068:3000::/52");
  auto too_many = pool.Subnet(4, 16);
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.error().code(), ErrorCode::kInvalidArgument);
  auto too_long = IpPrefix::Parse("10.0.0.0/30")->Subnet(4, 0);
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().message(), "10.0.0.0/30: no part 0 of 16 equal parts (at most /32)");
}

TEST(IpPrefixTest, Contains) {
  EXPECT_TRUE(P("169.254.0.0/16").Contains(P("169.254.169.254")));
  EXPECT_TRUE(P("fc00::/7").Contains(P("fd00:ec2::254")));
  EXPECT_FALSE(P("10.0.0.0/8").Contains(P("11.0.0.1")));
  EXPECT_FALSE(P("10.0.0.0/8").Contains(P("0.0.0.0/0")));
  EXPECT_FALSE(P("::/0").Contains(P("10.0.0.1")));  // other family
  EXPECT_TRUE(P("0.0.0.0/0").Contains(P("10.0.0.1")));
}

// ---- the rule plan ---------------------------------------------------------

JobAddressing Addressing() {
  return {.host_ifname = "rj3",
          .host_v4 = P("10.254.0.13"),
          .job_v4 = P("10.254.0.14"),
          .host_v6 = P("fd52:616c:7068:3::1"),
          .job_v6 = P("fd52:616c:7068:3::2")};
}

const NftChain& Chain(const NftTablePlan& plan, const std::string& name) {
  for (const NftChain& chain : plan.chains) {
    if (chain.name == name) return chain;
  }
  ADD_FAILURE() << "no chain " << name;
  static NftChain empty;
  return empty;
}

// The index of the first rule of `chain` that a new packet to `destination`
// (protocol/port) would hit, evaluated over the plan's data: a tiny model
// of nft's first-match semantics for the egress chain.
struct Probe {
  IpPrefix destination;
  uint8_t protocol = IPPROTO_TCP;
  uint16_t port = 443;
  bool in_dns_set = false;
};
const NftRule* FirstMatch(const NftChain& chain, const Probe& probe, const IpPrefix& source) {
  for (const NftRule& rule : chain.rules) {
    if (rule.ct_state != 0 && !(rule.ct_state & kCtNew)) continue;  // a new connection
    if (rule.family && *rule.family != probe.destination.family) continue;
    if (rule.saddr) {
      bool inside = rule.saddr->Contains(source);
      if (inside == rule.saddr_negate) continue;
    }
    if (rule.daddr && !rule.daddr->Contains(probe.destination)) continue;
    if (rule.daddr_set && !probe.in_dns_set) continue;
    if (rule.l4proto && *rule.l4proto != probe.protocol) continue;
    if (rule.dport_min != 0 && (probe.port < rule.dport_min || probe.port > rule.dport_max)) {
      continue;
    }
    return &rule;
  }
  return nullptr;
}

std::string Outcome(const NftTablePlan& plan, const Probe& probe) {
  const IpPrefix source =
      probe.destination.family == IpFamily::kV4 ? Addressing().job_v4 : Addressing().job_v6;
  const NftRule* rule = FirstMatch(Chain(plan, "egress"), probe, source);
  if (!rule) return "no rule";
  std::string verdict = rule->verdict == NftVerdict::kAccept ? "accept" : "drop";
  return verdict + (rule->log_prefix ? " [" + *rule->log_prefix + "]" : "");
}

TEST(RulePlanTest, DefaultDenyAndAlwaysBlockedEvenWhenAllowlisted) {
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.0/24", .port_min = 443},
                {.cidr = "0.0.0.0/0", .port_min = 80},  // "the whole internet on :80"
                {.cidr = "10.0.0.0/8"},                 // RFC 1918: must stay blocked
                {.cidr = "169.254.169.254", .protocol = Protocol::kAny},
                {.cidr = "2001:db8:1::/48", .port_min = 8000, .port_max = 8100}};
  spec.allowed_domains = {"api.example.com"};
  auto plan = PlanJobTable(Addressing(), spec, 77);
  ASSERT_TRUE(plan) << plan.error().message();
  EXPECT_EQ(plan->name, "ralph_rj3");

  EXPECT_EQ(Outcome(*plan, {P("203.0.113.10")}), "accept [rj3 a allowlist]");
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.10"), IPPROTO_TCP, 22}), "drop [rj3 d not-allowlisted]");
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.10"), IPPROTO_UDP, 443}), "drop [rj3 d not-allowlisted]");
  EXPECT_EQ(Outcome(*plan, {P("198.51.100.20"), IPPROTO_TCP, 80}), "accept [rj3 a allowlist]");
  EXPECT_EQ(Outcome(*plan, {P("198.51.100.20"), IPPROTO_TCP, 81}), "drop [rj3 d not-allowlisted]");
  EXPECT_EQ(Outcome(*plan, {P("169.254.169.254"), IPPROTO_TCP, 80}), "drop [rj3 d metadata]");
  EXPECT_EQ(Outcome(*plan, {P("100.100.100.200"), IPPROTO_TCP, 80}), "drop [rj3 d metadata]");
  EXPECT_EQ(Outcome(*plan, {P("fd00:ec2::254"), IPPROTO_TCP, 80}), "drop [rj3 d metadata]");
  EXPECT_EQ(Outcome(*plan, {P("10.1.2.3"), IPPROTO_TCP, 80}), "drop [rj3 d rfc1918]");
  EXPECT_EQ(Outcome(*plan, {P("172.20.0.1"), IPPROTO_TCP, 80}), "drop [rj3 d rfc1918]");
  EXPECT_EQ(Outcome(*plan, {P("192.168.1.1"), IPPROTO_TCP, 80}), "drop [rj3 d rfc1918]");
  EXPECT_EQ(Outcome(*plan, {P("100.64.0.1"), IPPROTO_TCP, 80}), "drop [rj3 d cgnat]");
  EXPECT_EQ(Outcome(*plan, {P("169.254.1.1"), IPPROTO_TCP, 80}), "drop [rj3 d link-local]");
  EXPECT_EQ(Outcome(*plan, {P("127.0.0.1"), IPPROTO_TCP, 80}), "drop [rj3 d loopback]");
  EXPECT_EQ(Outcome(*plan, {P("224.0.0.251"), IPPROTO_UDP, 5353}), "drop [rj3 d multicast]");
  EXPECT_EQ(Outcome(*plan, {P("fe80::1"), IPPROTO_TCP, 80}), "drop [rj3 d link-local]");
  EXPECT_EQ(Outcome(*plan, {P("fd12::1"), IPPROTO_TCP, 80}), "drop [rj3 d ula]");
  // Other jobs (our own pool) are ULA/RFC 1918 too: jobs cannot reach each other.
  EXPECT_EQ(Outcome(*plan, {P("fd52:616c:7068:4::2"), IPPROTO_TCP, 80}), "drop [rj3 d ula]");
  EXPECT_EQ(Outcome(*plan, {P("10.254.0.18"), IPPROTO_TCP, 80}), "drop [rj3 d rfc1918]");
  EXPECT_EQ(Outcome(*plan, {P("::ffff:169.254.169.254"), IPPROTO_TCP, 80}),
            "drop [rj3 d v4-mapped]");
  EXPECT_EQ(Outcome(*plan, {P("64:ff9b::a9fe:a9fe"), IPPROTO_TCP, 80}), "drop [rj3 d nat64]");
  EXPECT_EQ(Outcome(*plan, {P("ff02::1"), IPPROTO_UDP, 80}), "drop [rj3 d multicast]");
  EXPECT_EQ(Outcome(*plan, {P("2001:db8:1::5"), IPPROTO_TCP, 8050}), "accept [rj3 a allowlist]");
  EXPECT_EQ(Outcome(*plan, {P("2001:db8:1::5"), IPPROTO_TCP, 8101}),
            "drop [rj3 d not-allowlisted]");
  EXPECT_EQ(Outcome(*plan, {P("2001:db8:2::5"), IPPROTO_TCP, 8050}),
            "drop [rj3 d not-allowlisted]");
  // ICMP to an allowlisted TCP destination is still not allowed.
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.10"), IPPROTO_ICMP, 0}), "drop [rj3 d not-allowlisted]");
  // Addresses learned through DNS open only the domain ports, over TCP.
  EXPECT_EQ(Outcome(*plan, {P("198.51.100.7"), IPPROTO_TCP, 443, true}),
            "accept [rj3 a dns-allowlist]");
  EXPECT_EQ(Outcome(*plan, {P("198.51.100.7"), IPPROTO_TCP, 444, true}),
            "drop [rj3 d not-allowlisted]");
  EXPECT_EQ(Outcome(*plan, {P("2001:db8:9::7"), IPPROTO_TCP, 443, true}),
            "accept [rj3 a dns-allowlist]");
  // Even a DNS answer cannot open a blocked range.
  EXPECT_EQ(Outcome(*plan, {P("169.254.169.254"), IPPROTO_TCP, 443, true}),
            "drop [rj3 d metadata]");
}

// A service that reports no events gets the same verdicts without a log
// statement; a default-deny chain becomes its one final drop.
TEST(RulePlanTest, WithoutLoggingKeepsEveryVerdict) {
  auto verdict_only = [](std::string outcome) { return outcome.substr(0, outcome.find(' ')); };
  const std::vector<Probe> probes = {{P("203.0.113.10")},
                                     {P("203.0.113.10"), IPPROTO_TCP, 22},
                                     {P("198.51.100.20"), IPPROTO_TCP, 80},
                                     {P("169.254.169.254"), IPPROTO_TCP, 80},
                                     {P("10.1.2.3"), IPPROTO_TCP, 80},
                                     {P("fe80::1"), IPPROTO_TCP, 80},
                                     {P("2001:db8:1::5"), IPPROTO_TCP, 8050},
                                     {P("2001:db8:1::5"), IPPROTO_TCP, 8101},
                                     {P("198.51.100.7"), IPPROTO_TCP, 443, true},
                                     {P("169.254.169.254"), IPPROTO_TCP, 443, true}};
  NetworkSpec allowing;
  allowing.allow = {{.cidr = "203.0.113.0/24", .port_min = 443},
                    {.cidr = "0.0.0.0/0", .port_min = 80},
                    {.cidr = "10.0.0.0/8"},
                    {.cidr = "2001:db8:1::/48", .port_min = 8000, .port_max = 8100}};
  allowing.allowed_domains = {"api.example.com"};
  for (const NetworkSpec& spec : {allowing, NetworkSpec{}}) {
    auto logged = PlanJobTable(Addressing(), spec, 77);
    ASSERT_TRUE(logged) << logged.error().message();
    NftTablePlan quiet = WithoutLogging(*logged);
    for (const NftChain& chain : quiet.chains)
      for (const NftRule& rule : chain.rules) EXPECT_FALSE(rule.log_prefix) << chain.name;
    for (const Probe& probe : probes)
      EXPECT_EQ(Outcome(quiet, probe), verdict_only(Outcome(*logged, probe)))
          << probe.destination.AddressString() << " port " << probe.port;
    // Spoofed sources stay dropped.
    const NftRule* spoofed =
        FirstMatch(Chain(quiet, "egress"), {P("203.0.113.10")}, P("10.254.0.99"));
    ASSERT_NE(spoofed, nullptr);
    EXPECT_EQ(spoofed->verdict, NftVerdict::kDrop);
    EXPECT_EQ(Chain(quiet, "host_in").rules.size(), Chain(*logged, "host_in").rules.size());
  }
  NftTablePlan deny_all = WithoutLogging(*PlanJobTable(Addressing(), NetworkSpec{}, 77));
  ASSERT_EQ(Chain(deny_all, "egress").rules.size(), 1u);
  EXPECT_EQ(Chain(deny_all, "egress").rules[0].verdict, NftVerdict::kDrop);
  EXPECT_FALSE(Chain(deny_all, "egress").rules[0].daddr);
}

TEST(RulePlanTest, SpoofedSourceIsDropped) {
  auto plan = PlanJobTable(Addressing(), NetworkSpec{.allow = {{.cidr = "0.0.0.0/0"}}}, 1);
  ASSERT_TRUE(plan);
  const NftRule* rule = FirstMatch(Chain(*plan, "egress"), {P("203.0.113.10")}, P("10.254.0.99"));
  ASSERT_NE(rule, nullptr);
  EXPECT_EQ(rule->verdict, NftVerdict::kDrop);
  EXPECT_EQ(*rule->log_prefix, "rj3 d spoofed-source");
}

TEST(RulePlanTest, HostInputAllowsOnlyDnsOnTheVethAddress) {
  auto plan = PlanJobTable(Addressing(), NetworkSpec{}, 1);
  ASSERT_TRUE(plan);
  const NftChain& input = Chain(*plan, "input");
  ASSERT_EQ(input.hook, NftHook::kInput);
  ASSERT_EQ(input.rules.size(), 1u);
  EXPECT_EQ(*input.rules[0].iifname, "rj3");
  const NftChain& host_in = Chain(*plan, "host_in");
  auto hit = [&](const char* destination, uint8_t protocol, uint16_t port) {
    IpPrefix to = P(destination);
    IpPrefix from = to.family == IpFamily::kV4 ? P("10.254.0.14") : P("fd52:616c:7068:3::2");
    const NftRule* rule = FirstMatch(host_in, {to, protocol, port}, from);
    return rule && rule->verdict == NftVerdict::kAccept;
  };
  EXPECT_TRUE(hit("10.254.0.13", IPPROTO_UDP, 53));
  EXPECT_TRUE(hit("10.254.0.13", IPPROTO_TCP, 53));
  EXPECT_TRUE(hit("fd52:616c:7068:3::1", IPPROTO_UDP, 53));
  EXPECT_FALSE(hit("10.254.0.13", IPPROTO_TCP, 22));   // sshd on the gateway address
  EXPECT_FALSE(hit("198.51.100.1", IPPROTO_UDP, 53));  // the host's other address
  EXPECT_FALSE(hit("10.254.0.17", IPPROTO_UDP, 53));   // another job's resolver
  EXPECT_FALSE(hit("127.0.0.1", IPPROTO_TCP, 8080));   // loopback service
  // A query with a spoofed source would reflect the (job-chosen) question
  // to another host: not accepted.
  const NftRule* spoofed =
      FirstMatch(host_in, {P("10.254.0.13"), IPPROTO_UDP, 53}, P("203.0.113.66"));
  ASSERT_NE(spoofed, nullptr);
  EXPECT_EQ(spoofed->verdict, NftVerdict::kDrop);
  EXPECT_EQ(spoofed->log_prefix.value_or(""), "rj3 d host");
  EXPECT_EQ(host_in.rules.back().log_prefix.value_or(""), "rj3 d host");
  EXPECT_EQ(host_in.rules.back().verdict, NftVerdict::kDrop);
}

TEST(RulePlanTest, OnlyTheJobsTrafficIsDispatchedAndMasqueraded) {
  auto plan = PlanJobTable(Addressing(), NetworkSpec{.allow = {{.cidr = "203.0.113.0/24"}}}, 1);
  ASSERT_TRUE(plan);
  const NftChain& forward = Chain(*plan, "forward");
  EXPECT_EQ(forward.policy, NftVerdict::kAccept);  // other traffic is not ours to judge
  ASSERT_EQ(forward.rules.size(), 2u);
  EXPECT_EQ(*forward.rules[0].iifname, "rj3");
  EXPECT_EQ(forward.rules[0].jump_chain, "egress");
  EXPECT_EQ(*forward.rules[1].oifname, "rj3");
  EXPECT_EQ(forward.rules[1].jump_chain, "ingress");
  const NftChain& ingress = Chain(*plan, "ingress");
  EXPECT_EQ(ingress.rules.back().verdict, NftVerdict::kDrop);
  const NftChain& nat = Chain(*plan, "postrouting");
  EXPECT_TRUE(nat.nat);
  ASSERT_EQ(nat.rules.size(), 2u);
  EXPECT_EQ(*nat.rules[0].saddr, P("10.254.0.14"));
  EXPECT_EQ(*nat.rules[1].saddr, P("fd52:616c:7068:3::2"));
  // No domains: no rule reads the DNS sets.
  for (const NftRule& rule : Chain(*plan, "egress").rules) EXPECT_FALSE(rule.daddr_set);
  // Replies to what the allowlist let out come back in.
  EXPECT_EQ(Chain(*plan, "egress").rules[0].ct_state, kCtEstablished | kCtRelated);
  EXPECT_EQ(Chain(*plan, "ingress").rules[0].ct_state, kCtEstablished | kCtRelated);
}

TEST(RulePlanTest, JobThatMayReachNothingGetsNoConntrackOrNat) {
  EXPECT_FALSE(JobHasEgress(NetworkSpec{}));
  EXPECT_TRUE(JobHasEgress(NetworkSpec{.allow = {{.cidr = "203.0.113.7"}}}));
  EXPECT_TRUE(JobHasEgress(NetworkSpec{.allowed_domains = {"example.com"}}));
  EXPECT_FALSE(JobHasEgress(NetworkSpec{.enabled = false, .allow = {{.cidr = "203.0.113.7"}}}));

  auto plan = PlanJobTable(Addressing(), NetworkSpec{}, 1);
  ASSERT_TRUE(plan);
  for (const NftChain& chain : plan->chains) {
    EXPECT_FALSE(chain.nat) << chain.name;
    for (const NftRule& rule : chain.rules) {
      EXPECT_EQ(rule.ct_state, 0u) << chain.name;
      EXPECT_FALSE(rule.masquerade) << chain.name;
    }
  }
  // The same verdicts and events as with conntrack: everything is dropped,
  // blocked ranges with their reason.
  EXPECT_EQ(Outcome(*plan, {P("169.254.169.254"), IPPROTO_TCP, 80}), "drop [rj3 d metadata]");
  EXPECT_EQ(Outcome(*plan, {P("10.1.2.3")}), "drop [rj3 d rfc1918]");
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.10")}), "drop [rj3 d not-allowlisted]");
  EXPECT_EQ(Outcome(*plan, {P("2001:db8::1"), IPPROTO_UDP, 53}), "drop [rj3 d not-allowlisted]");
  const NftRule* spoofed =
      FirstMatch(Chain(*plan, "egress"), {P("203.0.113.10")}, P("10.254.0.99"));
  ASSERT_NE(spoofed, nullptr);
  EXPECT_EQ(spoofed->log_prefix.value_or(""), "rj3 d spoofed-source");
  const NftChain& ingress = Chain(*plan, "ingress");
  ASSERT_EQ(ingress.rules.size(), 1u);
  EXPECT_EQ(ingress.rules[0].verdict, NftVerdict::kDrop);
  // Its resolver stays reachable, nothing else on the host.
  const NftChain& host_in = Chain(*plan, "host_in");
  const NftRule* dns = FirstMatch(host_in, {P("10.254.0.13"), IPPROTO_UDP, 53}, P("10.254.0.14"));
  ASSERT_NE(dns, nullptr);
  EXPECT_EQ(dns->verdict, NftVerdict::kAccept);
  const NftRule* ssh = FirstMatch(host_in, {P("10.254.0.13"), IPPROTO_TCP, 22}, P("10.254.0.14"));
  ASSERT_NE(ssh, nullptr);
  EXPECT_EQ(ssh->log_prefix.value_or(""), "rj3 d host");
}

TEST(RulePlanTest, BadRulesAreRejectedWithTheirIndex) {
  auto bad_cidr = PlanJobTable(
      Addressing(), NetworkSpec{.allow = {{.cidr = "1.2.3.4"}, {.cidr = "nonsense"}}}, 1);
  ASSERT_FALSE(bad_cidr);
  EXPECT_EQ(bad_cidr.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad_cidr.error().message(), "allow[1]: \"nonsense\": not an IPv4 or IPv6 address");

  auto reversed = PlanJobTable(
      Addressing(), NetworkSpec{.allow = {{.cidr = "1.2.3.4", .port_min = 90, .port_max = 80}}}, 1);
  ASSERT_FALSE(reversed);
  EXPECT_EQ(reversed.error().message(), "allow[0] (1.2.3.4): port range 90-80 is reversed");

  auto zero_min = PlanJobTable(
      Addressing(), NetworkSpec{.allow = {{.cidr = "1.2.3.4", .port_min = 0, .port_max = 80}}}, 1);
  ASSERT_FALSE(zero_min);
  EXPECT_EQ(zero_min.error().message(),
            "allow[0] (1.2.3.4): port range 0-80: port_min must be 1..65535 when port_max is set");

  auto zero_port = PlanJobTable(Addressing(), NetworkSpec{.domain_ports = {443, 0}}, 1);
  ASSERT_FALSE(zero_port);
  EXPECT_EQ(zero_port.error().message(), "domain_ports[1]: port 0 is not a port");

  JobAddressing long_name = Addressing();
  long_name.host_ifname = "a-name-longer-than-15";
  auto too_long = PlanJobTable(long_name, NetworkSpec{}, 1);
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().message(),
            "host interface name \"a-name-longer-than-15\" must be 1..15 bytes");
}

TEST(RulePlanTest, AnyProtocolWithPortsMeansTcpAndUdp) {
  auto plan = PlanJobTable(
      Addressing(),
      NetworkSpec{.allow = {{.cidr = "203.0.113.5", .port_min = 53, .protocol = Protocol::kAny}}},
      1);
  ASSERT_TRUE(plan);
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.5"), IPPROTO_UDP, 53}), "accept [rj3 a allowlist]");
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.5"), IPPROTO_TCP, 53}), "accept [rj3 a allowlist]");
  EXPECT_EQ(Outcome(*plan, {P("203.0.113.5"), IPPROTO_ICMP, 0}), "drop [rj3 d not-allowlisted]");
}

TEST(RulePlanTest, BlockListParsesAndCoversTheRequiredRanges) {
  const auto& blocked = AlwaysBlockedRanges();
  ASSERT_GE(blocked.size(), 20u);
  for (const BlockedRange& range : blocked) {
    // A typo in the table would parse to the default (0.0.0.0/32).
    EXPECT_FALSE(range.prefix == IpPrefix{}) << range.reason;
  }
  auto covered = [&](const char* address) {
    return std::any_of(blocked.begin(), blocked.end(),
                       [&](const BlockedRange& r) { return r.prefix.Contains(P(address)); });
  };
  for (const char* address :
       {"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "10.0.0.1",
        "172.31.255.255", "192.168.0.1", "100.127.0.1", "169.254.0.1", "fe80::1", "fc00::1",
        "224.0.0.1", "ff02::fb", "127.0.0.1", "::1", "255.255.255.255"}) {
    EXPECT_TRUE(covered(address)) << address;
  }
  for (const char* address : {"203.0.113.10", "198.51.100.7", "2001:db8::1", "8.8.8.8"}) {
    EXPECT_FALSE(covered(address)) << address;
  }
}

TEST(RulePlanTest, RendersNftSyntax) {
  auto plan = PlanJobTable(Addressing(),
                           NetworkSpec{.allow = {{.cidr = "203.0.113.0/24", .port_min = 443}},
                                       .allowed_domains = {"example.com"}},
                           77);
  ASSERT_TRUE(plan);
  std::string text = RenderNft(*plan);
  EXPECT_NE(text.find("table inet ralph_rj3 {"), std::string::npos) << text;
  EXPECT_NE(text.find("type filter hook forward priority 0; policy accept;"), std::string::npos);
  EXPECT_NE(text.find("ip daddr 203.0.113.0/24 tcp dport 443 log prefix \"rj3 a allowlist\" "
                      "group 77 accept"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("ip daddr 169.254.169.254 log prefix \"rj3 d metadata\" group 77 drop"),
            std::string::npos);
  EXPECT_NE(text.find("ip6 daddr @dns6 tcp dport 443"), std::string::npos);
  EXPECT_NE(text.find("ip saddr 10.254.0.14 masquerade"), std::string::npos);
}

TEST(RulePlanTest, ServiceTableForwardsOnlyJobVeths) {
  NftTablePlan plan = PlanServiceTable("ralph_service", "rj", ForwardingPolicy::kOnlyJobs);
  ASSERT_EQ(plan.chains.size(), 2u);
  const NftChain& forward = Chain(plan, "forward");
  EXPECT_EQ(forward.policy, NftVerdict::kDrop);
  ASSERT_EQ(forward.rules.size(), 3u);
  EXPECT_EQ(forward.rules[0].ct_state, kCtInvalid);
  EXPECT_EQ(*forward.rules[1].iifname, "rj*");
  EXPECT_EQ(*forward.rules[2].oifname, "rj*");
  EXPECT_TRUE(Chain(plan, "postrouting").nat);

  // Stateless (no job may send past the host yet): the same forwarding
  // policy, no conntrack match, no nat chain.
  NftTablePlan stateless =
      PlanServiceTable("ralph_service", "rj", ForwardingPolicy::kOnlyJobs, /*stateful=*/false);
  ASSERT_EQ(stateless.chains.size(), 1u);
  const NftChain& plain = Chain(stateless, "forward");
  EXPECT_EQ(plain.policy, NftVerdict::kDrop);
  ASSERT_EQ(plain.rules.size(), 2u);
  EXPECT_EQ(*plain.rules[0].iifname, "rj*");
  EXPECT_EQ(*plain.rules[1].oifname, "rj*");

  NftTablePlan untouched = PlanServiceTable("ralph_service", "rj", ForwardingPolicy::kUntouched);
  EXPECT_EQ(Chain(untouched, "forward").policy, NftVerdict::kAccept);
  EXPECT_EQ(Chain(untouched, "forward").rules.size(), 1u);
}

TEST(RulePlanTest, WarmTablesHoldTheHooksJobTablesUse) {
  NftTablePlan warm = PlanWarmTable("rj", ForwardingPolicy::kOnlyJobs);
  EXPECT_EQ(warm.name, "ralph-warm-rj");
  ASSERT_EQ(warm.chains.size(), 2u);
  // The service table's stateless forwarding policy...
  const NftChain& forward = Chain(warm, "forward");
  EXPECT_EQ(forward.hook, NftHook::kForward);
  EXPECT_EQ(forward.policy, NftVerdict::kDrop);
  ASSERT_EQ(forward.rules.size(), 2u);
  EXPECT_EQ(*forward.rules[0].iifname, "rj*");
  EXPECT_EQ(*forward.rules[1].oifname, "rj*");
  // ...and an input chain that decides nothing.
  const NftChain& input = Chain(warm, "input");
  EXPECT_EQ(input.hook, NftHook::kInput);
  EXPECT_EQ(input.policy, NftVerdict::kAccept);
  EXPECT_TRUE(input.rules.empty());
  EXPECT_EQ(Chain(PlanWarmTable("rj", ForwardingPolicy::kUntouched), "forward").policy,
            NftVerdict::kAccept);

  // Every hook point a job table registers is held by the warm tables: the
  // stateless job's forward/input, and the stateful one's nat postrouting.
  auto job = PlanJobTable(Addressing(), NetworkSpec{.allow = {{.cidr = "203.0.113.0/24"}}}, 77);
  ASSERT_TRUE(job);
  NftTablePlan conntrack = PlanWarmConntrackTable("rj");
  EXPECT_EQ(conntrack.name, "ralph-warm-ct-rj");
  for (const NftChain& chain : job->chains) {
    if (chain.hook == NftHook::kNone) continue;
    const NftTablePlan& holder = chain.nat ? conntrack : warm;
    EXPECT_TRUE(std::any_of(holder.chains.begin(), holder.chains.end(), [&](const NftChain& c) {
      return c.hook == chain.hook && c.nat == chain.nat;
    })) << chain.name;
  }
  // The conntrack table adds only the stateful part: policy accept, invalid
  // state dropped, an idle nat chain whose masquerade never matches.
  const NftChain& ct_forward = Chain(conntrack, "forward");
  EXPECT_EQ(ct_forward.policy, NftVerdict::kAccept);
  ASSERT_EQ(ct_forward.rules.size(), 1u);
  EXPECT_EQ(ct_forward.rules[0].ct_state, kCtInvalid);
  EXPECT_EQ(ct_forward.rules[0].verdict, NftVerdict::kDrop);
  const NftChain& nat = Chain(conntrack, "postrouting");
  EXPECT_TRUE(nat.nat);
  ASSERT_EQ(nat.rules.size(), 1u);
  EXPECT_EQ(nat.rules[0].saddr->AddressString(), "255.255.255.255");

  // No prefix's stale-table sweep can ever take them for an instance's.
  for (const char* prefix : {"rj", "warm", "warm_", "a", "ralph_", "w1"}) {
    for (const std::string& name : {WarmTableName(prefix), WarmConntrackTableName(prefix)}) {
      for (const char* sweeper : {"rj", "warm", "warm_", "a", "ralph_", "w1", "ralph"}) {
        EXPECT_EQ(TableInstance(name, sweeper, 16), std::nullopt) << name << " " << sweeper;
      }
      EXPECT_TRUE(UnownedTablesByInstance({{.name = name}}, prefix, 16).empty()) << name;
    }
  }
}

TEST(RulePlanTest, NetworkSpecKeyTellsApartEverythingThatShapesTheTable) {
  NetworkSpec base{.allow = {{.cidr = "203.0.113.0/24", .port_min = 443}},
                   .allowed_domains = {"*.example.com"}};
  // Equal specs built apart get equal keys, and equal keys plan equal
  // tables (what a prepared table's reuse rests on).
  NetworkSpec rebuilt;
  rebuilt.allowed_domains.push_back(std::string("*.example") + ".com");
  rebuilt.allow.push_back({.cidr = fmt::format("203.0.113.{}/24", 0), .port_min = 443});
  EXPECT_EQ(NetworkSpecKey(rebuilt), NetworkSpecKey(base));
  EXPECT_EQ(RenderNft(*PlanJobTable(Addressing(), rebuilt, 77)),
            RenderNft(*PlanJobTable(Addressing(), base, 77)));
  std::vector<NetworkSpec> variants(8, base);
  variants[0].enabled = false;
  variants[1].allow[0].cidr = "203.0.113.0/25";
  variants[2].allow[0].port_max = 444;
  variants[3].allow[0].protocol = Protocol::kUdp;
  variants[4].allowed_domains = {"example.com"};
  variants[5].domain_ports = {443, 80};
  variants[6].allow.push_back({.cidr = "2001:db8::/32"});
  // Strings that would run together without their lengths.
  variants[7].allowed_domains = {"*.example.com", ""};
  std::set<std::string> keys = {NetworkSpecKey(base)};
  for (const NetworkSpec& variant : variants) keys.insert(NetworkSpecKey(variant));
  EXPECT_EQ(keys.size(), variants.size() + 1);
  NetworkSpec split{.allowed_domains = {"a;1:b"}}, joined{.allowed_domains = {"a", "b"}};
  EXPECT_NE(NetworkSpecKey(split), NetworkSpecKey(joined));
}

TEST(LogPrefixTest, ParsesOnlyPlannerPrefixes) {
  auto parsed = ParseLogPrefix("rj12 d metadata");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->ifname, "rj12");
  EXPECT_EQ(parsed->verdict, NetVerdict::kDenied);
  EXPECT_EQ(parsed->reason, "metadata");
  EXPECT_EQ(ParseLogPrefix("rj1 a allowlist")->verdict, NetVerdict::kAllowed);
  EXPECT_FALSE(ParseLogPrefix("rj1 x allowlist"));
  EXPECT_FALSE(ParseLogPrefix("rj1 a "));
  EXPECT_FALSE(ParseLogPrefix("something else"));
  EXPECT_FALSE(ParseLogPrefix(""));
}

TEST(LoggedPacketTest, DecodesIpv4AndIpv6Headers) {
  // IPv4 TCP SYN 10.254.0.2 -> 169.254.169.254:80.
  std::vector<uint8_t> v4 = {0x45, 0,   0,   40,  0,    0,    0x40, 0,  64, 6, 0, 0, 10, 254, 0, 2,
                             169,  254, 169, 254, 0x9c, 0x40, 0,    80, 0,  0, 0, 0, 0,  0,   0, 0};
  auto packet = DecodeLoggedPacket(v4.data(), v4.size());
  ASSERT_TRUE(packet);
  EXPECT_EQ(packet->destination, "169.254.169.254");
  EXPECT_EQ(packet->port, 80);
  EXPECT_EQ(packet->protocol, Protocol::kTcp);

  std::vector<uint8_t> v6(48, 0);
  v6[0] = 0x60;
  v6[6] = IPPROTO_UDP;
  IpPrefix destination = P("2001:db8::20");
  std::copy(destination.bytes.begin(), destination.bytes.end(), v6.begin() + 24);
  v6[42] = 0x01;
  v6[43] = 0xbb;
  packet = DecodeLoggedPacket(v6.data(), v6.size());
  ASSERT_TRUE(packet);
  EXPECT_EQ(packet->destination, "2001:db8::20");
  EXPECT_EQ(packet->port, 443);
  EXPECT_EQ(packet->protocol, Protocol::kUdp);

  std::vector<uint8_t> icmp = v4;
  icmp[9] = IPPROTO_ICMP;
  packet = DecodeLoggedPacket(icmp.data(), icmp.size());
  ASSERT_TRUE(packet);
  EXPECT_EQ(packet->port, 0);
  EXPECT_EQ(packet->protocol, Protocol::kAny);

  EXPECT_FALSE(DecodeLoggedPacket(v4.data(), 10));  // truncated
  uint8_t garbage[40] = {0x25};
  EXPECT_FALSE(DecodeLoggedPacket(garbage, sizeof(garbage)));
}

// ---- DNS allowlist ---------------------------------------------------------

TEST(DnsAllowlistTest, ExactAndSuffixMatching) {
  auto list = DnsAllowlist::Create({"api.example.com", "*.pkg.dev", "Trailing.Dot.org."});
  ASSERT_TRUE(list) << list.error().message();
  EXPECT_TRUE(list->Allows("api.example.com"));
  EXPECT_TRUE(list->Allows("API.Example.COM."));
  EXPECT_FALSE(list->Allows("example.com"));
  EXPECT_FALSE(list->Allows("x.api.example.com"));  // exact means exact
  EXPECT_FALSE(list->Allows("api.example.com.evil.net"));
  EXPECT_FALSE(list->Allows("evilapi.example.com"));
  EXPECT_TRUE(list->Allows("a.pkg.dev"));
  EXPECT_TRUE(list->Allows("a.b.pkg.dev"));
  EXPECT_FALSE(list->Allows("pkg.dev"));  // the wildcard needs a label in front
  EXPECT_FALSE(list->Allows("evilpkg.dev"));
  EXPECT_TRUE(list->Allows("trailing.dot.org"));
  EXPECT_FALSE(list->Allows(""));
  EXPECT_FALSE(list->Allows("."));
  EXPECT_FALSE(list->Allows("a..pkg.dev"));
  EXPECT_FALSE(list->Allows(std::string(64, 'a') + ".pkg.dev"));  // label over 63 bytes
  EXPECT_FALSE(list->Allows("a\\000b.pkg.dev"));                  // escaped bytes
}

TEST(DnsAllowlistTest, RejectsBadPatternsNamingThem) {
  struct Case {
    std::string pattern;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"", "allowed_domains[0] \"\": empty name"},
           {"*", "allowed_domains[0] \"*\": label \"*\" has character '*'"},
           {"*.com",
            "allowed_domains[0] \"*.com\": a wildcard needs at least two labels after "
            "\"*.\""},
           {"a.*.com", "allowed_domains[0] \"a.*.com\": label \"*\" has character '*'"},
           {"exa mple.com",
            "allowed_domains[0] \"exa mple.com\": label \"exa mple\" has "
            "character ' '"},
           {"a..b", "allowed_domains[0] \"a..b\": empty label"},
           {std::string(64, 'x') + ".com", "allowed_domains[0] \"" + std::string(64, 'x') +
                                               ".com\": label \"" + std::string(64, 'x') +
                                               "\" longer than 63 bytes"},
       }) {
    auto list = DnsAllowlist::Create({c.pattern});
    ASSERT_FALSE(list) << c.pattern;
    EXPECT_EQ(list.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(list.error().message(), c.message);
  }
  auto second = DnsAllowlist::Create({"ok.com", "bad name"});
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().message().rfind("allowed_domains[1]", 0), 0u);
}

// ---- DNS messages ----------------------------------------------------------

// edns_udp_size > 0: with an EDNS OPT record in the additional section.
std::vector<uint8_t> Query(const char* name, ldns_rr_type type, uint16_t id = 0x1234,
                           uint16_t edns_udp_size = 0) {
  ldns_pkt* pkt = nullptr;
  EXPECT_EQ(ldns_pkt_query_new_frm_str(&pkt, name, type, LDNS_RR_CLASS_IN, LDNS_RD),
            LDNS_STATUS_OK);
  ldns_pkt_set_id(pkt, id);
  if (edns_udp_size > 0) ldns_pkt_set_edns_udp_size(pkt, edns_udp_size);
  uint8_t* wire = nullptr;
  size_t size = 0;
  EXPECT_EQ(ldns_pkt2wire(&wire, pkt, &size), LDNS_STATUS_OK);
  std::vector<uint8_t> bytes(wire, wire + size);
  free(wire);
  ldns_pkt_free(pkt);
  return bytes;
}

std::vector<uint8_t> Answer(const char* name, uint16_t id, const std::vector<std::string>& rrs) {
  ldns_pkt* pkt = nullptr;
  EXPECT_EQ(ldns_pkt_query_new_frm_str(&pkt, name, LDNS_RR_TYPE_A, LDNS_RR_CLASS_IN, LDNS_RD),
            LDNS_STATUS_OK);
  ldns_pkt_set_id(pkt, id);
  ldns_pkt_set_qr(pkt, true);
  for (const std::string& text : rrs) {
    ldns_rr* rr = nullptr;
    EXPECT_EQ(ldns_rr_new_frm_str(&rr, text.c_str(), 0, nullptr, nullptr), LDNS_STATUS_OK);
    ldns_pkt_push_rr(pkt, LDNS_SECTION_ANSWER, rr);
  }
  uint8_t* wire = nullptr;
  size_t size = 0;
  EXPECT_EQ(ldns_pkt2wire(&wire, pkt, &size), LDNS_STATUS_OK);
  std::vector<uint8_t> bytes(wire, wire + size);
  free(wire);
  ldns_pkt_free(pkt);
  return bytes;
}

TEST(DnsMessageTest, ForwardsOnlyAllowlistedNames) {
  auto list = DnsAllowlist::Create({"*.allowed.test"});
  ASSERT_TRUE(list);
  DnsQueryDecision ok = DecideDnsQuery(Query("api.allowed.test.", LDNS_RR_TYPE_A), *list);
  EXPECT_EQ(ok.action, DnsAction::kForward);
  EXPECT_EQ(ok.name, "api.allowed.test");
  EXPECT_EQ(ok.id, 0x1234);
  EXPECT_EQ(ok.type, LDNS_RR_TYPE_A);

  DnsQueryDecision denied = DecideDnsQuery(Query("evil.test.", LDNS_RR_TYPE_A), *list);
  EXPECT_EQ(denied.action, DnsAction::kRefuse);
  EXPECT_EQ(denied.name, "evil.test");
  EXPECT_EQ(denied.reason, "dns: name not allowed");

  // Tunnelling: data encoded into labels of a name we do not allow.
  std::string tunnel = std::string(63, 'a') + "." + std::string(63, 'b') + ".exfil.evil.test.";
  EXPECT_EQ(DecideDnsQuery(Query(tunnel.c_str(), LDNS_RR_TYPE_TXT), *list).action,
            DnsAction::kRefuse);

  std::vector<uint8_t> garbage = {1, 2, 3};
  EXPECT_EQ(DecideDnsQuery(garbage, *list).action, DnsAction::kFormErr);
  std::vector<uint8_t> response = Answer("api.allowed.test.", 7, {});
  EXPECT_EQ(DecideDnsQuery(response, *list).action, DnsAction::kFormErr);  // QR set
}

TEST(DnsMessageTest, RefusalEchoesTheQuestion) {
  std::vector<uint8_t> query = Query("evil.test.", LDNS_RR_TYPE_A, 0xbeef);
  std::vector<uint8_t> refused = MakeDnsError(query, LDNS_RCODE_REFUSED);
  ldns_pkt* pkt = nullptr;
  ASSERT_EQ(ldns_wire2pkt(&pkt, refused.data(), refused.size()), LDNS_STATUS_OK);
  EXPECT_EQ(ldns_pkt_id(pkt), 0xbeef);
  EXPECT_TRUE(ldns_pkt_qr(pkt));
  EXPECT_EQ(ldns_pkt_get_rcode(pkt), LDNS_RCODE_REFUSED);
  EXPECT_EQ(ldns_pkt_ancount(pkt), 0);
  EXPECT_EQ(ldns_pkt_qdcount(pkt), 1);
  ldns_pkt_free(pkt);

  std::vector<uint8_t> bare = MakeDnsError({0xab, 0xcd, 0xff}, LDNS_RCODE_FORMERR);
  ASSERT_EQ(bare.size(), 12u);
  EXPECT_EQ(bare[0], 0xab);
  EXPECT_EQ(bare[1], 0xcd);
  EXPECT_EQ(bare[3] & 0x0f, LDNS_RCODE_FORMERR);
}

TEST(DnsMessageTest, ExtractsAnsweredAddressesWithTtl) {
  std::vector<uint8_t> answer = Answer(
      "api.allowed.test.", 99,
      {"api.allowed.test. 30 IN CNAME edge.allowed.test.", "edge.allowed.test. 2 IN A 203.0.113.10",
       "edge.allowed.test. 5 IN AAAA 2001:db8::10", "api.allowed.test. 60 IN TXT \"hello\""});
  auto addresses = ExtractDnsAddresses(answer, 99, "api.allowed.test");
  ASSERT_TRUE(addresses) << addresses.error().message();
  ASSERT_EQ(addresses->size(), 2u);
  EXPECT_EQ((*addresses)[0].address.AddressString(), "203.0.113.10");
  EXPECT_EQ((*addresses)[0].ttl, 2u);
  EXPECT_EQ((*addresses)[1].address.AddressString(), "2001:db8::10");
  EXPECT_EQ((*addresses)[1].ttl, 5u);

  auto wrong_id = ExtractDnsAddresses(answer, 98, "api.allowed.test");
  ASSERT_FALSE(wrong_id);
  EXPECT_EQ(wrong_id.error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(wrong_id.error().message(), "upstream answer id 99 != query id 98");
  auto wrong_name = ExtractDnsAddresses(answer, 99, "other.allowed.test");
  ASSERT_FALSE(wrong_name);
  EXPECT_EQ(wrong_name.error().message(),
            "upstream answered \"api.allowed.test\", asked \"other.allowed.test\"");
  EXPECT_FALSE(ExtractDnsAddresses(Query("api.allowed.test.", LDNS_RR_TYPE_A, 99), 99,
                                   "api.allowed.test"));  // a query, not an answer
}

TEST(DnsMessageTest, ADotInsideALabelIsNotALabelBoundary) {
  // One label "api.allowed" under "test": printed naively it would read
  // "api.allowed.test", which the allowlist names; it is another name.
  auto list = DnsAllowlist::Create({"api.allowed.test", "*.allowed.test"});
  ASSERT_TRUE(list);
  std::vector<uint8_t> query = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 11};
  for (char c : std::string("api.allowed")) query.push_back(static_cast<uint8_t>(c));
  query.push_back(4);
  for (char c : std::string("test")) query.push_back(static_cast<uint8_t>(c));
  query.insert(query.end(), {0, 0, 1, 0, 1});  // root, type A, class IN
  DnsQueryDecision decision = DecideDnsQuery(query, *list);
  EXPECT_EQ(decision.action, DnsAction::kRefuse);
  EXPECT_EQ(decision.reason, "dns: name not allowed");
  EXPECT_NE(decision.name, "api.allowed.test");
}

TEST(DnsMessageTest, OnlyTheQuestionAndAWellFormedAdditionalSectionPass) {
  auto list = DnsAllowlist::Create({"api.allowed.test"});
  ASSERT_TRUE(list);
  // With EDNS (an OPT record in the additional section): forwarded.
  std::vector<uint8_t> edns = Query("api.allowed.test.", LDNS_RR_TYPE_AAAA, 0x1234, 1232);
  ASSERT_EQ(edns[11], 1);  // arcount
  DnsQueryDecision decision = DecideDnsQuery(edns, *list);
  EXPECT_EQ(decision.action, DnsAction::kForward);
  EXPECT_EQ(decision.type, LDNS_RR_TYPE_AAAA);

  // Anything riding along is malformed: trailing bytes, a record the
  // counts do not announce, an answer record, a truncated OPT.
  std::vector<uint8_t> plain = Query("api.allowed.test.", LDNS_RR_TYPE_A);
  std::vector<uint8_t> trailing = plain;
  trailing.insert(trailing.end(), {'e', 'x', 'f', 'i', 'l'});
  std::vector<uint8_t> with_answer = plain;
  with_answer[7] = 1;  // ancount, no record
  std::vector<uint8_t> truncated(edns.begin(), edns.end() - 3);
  std::vector<uint8_t> loop = {0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1};
  for (const auto& bad : {trailing, with_answer, truncated, loop}) {
    DnsQueryDecision refused = DecideDnsQuery(bad, *list);
    EXPECT_EQ(refused.action, DnsAction::kFormErr);
    EXPECT_EQ(refused.reason, "dns: malformed query");
  }
}

TEST(DnsMessageTest, ExtractTakesOnlyTheQuestionsNameAndItsCnameChain) {
  std::vector<uint8_t> answer =
      Answer("api.allowed.test.", 5,
             {"api.allowed.test. 30 IN A 203.0.113.7", "elsewhere.test. 30 IN A 198.51.100.66",
              "api.allowed.test. 30 IN CNAME edge.allowed.test.",
              "unrelated.test. 30 IN AAAA 2001:db8::66"});
  auto addresses = ExtractDnsAddresses(answer, 5, "api.allowed.test");
  ASSERT_TRUE(addresses) << addresses.error().message();
  ASSERT_EQ(addresses->size(), 1u);
  EXPECT_EQ((*addresses)[0].address.AddressString(), "203.0.113.7");
  EXPECT_EQ((*addresses)[0].ttl, 30u);

  std::vector<uint8_t> cut(answer.begin(), answer.end() - 2);
  auto truncated = ExtractDnsAddresses(cut, 5, "api.allowed.test");
  ASSERT_FALSE(truncated);
  EXPECT_EQ(truncated.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(truncated.error().message().find("upstream answer does not parse"), std::string::npos);
}

// ---- address pool ----------------------------------------------------------

TEST(StaleTableTest, TableInstanceParsesOnlyOurNames) {
  EXPECT_EQ(TableInstance("ralph_rja0", "rj", 16), 0u);
  EXPECT_EQ(TableInstance("ralph_rjp1023", "rj", 16), 15u);
  EXPECT_EQ(TableInstance("ralph_service_rjc", "rj", 16), 2u);
  EXPECT_EQ(TableInstance(ServiceTableName("rjd"), "rj", 16), 3u);
  EXPECT_EQ(TableInstance(JobTableName("rjb7"), "rj", 16), 1u);
  // Not ours: other prefixes, letters beyond the instances, missing or
  // non-digit slots, trailing bytes, other tables.
  for (const char* name : {"ralph_xya0", "ralph_rjq0", "ralph_rja", "ralph_rjaa0", "ralph_rja0x",
                           "ralph_service_rj", "ralph_service_rjab", "ralph_service_rjq",
                           "ralph_probe_rja", "filter", "nat", "ralph_", "rja0"}) {
    EXPECT_EQ(TableInstance(name, "rj", 16), std::nullopt) << name;
  }
  // A longer prefix that starts like ours is another service's.
  EXPECT_EQ(TableInstance("ralph_rjxa0", "rj", 16), std::nullopt);
  EXPECT_EQ(TableInstance("ralph_rjxa0", "rjx", 16), 0u);
  EXPECT_EQ(TableInstance("ralph_rjc0", "rj", 2), std::nullopt);
}

TEST(StaleTableTest, OnlyUnownedTablesOfOurPrefixAreCandidates) {
  std::vector<NftTableInfo> tables = {
      {.name = "ralph_rja0"},
      {.name = "ralph_rja1", .owned = true, .owner_portid = 42},
      {.name = "ralph_service_rja"},
      {.name = "ralph_rjc3"},
      {.name = "ralph_service_rjc", .owned = true, .owner_portid = 7},
      {.name = "filter"},
      {.name = "ralph_xya0"},
  };
  auto candidates = UnownedTablesByInstance(tables, "rj", 16);
  ASSERT_EQ(candidates.size(), 2u);
  EXPECT_EQ(candidates[0], (std::vector<std::string>{"ralph_rja0", "ralph_service_rja"}));
  EXPECT_EQ(candidates[2], (std::vector<std::string>{"ralph_rjc3"}));
  EXPECT_TRUE(UnownedTablesByInstance({}, "rj", 16).empty());
}

TEST(AddressPoolTest, UniqueSlotsReturnedOnRelease) {
  auto pool = AddressPool::Create(P("10.254.0.0/28"), P("fd52:616c:7068::/48"));
  ASSERT_TRUE(pool) << pool.error().message();
  EXPECT_EQ((*pool)->capacity(), 4u);  // four /30s in a /28
  auto a = (*pool)->Allocate();
  auto b = (*pool)->Allocate();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->host_v4.AddressString(), "10.254.0.1");
  EXPECT_EQ(a->job_v4.AddressString(), "10.254.0.2");
  EXPECT_EQ(b->host_v4.AddressString(), "10.254.0.5");
  EXPECT_EQ(b->job_v4.AddressString(), "10.254.0.6");
  EXPECT_EQ(a->host_v6.AddressString(), "fd52:616c:7068::1");
  EXPECT_EQ(b->host_v6.AddressString(), "fd52:616c:7068:1::1");
  EXPECT_EQ(b->job_v6.AddressString(), "fd52:616c:7068:1::2");
  auto c = (*pool)->Allocate();
  auto d = (*pool)->Allocate();
  ASSERT_TRUE(c && d);
  auto full = (*pool)->Allocate();
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), ErrorCode::kNoSpace);
  EXPECT_EQ(full.error().message(),
            "job address pool 10.254.0.0/28 + fd52:616c:7068::/48: all 4 slots in use");
  (*pool)->Release(b->slot);
  EXPECT_EQ((*pool)->in_use(), 3u);
  auto again = (*pool)->Allocate();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->slot, b->slot);
  EXPECT_EQ(again->job_v4, b->job_v4);
}

TEST(AddressPoolTest, RejectsUnusablePools) {
  auto small = AddressPool::Create(P("10.254.0.0/31"), P("fd52::/48"));
  ASSERT_FALSE(small);
  EXPECT_EQ(small.error().message(),
            "IPv4 job pool 10.254.0.0/31: must be an IPv4 prefix of /30 or wider");
  auto public_v6 = AddressPool::Create(P("10.254.0.0/16"), P("2001:db8::/48"));
  ASSERT_FALSE(public_v6);
  EXPECT_EQ(public_v6.error().message(),
            "IPv6 job pool 2001:db8::/48: must be a ULA (fc00::/7) prefix of /64 or wider");
}

}  // namespace
}  // namespace ralph::sandbox
