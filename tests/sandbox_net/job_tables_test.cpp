// The service's table logic (JobTables) against the fake nftables, the
// connection events' rate limit on an injected clock, and the upstream
// resolver's parsing: no kernel involved.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "connection_events.h"
#include "fake_nft_tables.h"
#include "job_tables.h"
#include "nflog_listener.h"
#include "upstream_dns.h"

namespace ralph::sandbox {
namespace {

using testing::FakeNftTables;

IpPrefix P(const char* text) {
  auto parsed = IpPrefix::Parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed ? *parsed : IpPrefix{};
}

// The plan of instance a's job in slot `slot` (host veth "rja<slot>").
NftTablePlan JobPlan(unsigned slot, const NetworkSpec& spec = {}) {
  JobAddressing addressing{.host_ifname = "rja" + std::to_string(slot),
                           .host_v4 = P("10.254.0.1"),
                           .job_v4 = P("10.254.0.2"),
                           .host_v6 = P("fd52:616c:7068::1"),
                           .job_v6 = P("fd52:616c:7068::2")};
  auto plan = PlanJobTable(addressing, spec, 7770);
  EXPECT_TRUE(plan) << plan.error().ToString();
  return plan ? *plan : NftTablePlan{};
}

size_t RuleCount(const NftTablePlan& plan) {
  size_t rules = 0;
  for (const NftChain& chain : plan.chains) rules += chain.rules.size();
  return rules;
}

struct Rig {
  explicit Rig(ServiceTables mode = ServiceTables::kPerService, bool supports_owner = true)
      : nft(supports_owner) {
    config.ifname_prefix = "rj";
    config.instance = 0;
    config.service_table_name = ServiceTableName("rja");
    config.service_tables = mode;
    config.try_claim = [this](unsigned n) -> Result<std::optional<UniqueFd>> {
      ++claims_tried;
      if (held.count(n)) return std::optional<UniqueFd>();
      return std::optional<UniqueFd>(UniqueFd());
    };
    config.log = [this](LogLevel, const std::string& message) { log.push_back(message); };
  }
  JobTables& Make() {
    tables.emplace(nft, config);
    return *tables;
  }

  FakeNftTables nft;
  JobTablesConfig config;
  std::set<unsigned> held;  // instances a live service holds
  int claims_tried = 0;
  std::vector<std::string> log;
  std::optional<JobTables> tables;
};

TEST(JobTablesTest, ServiceTableIsCommittedOwnedWhenTheKernelHasTheFlag) {
  Rig s;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(/*stateful=*/true));
  EXPECT_TRUE(tables.owned());
  FakeNftTables::Table* service = s.nft.Find("ralph_service_rja");
  ASSERT_NE(service, nullptr);
  EXPECT_TRUE(service->owned);
  EXPECT_EQ(service->owner_portid, FakeNftTables::kPortId);
  tables.Stop();
  EXPECT_TRUE(s.nft.Names().empty());
}

TEST(JobTablesTest, WithoutTheOwnerFlagEveryTableIsUnowned) {
  Rig s(ServiceTables::kPerService, /*supports_owner=*/false);
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(true));
  EXPECT_FALSE(tables.owned());
  ASSERT_TRUE(tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kReplaceStale));
  EXPECT_FALSE(s.nft.Find("ralph_service_rja")->owned);
  EXPECT_FALSE(s.nft.Find("ralph_rja0")->owned);
}

// A launcher (kWarm) sends no probe, makes every table unowned and leaves
// its job's table in place; the next job of the slot (of this process or
// the next launcher) takes it only when what the kernel reports is its
// plan, and replaces it in one transaction otherwise.
TEST(JobTablesTest, LauncherLeavesItsJobTableForTheSlotsNextJobToReplace) {
  Rig s(ServiceTables::kWarm);
  {
    JobTables& tables = s.Make();
    ASSERT_TRUE(tables.Start(false));
    EXPECT_FALSE(tables.owned());
    EXPECT_NE(s.nft.Find("ralph-warm-rj"), nullptr);
    EXPECT_EQ(s.nft.Find("ralph-warm-ct-rj"), nullptr);
    ASSERT_TRUE(tables.HoldServiceTable(false));
    ASSERT_TRUE(tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kFail));
    EXPECT_FALSE(s.nft.Find("ralph_rja0")->owned);
    int commits = s.nft.commits();
    ASSERT_TRUE(tables.DeleteJobTables({"ralph_rja0"}, true, WhenIdle::kReleaseServiceTable));
    EXPECT_EQ(s.nft.commits(), commits);
    EXPECT_NE(s.nft.Find("ralph_rja0"), nullptr);
    // This process's next job of the slot: replaced, even where a prepared
    // table's commit (kFail) would not replace a stranger's.
    s.nft.Find("ralph_rja0")->plan.chains.clear();
    ASSERT_TRUE(tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kFail));
    EXPECT_EQ(RenderNft(s.nft.Find("ralph_rja0")->plan), RenderNft(JobPlan(0)));
    ASSERT_TRUE(tables.DeleteJobTables({"ralph_rja0"}, false, WhenIdle::kKeepServiceTable));
    tables.Stop();
  }
  // The next launcher of the instance: its start keeps the leftover (no
  // commit), its job replaces it whatever it holds now.
  s.nft.Find("ralph_rja0")->plan.chains.clear();
  JobTables& next = s.Make();
  int commits = s.nft.commits();
  ASSERT_TRUE(next.Start(false));
  EXPECT_EQ(s.nft.commits(), commits);
  ASSERT_TRUE(next.CommitJobTable(JobPlan(0), JobTables::InTheWay::kFail));
  EXPECT_EQ(s.nft.commits(), commits + 1);
  EXPECT_EQ(RenderNft(s.nft.Find("ralph_rja0")->plan), RenderNft(JobPlan(0)));

  // Left again, untouched: the next job with the same plan takes it after
  // reading it back, without a transaction; one with another plan does not.
  ASSERT_TRUE(next.DeleteJobTables({"ralph_rja0"}, false, WhenIdle::kKeepServiceTable));
  commits = s.nft.commits();
  int reads = s.nft.reads();
  ASSERT_TRUE(next.CommitJobTable(JobPlan(0), JobTables::InTheWay::kFail));
  EXPECT_EQ(s.nft.commits(), commits);
  EXPECT_EQ(s.nft.reads(), reads + 1);
  ASSERT_TRUE(next.DeleteJobTables({"ralph_rja0"}, false, WhenIdle::kKeepServiceTable));
  NetworkSpec web{.allow = {{.cidr = "203.0.113.10", .port_min = 80}}};
  ASSERT_TRUE(next.CommitJobTable(JobPlan(0, web), JobTables::InTheWay::kFail));
  EXPECT_EQ(s.nft.commits(), commits + 1);
  EXPECT_EQ(RenderNft(s.nft.Find("ralph_rja0")->plan), RenderNft(JobPlan(0, web)));
  // A plan that looks up DNS sets never takes one: the sets hold another
  // job's answers.
  NetworkSpec named{.allowed_domains = {"api.example.com"}};
  ASSERT_TRUE(next.DeleteJobTables({"ralph_rja0"}, false, WhenIdle::kKeepServiceTable));
  s.nft.Plant(JobPlan(0, named));
  ASSERT_TRUE(next.CommitJobTable(JobPlan(0), JobTables::InTheWay::kFail));
  ASSERT_TRUE(next.DeleteJobTables({"ralph_rja0"}, false, WhenIdle::kKeepServiceTable));
  commits = s.nft.commits();
  reads = s.nft.reads();
  ASSERT_TRUE(next.CommitJobTable(JobPlan(0, named), JobTables::InTheWay::kFail));
  EXPECT_EQ(s.nft.reads(), reads);
  EXPECT_EQ(s.nft.commits(), commits + 1);
}

// What the kernel holds under a job's table name is never taken as it is,
// whatever it holds: a leftover whose rules were changed behind the
// service's back is replaced by the job's own plan.
TEST(JobTablesTest, LeftoverTableInTheJobsNameIsReplacedNeverTaken) {
  for (ServiceTables mode : {ServiceTables::kPerService, ServiceTables::kWarm}) {
    Rig s(mode);
    JobTables& tables = s.Make();
    ASSERT_TRUE(tables.Start(false));
    NftTablePlan plan = JobPlan(0);
    NftTablePlan tampered = plan;
    for (NftChain& chain : tampered.chains) chain.rules.clear();  // all policy accept
    s.nft.Plant(tampered);
    ASSERT_TRUE(tables.CommitJobTable(plan, JobTables::InTheWay::kReplaceStale));
    FakeNftTables::Table* table = s.nft.Find(plan.name);
    ASSERT_NE(table, nullptr);
    EXPECT_EQ(RuleCount(table->plan), RuleCount(plan));
    EXPECT_GT(RuleCount(plan), 0u);
    EXPECT_EQ(RenderNft(table->plan), RenderNft(plan));
    EXPECT_EQ(table->owned, mode == ServiceTables::kPerService);

    // A stranger in the way is replaced even when it is exactly what the
    // job would commit; a launcher's own leftover that the kernel reports
    // as the plan is taken as it is.
    ASSERT_TRUE(tables.DeleteJobTables({plan.name}, false, WhenIdle::kKeepServiceTable));
    s.nft.Plant(plan);
    int commits = s.nft.commits();
    ASSERT_TRUE(tables.CommitJobTable(plan, JobTables::InTheWay::kReplaceStale));
    EXPECT_EQ(s.nft.commits(), commits + (mode == ServiceTables::kPerService ? 1 : 0));
  }
}

TEST(JobTablesTest, TableOfALiveSocketInTheWayIsLeftAlone) {
  Rig s;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(false));
  NftTablePlan foreign = JobPlan(0);
  for (NftChain& chain : foreign.chains) chain.rules.clear();
  s.nft.Plant(foreign, /*owner_portid=*/77);
  auto committed = tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kReplaceStale);
  ASSERT_FALSE(committed);
  EXPECT_EQ(committed.error().code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(committed.error().ToString().find("port id 77"), std::string::npos)
      << committed.error().ToString();
  EXPECT_EQ(RuleCount(s.nft.Find(foreign.name)->plan), 0u);
}

// A table prepared ahead (kFail) never replaces one in the way: that is left
// to a job's own start.
TEST(JobTablesTest, PreparedCommitFailsOnATableInTheWay) {
  Rig s;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(false));
  NftTablePlan stale = JobPlan(0);
  stale.chains.clear();
  s.nft.Plant(stale);
  auto committed = tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kFail);
  ASSERT_FALSE(committed);
  EXPECT_EQ(committed.error().code(), ErrorCode::kAlreadyExists);
  EXPECT_TRUE(s.nft.Find(stale.name)->plan.chains.empty());
}

TEST(JobTablesTest, FailedCommitLeavesNothingAndNamesTheCause) {
  Rig s;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(false));
  s.nft.FailNext(FakeNftTables::Op::kApply, ENOBUFS);
  auto committed = tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kReplaceStale);
  ASSERT_FALSE(committed);
  EXPECT_NE(committed.error().ToString().find("ralph_rja0"), std::string::npos)
      << committed.error().ToString();
  EXPECT_EQ(s.nft.Find("ralph_rja0"), nullptr);
}

// Start's sweep: unowned tables of this instance go, those of an instance
// nobody holds go (claimed while they do), a held instance's and owned
// tables stay, as do other prefixes' tables.
TEST(JobTablesTest, SweepRemovesOnlyUnownedTablesOfInstancesNobodyHolds) {
  Rig s;
  s.held = {1};
  auto plant = [&](const std::string& name, uint32_t owner = 0) {
    NftTablePlan plan;
    plan.name = name;
    s.nft.Plant(plan, owner);
  };
  plant("ralph_rja0");         // this instance's, a dead holder's
  plant("ralph_rjb1");         // held instance b
  plant("ralph_rjc2");         // instance c, nobody holds it
  plant("ralph_rjd3", 99);     // owned: its socket is alive
  plant("ralph_service_rjc");  // c's service table
  plant("ralph_xya0");         // another prefix
  plant("ralph-warm-rj");      // shared, taken as it is
  JobTables& tables = s.Make();
  int commits = s.nft.commits();
  ASSERT_TRUE(tables.Start(false));
  std::vector<std::string> expected = {"ralph-warm-rj", "ralph_rjb1", "ralph_rjd3",
                                       "ralph_service_rja", "ralph_xya0"};
  EXPECT_EQ(s.nft.Names(), expected);
  EXPECT_EQ(s.claims_tried, 2);             // b and c, not this instance
  EXPECT_EQ(s.nft.commits(), commits + 4);  // three deletions, the service table

  // A launcher keeps its instance's job tables for their slots' next jobs,
  // not its instance's service table; the listed warm table is not
  // committed again.
  Rig warm(ServiceTables::kWarm);
  for (const char* name : {"ralph_rja0", "ralph_service_rja", "ralph-warm-rj"}) {
    NftTablePlan plan;
    plan.name = name;
    warm.nft.Plant(plan);
  }
  commits = warm.nft.commits();
  ASSERT_TRUE(warm.Make().Start(false));
  EXPECT_EQ(warm.nft.Names(), (std::vector<std::string>{"ralph-warm-rj", "ralph_rja0"}));
  EXPECT_EQ(warm.nft.commits(), commits + 1);
}

TEST(JobTablesTest, LastJobOfALauncherReleasesTheServiceTableInItsTransaction) {
  Rig s;
  s.config.release_when_idle = true;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(false));
  ASSERT_TRUE(tables.HoldServiceTable(false));
  ASSERT_TRUE(tables.HoldServiceTable(false));
  ASSERT_TRUE(tables.CommitJobTable(JobPlan(0), JobTables::InTheWay::kReplaceStale));
  ASSERT_TRUE(tables.CommitJobTable(JobPlan(1), JobTables::InTheWay::kReplaceStale));
  // Not the last holder: the service table stays.
  ASSERT_TRUE(tables.DeleteJobTables({"ralph_rja0"}, true, WhenIdle::kReleaseServiceTable));
  EXPECT_NE(s.nft.Find("ralph_service_rja"), nullptr);
  int commits = s.nft.commits();
  ASSERT_TRUE(tables.DeleteJobTables({"ralph_rja1"}, true, WhenIdle::kReleaseServiceTable));
  EXPECT_EQ(s.nft.commits(), commits + 1);
  EXPECT_TRUE(s.nft.Names().empty());
  // The next job commits it again, stateful as it asks.
  ASSERT_TRUE(tables.HoldServiceTable(true));
  EXPECT_NE(s.nft.Find("ralph_service_rja"), nullptr);
  EXPECT_EQ(
      s.nft.Find("ralph_service_rja")->plan.chains.size(),
      PlanServiceTable("ralph_service_rja", "rj", ForwardingPolicy::kOnlyJobs, true).chains.size());
}

TEST(JobTablesTest, StatefulServiceTableReplacesTheStatelessOneOnce) {
  Rig s;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(false));
  int commits = s.nft.commits();
  ASSERT_TRUE(tables.HoldServiceTable(false));
  EXPECT_EQ(s.nft.commits(), commits);
  ASSERT_TRUE(tables.HoldServiceTable(true));
  ASSERT_TRUE(tables.HoldServiceTable(true));
  EXPECT_EQ(s.nft.commits(), commits + 1);
  EXPECT_EQ(
      RenderNft(s.nft.Find("ralph_service_rja")->plan),
      RenderNft(PlanServiceTable("ralph_service_rja", "rj", ForwardingPolicy::kOnlyJobs, true)));
}

TEST(JobTablesTest, RemoveWarmTablesTakesTheWarmOnesAndUnheldInstancesTables) {
  FakeNftTables nft;
  for (const char* name : {"ralph-warm-rj", "ralph-warm-ct-rj", "ralph_rja0", "ralph_rjb0"}) {
    NftTablePlan plan;
    plan.name = name;
    nft.Plant(plan);
  }
  auto removed =
      JobTables::RemoveWarmTables(nft, "rj", 16, [](unsigned n) -> Result<std::optional<UniqueFd>> {
        if (n == 1) return std::optional<UniqueFd>();  // b is held
        return std::optional<UniqueFd>(UniqueFd());
      });
  ASSERT_TRUE(removed) << removed.error().ToString();
  EXPECT_EQ(*removed,
            (std::vector<std::string>{"ralph-warm-rj", "ralph-warm-ct-rj", "ralph_rja0"}));
  EXPECT_EQ(nft.Names(), std::vector<std::string>{"ralph_rjb0"});
}

TEST(JobTablesTest, DnsAddressesGoToTheFamilysSetOfTheJobsTable) {
  Rig s;
  JobTables& tables = s.Make();
  ASSERT_TRUE(tables.Start(false));
  NetworkSpec spec{.allowed_domains = {"*.example.com"}};
  ASSERT_TRUE(tables.CommitJobTable(JobPlan(0, spec), JobTables::InTheWay::kReplaceStale));
  ASSERT_TRUE(tables.AddDnsAddress("ralph_rja0", P("203.0.113.7"), 1000));
  ASSERT_TRUE(tables.AddDnsAddress("ralph_rja0", P("2001:db8::7"), 1000));
  auto& elements = s.nft.Find("ralph_rja0")->elements;
  EXPECT_EQ(elements[std::string(kDnsSetV4)], std::vector<std::string>{"203.0.113.7"});
  EXPECT_EQ(elements[std::string(kDnsSetV6)], std::vector<std::string>{"2001:db8::7"});
  EXPECT_FALSE(tables.AddDnsAddress("ralph_rja1", P("203.0.113.7"), 1000));
}

// ---- connection events ----------------------------------------------------

class Collect : public NetEventSinkInterface {
 public:
  void OnNetEvent(const NetEvent& event) override { events.push_back(event); }
  std::vector<NetEvent> events;
};

TEST(ConnectionEventsTest, RateLimitSuppressesAndReportsTheCountPerWindow) {
  int64_t now = 5000;
  ConnectionEvents events(200, [&] { return now; });
  Collect sink, other;
  events.Register("rja0", "job-1", &sink);
  events.Register("rja1", "job-2", &other);
  for (int i = 0; i < 3000; ++i) events.Deliver("rja0", NetEvent{.reason = "metadata"});
  events.Deliver("rja1", NetEvent{.reason = "allowlist"});
  EXPECT_EQ(sink.events.size(), 200u);
  EXPECT_EQ(other.events.size(), 1u);  // its own window
  EXPECT_EQ(events.suppressed_total(), 2800u);
  for (const NetEvent& event : sink.events) EXPECT_EQ(event.job_id, "job-1");

  // Within the window nothing more; the next window starts with the count.
  now += 999;
  events.Deliver("rja0", NetEvent{.reason = "metadata"});
  EXPECT_EQ(sink.events.size(), 200u);
  now += 1;
  events.Deliver("rja0", NetEvent{.reason = "metadata"});
  ASSERT_EQ(sink.events.size(), 202u);
  EXPECT_EQ(sink.events[200].reason, "rate-limited: 2801 events suppressed");
  EXPECT_EQ(sink.events[200].verdict, NetVerdict::kDenied);
  EXPECT_EQ(sink.events[201].reason, "metadata");

  // Unregistering reports what the window held back; then nothing arrives.
  for (int i = 0; i < 250; ++i) events.Deliver("rja0", NetEvent{.reason = "metadata"});
  events.Unregister("rja0");
  ASSERT_EQ(sink.events.size(), 402u);
  EXPECT_EQ(sink.events.back().reason, "rate-limited: 51 events suppressed");
  events.Deliver("rja0", NetEvent{.reason = "metadata"});
  EXPECT_EQ(sink.events.size(), 402u);
}

TEST(ConnectionEventsTest, LoggedPacketsGoToTheJobOfTheirInterface) {
  ConnectionEvents events(200, [] { return int64_t{0}; });
  Collect sink;
  events.Register("rja3", "job-3", &sink);
  LoggedPacket packet;
  packet.prefix = {.ifname = "rja3", .verdict = NetVerdict::kAllowed, .reason = "allowlist"};
  packet.destination = "203.0.113.10";
  packet.port = 80;
  packet.protocol = Protocol::kTcp;
  events.OnLoggedPacket(packet);
  packet.prefix.ifname = "rja4";  // nobody's
  events.OnLoggedPacket(packet);
  auto dns = events.SinkFor("rja3");
  dns->OnNetEvent(NetEvent{.destination = "api.example.com", .reason = "dns: allowed"});
  ASSERT_EQ(sink.events.size(), 2u);
  EXPECT_EQ(sink.events[0].job_id, "job-3");
  EXPECT_EQ(sink.events[0].destination, "203.0.113.10");
  EXPECT_EQ(sink.events[0].verdict, NetVerdict::kAllowed);
  EXPECT_EQ(sink.events[1].job_id, "job-3");
  EXPECT_EQ(sink.events[1].reason, "dns: allowed");
}

// ---- upstream resolver ------------------------------------------------------

TEST(UpstreamDnsTest, ParsesAddressesPortsAndResolvConf) {
  auto port_of = [](const UpstreamDns& upstream) {
    // reinterpret_cast: sockaddr_storage holds the family's sockaddr.
    return upstream.address.ss_family == AF_INET
               ? ntohs(reinterpret_cast<const sockaddr_in*>(&upstream.address)->sin_port)
               : ntohs(reinterpret_cast<const sockaddr_in6*>(&upstream.address)->sin6_port);
  };
  auto v4 = ParseUpstreamDns("198.51.100.53:5353", "");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->address.ss_family, AF_INET);
  EXPECT_EQ(port_of(*v4), 5353);
  auto v6 = ParseUpstreamDns("[2001:db8::53]:54", "");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->address.ss_family, AF_INET6);
  EXPECT_EQ(port_of(*v6), 54);
  auto bare6 = ParseUpstreamDns("2001:db8::53", "");
  ASSERT_TRUE(bare6);
  EXPECT_EQ(port_of(*bare6), 53);
  auto resolv = ParseUpstreamDns("", "# comment\nsearch x\nnameserver\nnameserver  192.0.2.9\n");
  ASSERT_TRUE(resolv);
  EXPECT_EQ(resolv->address.ss_family, AF_INET);
  EXPECT_EQ(port_of(*resolv), 53);

  for (const char* bad : {"198.51.100.53:0", "198.51.100.53:70000", "[2001:db8::53", "[::1]x",
                          "dns.example", "10.0.0.0/8"}) {
    auto parsed = ParseUpstreamDns(bad, "");
    ASSERT_FALSE(parsed) << bad;
    EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(parsed.error().ToString().find(bad), std::string::npos) << parsed.error().ToString();
  }
  auto none = ParseUpstreamDns("", "search x\n");
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().ToString().find("resolv.conf"), std::string::npos);
}

}  // namespace
}  // namespace ralph::sandbox
