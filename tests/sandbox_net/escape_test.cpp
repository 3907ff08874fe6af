// Network escape suite: a job (a process in its own netns, networked by
// NetworkService exactly as the spawner does it) tries to get out; each case
// must fail, and the test hosts are checked afterwards for anything that got
// through. Positive cases show that what is allowlisted works, that DNS
// openings expire with the TTL, and that events come for both verdicts.
// Leak checks count interfaces, nft tables, fds, threads and netns refs.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <ldns/ldns.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "nft_apply.h"
#include "private_netns_environment.h"
#include "sandbox/net/network_service.h"
#include "test_topology.h"

namespace ralph::sandbox {
namespace {

using testing::Eventually;
using testing::JobContext;
using testing::JobProcess;
using testing::ProbeConnect;
using testing::ProbePing;
using testing::ProbeResolve;
using testing::ProbeUdpFlood;
using testing::RecordingSink;
using testing::World;

constexpr uint16_t kNflogGroup = 7771;

const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new testing::PrivateNetnsEnvironment);

class NetEscapeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    world_ = World::Start();
    NetworkServiceConfig config;
    config.upstream_dns = "198.51.100.53";
    config.nflog_group = kNflogGroup;
    auto service = NetworkService::Start(config);
    ASSERT_TRUE(service) << service.error().ToString();
    service_ = service->release();
  }
  static void TearDownTestSuite() {
    delete service_;
    service_ = nullptr;
    // The service removed everything it made: no tables at all, and no links
    // but lo and the world's veth.
    EXPECT_EQ(testing::ShellOutput("nft list tables"), "");
    EXPECT_EQ(testing::CountResources().interfaces, 2);
    delete world_;
    world_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(service_, nullptr);
    world_->ClearLog();
  }

  // Runs `probe` in a fresh job networked with `spec`; keeps the network up
  // until the test ends (so events can still be matched), then tears down.
  std::string RunJob(const NetworkSpec& spec, std::function<std::string(const JobContext&)> probe) {
    JobProcess job = JobProcess::Fork(std::move(probe));
    std::string job_id = fmt::format("job-{}", ++job_counter_);
    auto network = service_->CreateJob(job_id, job.pid(), spec, &sink_);
    if (!network) {
      ADD_FAILURE() << network.error().ToString();
      return "create failed";
    }
    JobContext context{(*network)->resolver_address(), (*network)->resolver_address_v6()};
    std::string output = job.Go(context);
    networks_.push_back(std::move(*network));
    return output;
  }

  void TearDown() override {
    for (auto& network : networks_) {
      auto result = network->Teardown();
      EXPECT_TRUE(result) << result.error().ToString();
    }
    networks_.clear();
  }

  bool Denied(const std::string& destination, uint16_t port, const std::string& reason) {
    return sink_.WaitFor([&](const NetEvent& e) {
      return e.verdict == NetVerdict::kDenied && e.destination == destination && e.port == port &&
             e.reason == reason;
    });
  }
  bool Allowed(const std::string& destination, uint16_t port, const std::string& reason) {
    return sink_.WaitFor([&](const NetEvent& e) {
      return e.verdict == NetVerdict::kAllowed && e.destination == destination && e.port == port &&
             e.reason == reason;
    });
  }

  static World* world_;
  static NetworkService* service_;
  static int job_counter_;
  RecordingSink sink_;
  std::vector<std::unique_ptr<JobNetwork>> networks_;
};

World* NetEscapeTest::world_ = nullptr;
NetworkService* NetEscapeTest::service_ = nullptr;
int NetEscapeTest::job_counter_ = 0;

// The threads of this process (the services' listener and forwarder
// threads among them).
size_t ThreadCount() {
  size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task"))
    ++count;
  return count;
}

NetworkSpec WebOnly() {
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.10", .port_min = 80},
                {.cidr = "2001:db8:1::10", .port_min = 80}};
  return spec;
}

TEST_F(NetEscapeTest, TopologySanity) {
  // The host itself reaches the world: a failing escape case below fails
  // because of the job's rules, not because the test network is broken.
  EXPECT_EQ(ProbeResolve("198.51.100.53", "api.allowed.test", LDNS_RR_TYPE_A),
            "rcode:NOERROR A 203.0.113.10")
      << fmt::format("{}", fmt::join(world_->Log(), "\n"));
  EXPECT_EQ(ProbeConnect("203.0.113.20", 80), "connected:hello");
  EXPECT_EQ(ProbeConnect("169.254.169.254", 80), "connected:hello");
  EXPECT_EQ(ProbeConnect("fd00:ec2::254", 80), "connected:hello");
  EXPECT_EQ(ProbeConnect("10.9.9.9", 80), "connected:hello");
}

// ---- positive cases first: they prove the topology routes at all ---------

TEST_F(NetEscapeTest, AllowlistedCidrAndPortConnectsOverIpv4AndIpv6) {
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.0/24", .port_min = 80},
                {.cidr = "2001:db8:1::/64", .port_min = 80, .port_max = 81}};
  std::string out = RunJob(spec, [](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("2001:db8:1::10", 80);
  });
  EXPECT_EQ(out, "connected:hello|connected:hello");
  // Masqueraded behind the host's uplink address.
  EXPECT_TRUE(world_->SawAny("tcp 203.0.113.10 80 from 192.0.2.1"));
  EXPECT_TRUE(world_->SawAny("tcp 2001:db8:1::10 80 from 2001:db8:ffff::1"));
  EXPECT_TRUE(Allowed("203.0.113.10", 80, "allowlist")) << sink_.Dump();
  EXPECT_TRUE(Allowed("2001:db8:1::10", 80, "allowlist")) << sink_.Dump();
  for (const NetEvent& event : sink_.events()) EXPECT_EQ(event.job_id.rfind("job-", 0), 0u);
}

TEST_F(NetEscapeTest, AllowlistedNameResolvesConnectsAndExpiresWithTheTtl) {
  NetworkSpec spec;
  spec.allowed_domains = {"*.allowed.test"};
  spec.domain_ports = {80};
  std::string out = RunJob(spec, [](const JobContext& context) {
    std::string before = ProbeConnect("203.0.113.10", 80);
    std::string resolved = ProbeResolve(context.resolver_v4, "api.allowed.test", LDNS_RR_TYPE_A);
    std::string resolved6 =
        ProbeResolve(context.resolver_v6, "api.allowed.test", LDNS_RR_TYPE_AAAA, /*tcp=*/true);
    std::string after = ProbeConnect("203.0.113.10", 80);
    std::string after6 = ProbeConnect("2001:db8:1::10", 80);
    std::string other_port = ProbeConnect("203.0.113.10", 8080);
    // The records' TTL is 2 s: once the element times out, new connections
    // fail (polled, for up to 20 s).
    std::string expired = "connected:hello";
    bool gone = testing::Eventually([&] {
      expired = ProbeConnect("203.0.113.10", 80);
      return expired != "connected:hello";
    });
    if (!gone) expired = "never expired: " + expired;
    return fmt::format("{}|{}|{}|{}|{}|{}|{}", before, resolved, resolved6, after, after6,
                       other_port, expired);
  });
  EXPECT_EQ(out,
            "failed:timeout|rcode:NOERROR A 203.0.113.10|rcode:NOERROR AAAA 2001:db8:1::10|"
            "connected:hello|connected:hello|failed:timeout|failed:timeout");
  EXPECT_TRUE(world_->SawAny("dns api.allowed.test. 1"));
  EXPECT_FALSE(world_->SawAny("tcp 203.0.113.10 8080"));
  EXPECT_TRUE(Allowed("api.allowed.test", 53, "dns: allowed")) << sink_.Dump();
  EXPECT_TRUE(Allowed("203.0.113.10", 80, "dns-allowlist")) << sink_.Dump();
  EXPECT_TRUE(Allowed("2001:db8:1::10", 80, "dns-allowlist")) << sink_.Dump();
  EXPECT_TRUE(Denied("203.0.113.10", 80, "not-allowlisted")) << sink_.Dump();
  EXPECT_TRUE(Denied("203.0.113.10", 8080, "not-allowlisted")) << sink_.Dump();
}

// ---- escapes ---------------------------------------------------------------

TEST_F(NetEscapeTest, CloudMetadataIsUnreachableOverIpv4AndIpv6) {
  NetworkSpec spec = WebOnly();
  // Even allowlisting it explicitly does not open it.
  spec.allow.push_back({.cidr = "169.254.169.254", .port_min = 80});
  std::string out = RunJob(spec, [](const JobContext&) {
    return ProbeConnect("169.254.169.254", 80) + "|" + ProbeConnect("fd00:ec2::254", 80) + "|" +
           ProbeConnect("100.100.100.200", 80);
  });
  EXPECT_EQ(out, "failed:timeout|failed:timeout|failed:timeout");
  EXPECT_FALSE(world_->SawAny("tcp 169.254.169.254"));
  EXPECT_FALSE(world_->SawAny("tcp fd00:ec2::254"));
  EXPECT_FALSE(world_->SawAny("tcp 100.100.100.200"));
  EXPECT_TRUE(Denied("169.254.169.254", 80, "metadata")) << sink_.Dump();
  EXPECT_TRUE(Denied("fd00:ec2::254", 80, "metadata")) << sink_.Dump();
  EXPECT_TRUE(Denied("100.100.100.200", 80, "metadata")) << sink_.Dump();
}

TEST_F(NetEscapeTest, Rfc1918HostIsUnreachable) {
  NetworkSpec spec = WebOnly();
  spec.allow.push_back({.cidr = "10.0.0.0/8", .port_min = 80});
  std::string out = RunJob(spec, [](const JobContext&) { return ProbeConnect("10.9.9.9", 80); });
  EXPECT_EQ(out, "failed:timeout");
  EXPECT_FALSE(world_->SawAny("tcp 10.9.9.9"));
  EXPECT_TRUE(Denied("10.9.9.9", 80, "rfc1918")) << sink_.Dump();
}

// A second, independent NetworkService in the same netns with the very same
// config (as a second `ralph-sandbox run` would start): it claims another
// instance, NFLOG group, veth names, table names and addresses; both jobs
// are networked at once and each service's sink gets its own job's events
// and only those. Stopping the second leaves the first working.
TEST_F(NetEscapeTest, TwoServicesInOneNetnsEachGetTheirOwnEvents) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one
  auto second = NetworkService::Start(config);
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_NE((*second)->instance(), service_->instance());
  EXPECT_NE((*second)->nflog_group(), service_->nflog_group());
  EXPECT_NE((*second)->interface_prefix(), service_->interface_prefix());
  RecordingSink second_sink;
  // A third confined to the suite service's NFLOG group: a clear error, and
  // nothing of it is left (the suite's teardown counts tables).
  NetworkServiceConfig confined = config;
  confined.nflog_group = service_->nflog_group();
  confined.nflog_group_count = 1;
  auto third = NetworkService::Start(confined);
  ASSERT_FALSE(third);
  EXPECT_EQ(third.error().code(), ErrorCode::kBusy);
  EXPECT_EQ(third.error().message(),
            fmt::format("nflog groups {0}..{0} are all bound by other sockets in this network "
                        "namespace (nflog_group, nflog_group_count)",
                        service_->nflog_group()));

  auto probe = [](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + " " + ProbeConnect("10.9.9.9", 80);
  };
  JobProcess first_job = JobProcess::Fork(probe);
  JobProcess second_job = JobProcess::Fork(probe);
  auto first_network = service_->CreateJob("first-service-job", first_job.pid(), WebOnly(), &sink_);
  ASSERT_TRUE(first_network) << first_network.error().ToString();
  auto second_network =
      (*second)->CreateJob("second-service-job", second_job.pid(), WebOnly(), &second_sink);
  ASSERT_TRUE(second_network) << second_network.error().ToString();
  EXPECT_NE((*first_network)->job_address_v4(), (*second_network)->job_address_v4());
  EXPECT_NE((*first_network)->host_interface(), (*second_network)->host_interface());

  JobContext first_context{(*first_network)->resolver_address(),
                           (*first_network)->resolver_address_v6()};
  JobContext second_context{(*second_network)->resolver_address(),
                            (*second_network)->resolver_address_v6()};
  EXPECT_EQ(first_job.Go(first_context), "connected:hello failed:timeout");
  EXPECT_EQ(second_job.Go(second_context), "connected:hello failed:timeout");

  auto event_of = [](const std::string& job_id, NetVerdict verdict, const std::string& address,
                     const std::string& reason) {
    return [=](const NetEvent& e) {
      return e.job_id == job_id && e.verdict == verdict && e.destination == address &&
             e.port == 80 && e.reason == reason;
    };
  };
  EXPECT_TRUE(
      sink_.WaitFor(event_of("first-service-job", NetVerdict::kDenied, "10.9.9.9", "rfc1918")))
      << sink_.Dump();
  EXPECT_TRUE(sink_.WaitFor(
      event_of("first-service-job", NetVerdict::kAllowed, "203.0.113.10", "allowlist")))
      << sink_.Dump();
  EXPECT_TRUE(second_sink.WaitFor(
      event_of("second-service-job", NetVerdict::kDenied, "10.9.9.9", "rfc1918")))
      << second_sink.Dump();
  EXPECT_TRUE(second_sink.WaitFor(
      event_of("second-service-job", NetVerdict::kAllowed, "203.0.113.10", "allowlist")))
      << second_sink.Dump();
  for (const NetEvent& e : sink_.events()) EXPECT_EQ(e.job_id, "first-service-job");
  for (const NetEvent& e : second_sink.events()) EXPECT_EQ(e.job_id, "second-service-job");

  ASSERT_TRUE((*second_network)->Teardown());
  second->reset();
  ASSERT_TRUE((*first_network)->Teardown());
  // The first service's table, veths and NFLOG group survived the second's
  // start and stop.
  std::string out =
      RunJob(WebOnly(), [](const JobContext&) { return ProbeConnect("10.9.9.9", 80); });
  EXPECT_EQ(out, "failed:timeout");
  EXPECT_TRUE(Denied("10.9.9.9", 80, "rfc1918")) << sink_.Dump();
}

// A service started with expect_egress = false (as a launcher whose job may
// reach nothing) commits its table without conntrack or NAT; such a job
// still gets every drop reported; the first job that may send out replaces
// the service table with its stateful version in one transaction, and its
// traffic is masqueraded.
TEST_F(NetEscapeTest, ConntrackAndNatComeWithTheFirstJobThatMaySendOut) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  config.expect_egress = false;
  auto lazy = NetworkService::Start(config);
  ASSERT_TRUE(lazy) << lazy.error().ToString();
  auto listing = [](const std::string& table) {
    return testing::ShellOutput(fmt::format("nft list table inet {} 2>&1", table));
  };
  std::string service_table = fmt::format("ralph_service_{}", (*lazy)->interface_prefix());
  std::string text = listing(service_table);
  EXPECT_NE(text.find("iifname \"rj*\" accept"), std::string::npos) << text;
  EXPECT_EQ(text.find("ct state"), std::string::npos) << text;
  EXPECT_EQ(text.find("hook postrouting"), std::string::npos) << text;
  RecordingSink sink;
  {
    JobProcess job = JobProcess::Fork([](const JobContext&) {
      return ProbeConnect("169.254.169.254", 80) + " " + ProbeConnect("203.0.113.10", 80);
    });
    auto network = (*lazy)->CreateJob("reaches-nothing", job.pid(), NetworkSpec{}, &sink);
    ASSERT_TRUE(network) << network.error().ToString();
    std::string job_table = listing(fmt::format("ralph_{}", (*network)->host_interface()));
    EXPECT_EQ(job_table.find("ct state"), std::string::npos) << job_table;
    EXPECT_EQ(job_table.find("masquerade"), std::string::npos) << job_table;
    EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "failed:timeout failed:timeout");
    auto denied = [&](const std::string& address, const std::string& reason) {
      return sink.WaitFor([&](const NetEvent& e) {
        return e.job_id == "reaches-nothing" && e.verdict == NetVerdict::kDenied &&
               e.destination == address && e.port == 80 && e.reason == reason;
      });
    };
    EXPECT_TRUE(denied("169.254.169.254", "metadata")) << sink.Dump();
    EXPECT_TRUE(denied("203.0.113.10", "not-allowlisted")) << sink.Dump();
    text = listing(service_table);
    EXPECT_EQ(text.find("hook postrouting"), std::string::npos) << text;
    ASSERT_TRUE((*network)->Teardown());
  }
  JobProcess job =
      JobProcess::Fork([](const JobContext&) { return ProbeConnect("203.0.113.10", 80); });
  auto network = (*lazy)->CreateJob("reaches-the-web", job.pid(), WebOnly(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  text = listing(service_table);
  EXPECT_NE(text.find("ct state invalid drop"), std::string::npos) << text;
  EXPECT_NE(text.find("hook postrouting"), std::string::npos) << text;
  EXPECT_NE(text.find("iifname \"rj*\" accept"), std::string::npos) << text;
  EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "connected:hello");
  EXPECT_TRUE(world_->SawAny("tcp 203.0.113.10 80 from 192.0.2.1"));
  ASSERT_TRUE((*network)->Teardown());
}

// The launcher's mode (ServiceTables::kWarm): the forwarding policy and the
// hold on the hooks are warm tables that outlive each service, are made
// once and shared, and are removed by RemoveWarmTables (`drain`) only.
TEST_F(NetEscapeTest, WarmTablesAreMadeOnceSharedAndLeftUntilDrained) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  config.expect_egress = false;
  config.service_tables = ServiceTables::kWarm;
  auto listing = [](const std::string& table) {
    return testing::ShellOutput(fmt::format("nft -a list table inet {} 2>&1", table));
  };
  // "table inet <name> { # handle <n>": the same handle means the same table.
  auto handle = [&](const std::string& table) {
    std::string text = listing(table);
    return text.substr(0, text.find('\n'));
  };
  RecordingSink sink;
  std::string warm_handle;
  {
    auto first = NetworkService::Start(config);
    ASSERT_TRUE(first) << first.error().ToString();
    std::string text = listing("ralph-warm-rj");
    EXPECT_NE(text.find("iifname \"rj*\" accept"), std::string::npos) << text;
    EXPECT_NE(text.find("hook input"), std::string::npos) << text;
    EXPECT_EQ(text.find("ct state"), std::string::npos) << text;
    warm_handle = handle("ralph-warm-rj");
    // No table of the service's own, and no conntrack part yet.
    std::string tables = testing::ShellOutput("nft list tables");
    EXPECT_EQ(tables.find(ServiceTableName((*first)->interface_prefix())), std::string::npos)
        << tables;
    EXPECT_EQ(tables.find("ralph-warm-ct-rj"), std::string::npos) << tables;

    JobProcess job = JobProcess::Fork([](const JobContext&) {
      return ProbeConnect("169.254.169.254", 80) + " " + ProbeConnect("203.0.113.10", 80);
    });
    auto network = (*first)->CreateJob("warm-nothing", job.pid(), NetworkSpec{}, &sink);
    ASSERT_TRUE(network) << network.error().ToString();
    EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "failed:timeout failed:timeout");
    EXPECT_TRUE(sink.WaitFor([&](const NetEvent& e) {
      return e.job_id == "warm-nothing" && e.destination == "169.254.169.254" &&
             e.reason == "metadata" && e.verdict == NetVerdict::kDenied;
    })) << sink.Dump();
    ASSERT_TRUE((*network)->TeardownWithNamespace());

    // The first job that may send out adds the conntrack part.
    JobProcess web =
        JobProcess::Fork([](const JobContext&) { return ProbeConnect("203.0.113.10", 80); });
    auto web_network = (*first)->CreateJob("warm-web", web.pid(), WebOnly(), &sink);
    ASSERT_TRUE(web_network) << web_network.error().ToString();
    text = listing("ralph-warm-ct-rj");
    EXPECT_NE(text.find("ct state invalid drop"), std::string::npos) << text;
    EXPECT_NE(text.find("hook postrouting"), std::string::npos) << text;
    EXPECT_EQ(web.Go({(*web_network)->resolver_address(), ""}), "connected:hello");
    ASSERT_TRUE((*web_network)->Teardown());
  }
  // Left in place by the stopped service, untouched.
  EXPECT_EQ(handle("ralph-warm-rj"), warm_handle);
  std::string ct_handle = handle("ralph-warm-ct-rj");
  EXPECT_NE(ct_handle.find("# handle"), std::string::npos) << ct_handle;

  // Two services at once take them as they are: still one of each.
  auto second = NetworkService::Start(config);
  ASSERT_TRUE(second) << second.error().ToString();
  NetworkServiceConfig third_config = config;
  third_config.expect_egress = true;
  auto third = NetworkService::Start(third_config);
  ASSERT_TRUE(third) << third.error().ToString();
  EXPECT_EQ(handle("ralph-warm-rj"), warm_handle);
  EXPECT_EQ(handle("ralph-warm-ct-rj"), ct_handle);
  JobProcess web =
      JobProcess::Fork([](const JobContext&) { return ProbeConnect("203.0.113.10", 80); });
  auto network = (*second)->CreateJob("warm-again", web.pid(), WebOnly(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_EQ(web.Go({(*network)->resolver_address(), ""}), "connected:hello");
  ASSERT_TRUE((*network)->Teardown());
  std::string tables = testing::ShellOutput("nft list tables");
  size_t warm_tables = 0;
  for (size_t at = tables.find("ralph-warm"); at != std::string::npos;
       at = tables.find("ralph-warm", at + 1))
    ++warm_tables;
  EXPECT_EQ(warm_tables, 2u) << tables;
  second->reset();
  third->reset();

  // drain: both go, and the tables the jobs left; a second drain finds
  // nothing.
  auto removed = NetworkService::RemoveWarmTables("rj");
  ASSERT_TRUE(removed) << removed.error().ToString();
  ASSERT_GE(removed->size(), 3u);
  EXPECT_EQ(std::vector<std::string>(removed->begin(), removed->begin() + 2),
            (std::vector<std::string>{"ralph-warm-rj", "ralph-warm-ct-rj"}));
  for (size_t i = 2; i < removed->size(); ++i)
    EXPECT_TRUE((*removed)[i].starts_with("ralph_rj")) << (*removed)[i];
  tables = testing::ShellOutput("nft list tables");
  EXPECT_EQ(tables.find("ralph-warm"), std::string::npos) << tables;
  EXPECT_EQ(tables.find("ralph_rj"), std::string::npos) << tables;
  auto again = NetworkService::RemoveWarmTables("rj");
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_TRUE(again->empty());
}

// The egress boundary rests on what the job's own service commits, never on
// a table found in the kernel: a launcher (kWarm) whose job slot's table
// name is taken by a leftover (another build's, a half-finished
// transaction's, one changed behind the services' back: here everything
// flushed to policy accept, with the comment older launchers matched on)
// replaces it in the job's own transaction, and its job cannot reach a
// service listening on the host through its gateway address.
TEST_F(NetEscapeTest, TamperedLeftoverJobTableIsNotTakenByTheNextLauncher) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  config.service_tables = ServiceTables::kWarm;
  config.report_events = false;
  config.expect_egress = false;
  int host_service = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ASSERT_GE(host_service, 0);
  int one = 1;
  setsockopt(host_service, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{.sin_family = AF_INET, .sin_port = htons(9996), .sin_addr = {INADDR_ANY}};
  ASSERT_EQ(bind(host_service, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(host_service, 8), 0);

  std::string table, ifname;
  // One launcher: a service, one job that may reach nothing, connecting to
  // the host service through its gateway.
  auto launch = [&](const std::string& job_id) -> std::string {
    auto service = NetworkService::Start(config);
    if (!service) return service.error().ToString();
    std::string result;
    JobProcess job = JobProcess::Fork(
        [](const JobContext& context) { return ProbeConnect(context.resolver_v4, 9996); });
    auto network = (*service)->CreateJob(job_id, job.pid(), NetworkSpec{}, nullptr);
    if (!network) return network.error().ToString();
    ifname = (*network)->host_interface();
    table = JobTableName(ifname);
    result = job.Go({(*network)->resolver_address(), ""});
    if (auto down = (*network)->TeardownWithNamespace(); !down) return down.error().ToString();
    // The job is gone: its veth goes with its netns, in the kernel's time,
    // and then the next launcher gets the same slot.
    EXPECT_TRUE(Eventually([&] { return if_nametoindex(ifname.c_str()) == 0; }));
    return result;
  };
  auto accepted = [&] {
    int connection = accept(host_service, nullptr, nullptr);
    if (connection < 0) return false;
    close(connection);
    return true;
  };

  ASSERT_EQ(launch("leftover-1"), "failed:timeout");
  EXPECT_FALSE(accepted());
  // What is left under the slot's table name, whatever made it, has its
  // rules flushed: every chain accepts everything.
  std::string tables = testing::ShellOutput("nft list tables");
  if (tables.find("table inet " + table + "\n") == std::string::npos) {
    ASSERT_EQ(testing::Shell(fmt::format(
                  "nft -f - <<'EOF'\n"
                  "table inet {0} {{\n"
                  "  comment \"ralph warm job table 0000000000000000 enabled=1;allow=0;\"\n"
                  "  chain forward {{ type filter hook forward priority 0; policy accept; }}\n"
                  "  chain input {{ type filter hook input priority 0; policy accept; }}\n"
                  "}}\n"
                  "EOF",
                  table)),
              0);
  } else {
    ASSERT_EQ(testing::Shell("nft flush table inet " + table), 0);
  }
  std::string flushed = testing::ShellOutput("nft -a list table inet " + table);
  EXPECT_EQ(flushed.find("drop"), std::string::npos) << flushed;

  EXPECT_EQ(launch("leftover-2"), "failed:timeout");
  EXPECT_FALSE(accepted());
  // What the second launcher left there is its job's own table, rules and
  // all, which the next job of the slot with the same plan takes as it is,
  // once read back (the same table handle), and which holds.
  std::string left = testing::ShellOutput("nft -a list table inet " + table);
  EXPECT_NE(left.find("drop"), std::string::npos) << left;
  EXPECT_EQ(launch("leftover-3"), "failed:timeout");
  EXPECT_FALSE(accepted());
  std::string again = testing::ShellOutput("nft -a list table inet " + table);
  EXPECT_EQ(again.substr(0, again.find('\n')), left.substr(0, left.find('\n')));
  close(host_service);
  auto removed = NetworkService::RemoveWarmTables("rj");
  ASSERT_TRUE(removed) << removed.error().ToString();
  tables = testing::ShellOutput("nft list tables");
  EXPECT_EQ(tables.find("ralph_rj"), std::string::npos) << tables;
  EXPECT_EQ(tables.find("ralph-warm"), std::string::npos) << tables;
}

// prepared_tables: the next jobs with the same spec get a table committed
// ahead, which enforces the same rules; never more than the configured
// number wait; another spec drops them; the service's stop removes them.
TEST_F(NetEscapeTest, PreparedTablesServeTheNextJobsWithTheSameSpec) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  config.prepared_tables = 2;
  auto service = NetworkService::Start(config);
  ASSERT_TRUE(service) << service.error().ToString();
  const std::string prefix = (*service)->interface_prefix();
  auto job_tables = [&] {
    std::string tables = testing::ShellOutput("nft list tables");
    size_t count = 0;
    std::string needle = " ralph_" + prefix;
    for (size_t at = tables.find(needle); at != std::string::npos; at = tables.find(needle, at + 1))
      ++count;
    return count;
  };
  auto probe = [](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("203.0.113.20", 80);
  };
  RecordingSink sink;
  std::vector<std::unique_ptr<JobNetwork>> networks;

  // The first job's table is made at its start; then two for its spec.
  JobProcess first = JobProcess::Fork(probe);
  auto network = (*service)->CreateJob("prepared-1", first.pid(), WebOnly(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_EQ((*network)->host_interface(), prefix + "0");
  EXPECT_EQ((*service)->WaitForPreparedTables(), 2u);
  EXPECT_EQ(job_tables(), 3u);
  EXPECT_EQ((*service)->live_jobs(), 3u);
  EXPECT_EQ(first.Go({(*network)->resolver_address(), ""}), "connected:hello|failed:timeout");
  networks.push_back(std::move(*network));

  // The next one takes a prepared table: the same rules, the same events.
  JobProcess second = JobProcess::Fork(probe);
  auto taken = (*service)->CreateJob("prepared-2", second.pid(), WebOnly(), &sink);
  ASSERT_TRUE(taken) << taken.error().ToString();
  EXPECT_EQ((*taken)->host_interface(), prefix + "1");
  EXPECT_EQ(second.Go({(*taken)->resolver_address(), ""}), "connected:hello|failed:timeout");
  EXPECT_TRUE(sink.WaitFor([](const NetEvent& e) {
    return e.job_id == "prepared-2" && e.verdict == NetVerdict::kDenied &&
           e.destination == "203.0.113.20" && e.reason == "not-allowlisted";
  })) << sink.Dump();
  EXPECT_TRUE(sink.WaitFor([](const NetEvent& e) {
    return e.job_id == "prepared-2" && e.verdict == NetVerdict::kAllowed &&
           e.destination == "203.0.113.10" && e.reason == "allowlist";
  })) << sink.Dump();
  networks.push_back(std::move(*taken));
  // Bounded: two jobs and two prepared tables.
  EXPECT_EQ((*service)->WaitForPreparedTables(), 2u);
  EXPECT_EQ(job_tables(), 4u);

  // Another spec: its own table at its start, and the prepared ones are
  // replaced by two for it.
  JobProcess other = JobProcess::Fork(probe);
  auto fresh = (*service)->CreateJob("prepared-other", other.pid(), NetworkSpec{}, &sink);
  ASSERT_TRUE(fresh) << fresh.error().ToString();
  EXPECT_EQ(other.Go({(*fresh)->resolver_address(), ""}), "failed:timeout|failed:timeout");
  networks.push_back(std::move(*fresh));
  EXPECT_EQ((*service)->WaitForPreparedTables(), 2u);
  EXPECT_EQ(job_tables(), 5u);
  EXPECT_EQ((*service)->live_jobs(), 5u);

  for (auto& job_network : networks) EXPECT_TRUE(job_network->Teardown());
  EXPECT_EQ(job_tables(), 2u);  // the prepared ones, until the service stops
  service->reset();
  EXPECT_EQ(job_tables(), 0u) << testing::ShellOutput("nft list tables");
  EXPECT_EQ(testing::ShellOutput("nft list tables").find(ServiceTableName(prefix)),
            std::string::npos);

  // Out of range: the config error names the field.
  config.prepared_tables = NetworkService::kMaxPreparedTables + 1;
  auto refused = NetworkService::Start(config);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(refused.error().message(), "prepared_tables 9: at most 8");
}

// PrepareJob (what SandboxService::Run asks for while the job's child is
// cloned): the table of the job to come is committed ahead on the caller's
// thread, once however often it is asked for, and taken by that job's
// start, which then enforces the same rules; a prepared table for another
// spec is dropped, and the service's stop removes one nobody took.
TEST_F(NetEscapeTest, PrepareJobCommitsTheTableTheNextJobTakes) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  auto service = NetworkService::Start(config);
  ASSERT_TRUE(service) << service.error().ToString();
  const std::string prefix = (*service)->interface_prefix();
  auto job_tables = [&] {
    std::string tables = testing::ShellOutput("nft list tables");
    std::vector<std::string> names;
    std::string needle = " ralph_" + prefix;
    for (size_t at = tables.find(needle); at != std::string::npos; at = tables.find(needle, at + 1))
      names.push_back(tables.substr(at + 1, tables.find('\n', at) - at - 1));
    return names;
  };
  RecordingSink sink;

  ASSERT_TRUE((*service)->PrepareJob(WebOnly()));
  EXPECT_EQ(job_tables(), std::vector<std::string>{JobTableName(prefix + "0")});
  EXPECT_EQ((*service)->live_jobs(), 1u);
  // Prepared already: nothing more is committed.
  ASSERT_TRUE((*service)->PrepareJob(WebOnly()));
  EXPECT_EQ(job_tables(), std::vector<std::string>{JobTableName(prefix + "0")});
  EXPECT_EQ((*service)->live_jobs(), 1u);
  // A disabled network has no table to prepare.
  NetworkSpec off;
  off.enabled = false;
  ASSERT_TRUE((*service)->PrepareJob(off));
  EXPECT_EQ(job_tables().size(), 1u);

  JobProcess job = JobProcess::Fork([](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("203.0.113.20", 80);
  });
  auto network = (*service)->CreateJob("prepared-launcher", job.pid(), WebOnly(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_EQ((*network)->host_interface(), prefix + "0");
  EXPECT_EQ(job_tables(), std::vector<std::string>{JobTableName(prefix + "0")});
  EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "connected:hello|failed:timeout");
  EXPECT_TRUE(sink.WaitFor([](const NetEvent& e) {
    return e.job_id == "prepared-launcher" && e.verdict == NetVerdict::kDenied &&
           e.destination == "203.0.113.20" && e.reason == "not-allowlisted";
  })) << sink.Dump();

  // Prepared for one spec, then for another: the first one is dropped.
  ASSERT_TRUE((*service)->PrepareJob(WebOnly()));
  ASSERT_TRUE((*service)->PrepareJob(NetworkSpec{}));
  EXPECT_EQ(job_tables(),
            (std::vector<std::string>{JobTableName(prefix + "0"), JobTableName(prefix + "2")}));
  EXPECT_EQ((*service)->live_jobs(), 2u);

  ASSERT_TRUE((*network)->Teardown());
  service->reset();
  EXPECT_TRUE(job_tables().empty()) << testing::ShellOutput("nft list tables");
}

// Without upstream_dns the service forwards to the first "nameserver" line of
// /etc/resolv.conf (as a launcher does), whatever comes before it and
// however it is spaced; a file that names none is refused by name. Started
// on a thread of its own that sees its own /etc/resolv.conf.
TEST_F(NetEscapeTest, UpstreamIsTheFirstNameserverOfResolvConf) {
  auto start_with = [](const std::string& resolv) -> Result<std::unique_ptr<NetworkService>> {
    std::unique_ptr<NetworkService> service;
    std::optional<Error> error;
    std::thread([&] {
      std::string file = fmt::format("/tmp/ralph-resolv-{}.conf", ::getpid());
      auto fail = [&](const char* step) {
        error = Error::FromErrno(fmt::format("test setup: {}", step), errno);
      };
      FILE* out = std::fopen(file.c_str(), "w");
      if (!out) return fail("fopen");
      std::fputs(resolv.c_str(), out);
      std::fclose(out);
      if (::unshare(CLONE_NEWNS) != 0) return fail("unshare");
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return fail("private");
      if (::mount(file.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0)
        return fail("bind");
      NetworkServiceConfig config;
      config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
      auto started = NetworkService::Start(config);
      if (started) {
        service = std::move(*started);
      } else {
        error = std::move(started).error();
      }
      ::unlink(file.c_str());
    }).join();
    if (error) return std::move(*error);
    return service;
  };
  auto service = start_with(
      "# written by hand\nsearch example.test\noptions ndots:1\n"
      "  nameserver\t198.51.100.53  \nnameserver 192.0.2.99\n");
  ASSERT_TRUE(service) << service.error().ToString();
  NetworkSpec named;
  named.allowed_domains = {"*.allowed.test"};
  RecordingSink sink;
  JobProcess job = JobProcess::Fork([](const JobContext& context) {
    return ProbeResolve(context.resolver_v4, "api.allowed.test", LDNS_RR_TYPE_A);
  });
  auto network = (*service)->CreateJob("resolv-conf", job.pid(), named, &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "rcode:NOERROR A 203.0.113.10");
  ASSERT_TRUE((*network)->Teardown());
  service->reset();

  auto refused =
      start_with("search example.test\n#nameserver 198.51.100.53\nnameservers 1.2.3.4\n");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(refused.error().message(),
            "upstream_dns is empty and /etc/resolv.conf names no nameserver");
}

// Both ends of a job's veth carry only the addresses the service gave them:
// no IPv6 link-local one (whose duplicate detection, router solicitations
// and MLD reports would run at every start), and IPv6 still works.
TEST_F(NetEscapeTest, VethEndsHaveNoIpv6LinkLocalAddress) {
  RecordingSink sink;
  JobProcess job = JobProcess::Fork([](const JobContext&) {
    std::string own = testing::ShellOutput("ip -6 addr show dev eth0 2>&1");
    return std::string(own.find("fe80:") == std::string::npos ? "no-link-local" : own) + "|" +
           ProbeConnect("2001:db8:1::10", 80);
  });
  auto network = service_->CreateJob("no-link-local", job.pid(), WebOnly(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  std::string host = testing::ShellOutput(
      fmt::format("ip -6 addr show dev {} 2>&1", (*network)->host_interface()));
  EXPECT_EQ(host.find("fe80:"), std::string::npos) << host;
  EXPECT_NE(host.find((*network)->resolver_address_v6()), std::string::npos) << host;
  EXPECT_EQ(job.Go({(*network)->resolver_address(), (*network)->resolver_address_v6()}),
            "no-link-local|connected:hello");
  ASSERT_TRUE((*network)->Teardown());
}

// report_events = false (the launcher's mode): no NFLOG listener thread
// and no log statement in the job's table, and the same packets pass and
// are dropped.
TEST_F(NetEscapeTest, WithoutEventsTheSamePacketsPassAndNothingIsLogged) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;
  config.report_events = false;
  size_t before = ThreadCount();
  auto service = NetworkService::Start(config);
  ASSERT_TRUE(service) << service.error().ToString();
  EXPECT_EQ(ThreadCount(), before);
  RecordingSink sink;
  JobProcess job = JobProcess::Fork([](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("203.0.113.20", 80) + "|" +
           ProbeConnect("169.254.169.254", 80) + "|" + ProbeConnect("2001:db8:1::10", 80);
  });
  auto network = (*service)->CreateJob("quiet", job.pid(), WebOnly(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  std::string table = testing::ShellOutput(
      fmt::format("nft list table inet {} 2>&1", JobTableName((*network)->host_interface())));
  EXPECT_EQ(table.find(" log "), std::string::npos) << table;
  EXPECT_NE(table.find("drop"), std::string::npos) << table;
  EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}),
            "connected:hello|failed:timeout|failed:timeout|connected:hello");
  EXPECT_FALSE(world_->SawAny("tcp 203.0.113.20"));
  EXPECT_FALSE(world_->SawAny("tcp 169.254.169.254"));
  ASSERT_TRUE((*network)->Teardown());
  EXPECT_TRUE(sink.Dump().empty()) << sink.Dump();
}

// The DNS forwarder (a thread and its sockets) starts with the first job
// that names domains: a service whose jobs only reach addresses never
// starts it.
TEST_F(NetEscapeTest, TheDnsForwarderStartsWithTheFirstJobThatNamesDomains) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  size_t before = ThreadCount();
  auto service = NetworkService::Start(config);
  ASSERT_TRUE(service) << service.error().ToString();
  EXPECT_EQ(ThreadCount(), before + 1);  // the NFLOG listener

  RecordingSink sink;
  JobProcess web =
      JobProcess::Fork([](const JobContext&) { return ProbeConnect("203.0.113.10", 80); });
  auto web_network = (*service)->CreateJob("dns-none", web.pid(), WebOnly(), &sink);
  ASSERT_TRUE(web_network) << web_network.error().ToString();
  EXPECT_EQ(web.Go({(*web_network)->resolver_address(), ""}), "connected:hello");
  EXPECT_EQ(ThreadCount(), before + 1);

  NetworkSpec named;
  named.allowed_domains = {"*.allowed.test"};
  JobProcess resolver = JobProcess::Fork([](const JobContext& context) {
    return ProbeResolve(context.resolver_v4, "api.allowed.test", LDNS_RR_TYPE_A);
  });
  auto named_network = (*service)->CreateJob("dns-named", resolver.pid(), named, &sink);
  ASSERT_TRUE(named_network) << named_network.error().ToString();
  EXPECT_EQ(ThreadCount(), before + 2);
  EXPECT_EQ(resolver.Go({(*named_network)->resolver_address(), ""}),
            "rcode:NOERROR A 203.0.113.10");
  ASSERT_TRUE((*named_network)->Teardown());
  ASSERT_TRUE((*web_network)->Teardown());
}

TEST_F(NetEscapeTest, HostLoopbackAndOwnAddressesAreUnreachable) {
  // Host services: one on loopback, one on every address.
  int any = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int loopback = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ASSERT_GE(any, 0);
  ASSERT_GE(loopback, 0);
  int one = 1;
  setsockopt(any, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{.sin_family = AF_INET, .sin_port = htons(9997), .sin_addr = {INADDR_ANY}};
  ASSERT_EQ(bind(any, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  address.sin_port = htons(9999);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(loopback, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(any, 8), 0);
  ASSERT_EQ(listen(loopback, 8), 0);

  NetworkSpec spec = WebOnly();
  spec.allow.push_back({.cidr = "192.0.2.0/24"});  // the host's uplink net
  std::string gateway;
  std::string out = RunJob(spec, [](const JobContext& context) {
    return ProbeConnect(context.resolver_v4, 9997) + "|" + ProbeConnect("192.0.2.1", 9997) + "|" +
           ProbeConnect(context.resolver_v6, 9997) + "|" + ProbeConnect("127.0.0.1", 9999) + "|" +
           // The host's resolver port on an address that is not the job's gateway.
           ProbeResolve("192.0.2.1", "api.allowed.test", LDNS_RR_TYPE_A);
  });
  EXPECT_EQ(out,
            "failed:timeout|failed:timeout|failed:timeout|failed:connect Connection refused|"
            "failed:no answer");
  // Nothing reached either host service.
  EXPECT_LT(accept(any, nullptr, nullptr), 0);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_LT(accept(loopback, nullptr, nullptr), 0);
  EXPECT_EQ(errno, EAGAIN);
  close(any);
  close(loopback);
  std::string resolver = networks_.back()->resolver_address();
  EXPECT_TRUE(Denied(resolver, 9997, "host")) << sink_.Dump();
  EXPECT_TRUE(Denied("192.0.2.1", 9997, "host")) << sink_.Dump();
  EXPECT_TRUE(Denied(networks_.back()->resolver_address_v6(), 9997, "host")) << sink_.Dump();
  EXPECT_TRUE(Denied("192.0.2.1", 53, "host")) << sink_.Dump();
}

TEST_F(NetEscapeTest, DirectIpToNonAllowlistedAddressFails) {
  std::string out = RunJob(WebOnly(), [](const JobContext&) {
    return ProbeConnect("203.0.113.20", 80) + "|" + ProbeConnect("2001:db8:1::20", 80);
  });
  EXPECT_EQ(out, "failed:timeout|failed:timeout");
  EXPECT_FALSE(world_->SawAny("tcp 203.0.113.20"));
  EXPECT_FALSE(world_->SawAny("tcp 2001:db8:1::20"));
  EXPECT_TRUE(Denied("203.0.113.20", 80, "not-allowlisted")) << sink_.Dump();
  EXPECT_TRUE(Denied("2001:db8:1::20", 80, "not-allowlisted")) << sink_.Dump();
}

TEST_F(NetEscapeTest, AllowlistedAddressOnAnotherPortFails) {
  std::string out = RunJob(WebOnly(), [](const JobContext&) {
    return ProbeConnect("203.0.113.10", 8080) + "|" + ProbeConnect("203.0.113.10", 22) + "|" +
           ProbeConnect("2001:db8:1::10", 443);
  });
  EXPECT_EQ(out, "failed:timeout|failed:timeout|failed:timeout");
  EXPECT_FALSE(world_->SawAny("tcp 203.0.113.10 8080"));
  EXPECT_FALSE(world_->SawAny("tcp 203.0.113.10 22"));
  EXPECT_FALSE(world_->SawAny("tcp 2001:db8:1::10 443"));
  EXPECT_TRUE(Denied("203.0.113.10", 8080, "not-allowlisted")) << sink_.Dump();
  EXPECT_TRUE(Denied("2001:db8:1::10", 443, "not-allowlisted")) << sink_.Dump();
}

TEST_F(NetEscapeTest, DnsForNonAllowlistedNameIsRefusedAndNotForwarded) {
  NetworkSpec spec;
  spec.allowed_domains = {"*.allowed.test"};
  std::string out = RunJob(spec, [](const JobContext& context) {
    return ProbeResolve(context.resolver_v4, "evil.test", LDNS_RR_TYPE_A) + "|" +
           ProbeResolve(context.resolver_v4, "allowed.test", LDNS_RR_TYPE_A) + "|" +
           ProbeResolve(context.resolver_v6, "evil.test", LDNS_RR_TYPE_AAAA, /*tcp=*/true) + "|" +
           // Around the forwarder: straight to the upstream server.
           ProbeResolve("198.51.100.53", "evil.test", LDNS_RR_TYPE_A);
  });
  EXPECT_EQ(out, "rcode:REFUSED|rcode:REFUSED|rcode:REFUSED|failed:no answer");
  EXPECT_FALSE(world_->SawAny("evil.test"));
  EXPECT_FALSE(world_->SawAny("dns allowed.test."));
  EXPECT_TRUE(Denied("evil.test", 53, "dns: name not allowed")) << sink_.Dump();
  EXPECT_TRUE(Denied("198.51.100.53", 53, "not-allowlisted")) << sink_.Dump();
}

TEST_F(NetEscapeTest, DnsTunnellingThroughTheResolverFails) {
  NetworkSpec spec;
  spec.allowed_domains = {"*.allowed.test"};
  // 63-byte labels of base32-looking data, the shape iodine/dnscat use.
  std::string chunk = "mzxw6ytboi2dkmzuge3tmnzyhe4tamjsgm2dknrxha4tcmbrgiztinjwg44dsmbr";
  chunk.resize(63);
  std::string name = chunk + "." + chunk + "." + chunk + ".t.exfil.test";
  std::string out = RunJob(spec, [name](const JobContext& context) {
    std::string result;
    for (int type : {LDNS_RR_TYPE_TXT, LDNS_RR_TYPE_A, LDNS_RR_TYPE_NULL}) {
      result += ProbeResolve(context.resolver_v4, name, type) + "|";
    }
    result += ProbeResolve(context.resolver_v4, name, LDNS_RR_TYPE_TXT, /*tcp=*/true);
    return result;
  });
  EXPECT_EQ(out, "rcode:REFUSED|rcode:REFUSED|rcode:REFUSED|rcode:REFUSED");
  EXPECT_FALSE(world_->SawAny("exfil"));
  EXPECT_FALSE(world_->SawAny(chunk));
  EXPECT_TRUE(Denied(name, 53, "dns: name not allowed")) << sink_.Dump();
}

TEST_F(NetEscapeTest, AnsweredAddressInABlockedRangeStaysBlocked) {
  NetworkSpec spec;
  spec.allowed_domains = {"meta.allowed.test"};
  spec.domain_ports = {80};
  std::string out = RunJob(spec, [](const JobContext& context) {
    return ProbeResolve(context.resolver_v4, "meta.allowed.test", LDNS_RR_TYPE_A) + "|" +
           ProbeConnect("169.254.169.254", 80);
  });
  EXPECT_EQ(out, "rcode:NOERROR A 169.254.169.254|failed:timeout")
      << sink_.Dump() << fmt::format("{}", fmt::join(world_->Log(), "\n"));
  EXPECT_FALSE(world_->SawAny("tcp 169.254.169.254"));
  EXPECT_TRUE(Denied("169.254.169.254", 80, "metadata")) << sink_.Dump();
}

TEST_F(NetEscapeTest, RawIcmpIsDropped) {
  std::string out = RunJob(WebOnly(), [](const JobContext&) {
    return ProbePing("203.0.113.10") + "|" + ProbePing("2001:db8:1::10") + "|" +
           ProbePing("169.254.169.254");
  });
  EXPECT_EQ(out, "no-reply|no-reply|no-reply");
  EXPECT_TRUE(sink_.WaitFor([](const NetEvent& e) {
    return e.verdict == NetVerdict::kDenied && e.destination == "203.0.113.10" &&
           e.protocol == Protocol::kAny && e.reason == "not-allowlisted";
  })) << sink_.Dump();
  EXPECT_TRUE(Denied("169.254.169.254", 0, "metadata")) << sink_.Dump();
}

TEST_F(NetEscapeTest, EventFloodIsRateLimited) {
  // Every datagram to a blocked address is a new denied attempt; a job
  // flooding them must not flood the event sink (the audit log).
  uint64_t suppressed_before = service_->suppressed_events();
  std::string out = RunJob(
      WebOnly(), [](const JobContext&) { return ProbeUdpFlood("169.254.169.254", 9, 3000); });
  EXPECT_EQ(out, "sent 3000");
  EXPECT_FALSE(world_->SawAny("169.254.169.254"));
  EXPECT_TRUE(Denied("169.254.169.254", 9, "metadata")) << sink_.Dump();
  // Teardown reports what the limit held back: wait until it holds some.
  EXPECT_TRUE(Eventually([&] { return service_->suppressed_events() > suppressed_before; }));
  ASSERT_TRUE(networks_.back()->Teardown());
  size_t delivered = 0;
  bool summary = false;
  for (const NetEvent& event : sink_.events()) {
    if (event.reason == "metadata") ++delivered;
    if (event.reason.rfind("rate-limited: ", 0) == 0) summary = true;
  }
  // The 3000 datagrams leave within a window or two of 200 events each.
  EXPECT_GE(delivered, 1u);
  EXPECT_LE(delivered, 400u);
  EXPECT_TRUE(summary) << "delivered " << delivered;

  // The same for the resolver: garbage datagrams are denied DNS events.
  RecordingSink dns_sink;
  NetworkSpec spec;
  spec.allowed_domains = {"*.allowed.test"};
  JobProcess job = JobProcess::Fork(
      [](const JobContext& context) { return ProbeUdpFlood(context.resolver_v4, 53, 3000); });
  auto network = service_->CreateJob("dns-flood", job.pid(), spec, &dns_sink);
  ASSERT_TRUE(network) << network.error().ToString();
  suppressed_before = service_->suppressed_events();
  EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "sent 3000");
  EXPECT_TRUE(Eventually([&] { return service_->suppressed_events() > suppressed_before; }));
  ASSERT_TRUE((*network)->Teardown());
  size_t malformed = 0;
  summary = false;
  for (const NetEvent& event : dns_sink.events()) {
    if (event.reason == "dns: malformed query") ++malformed;
    if (event.reason.rfind("rate-limited: ", 0) == 0) summary = true;
  }
  EXPECT_GE(malformed, 1u);
  EXPECT_LE(malformed, 400u);
  EXPECT_TRUE(summary) << "delivered " << malformed;
}

TEST_F(NetEscapeTest, IcmpIsAllowedWhereTheRuleSaysAnyProtocol) {
  // The negative above is not vacuous: with an any-protocol rule ping works.
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.10", .protocol = Protocol::kAny}};
  std::string out = RunJob(spec, [](const JobContext&) { return ProbePing("203.0.113.10"); });
  EXPECT_EQ(out, "reply");
}

TEST_F(NetEscapeTest, DisabledNetworkHasOnlyLoopback) {
  NetworkSpec spec;
  spec.enabled = false;
  testing::ResourceCounts before = testing::CountResources();
  std::string out = RunJob(spec, [](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("127.0.0.1", 1);
  });
  EXPECT_EQ(out, "failed:connect Network is unreachable|failed:connect Connection refused");
  EXPECT_EQ(networks_.back()->host_interface(), "");
  EXPECT_EQ(testing::CountResources().interfaces, before.interfaces);
}

// ---- teardown and failures -------------------------------------------------

// LinkRemoval::kBackground (what ralphd's service uses): Teardown() returns
// before the veth and the table are gone; no event reaches the sink after
// it; WaitForRemovals() and the service's destructor leave nothing.
TEST_F(NetEscapeTest, BackgroundRemovalLeavesNothingOnceDone) {
  testing::ResourceCounts before = testing::CountResources();
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.nflog_group = kNflogGroup;  // the suite's service holds this one: the next is used
  config.link_removal = LinkRemoval::kBackground;
  auto background = NetworkService::Start(config);
  ASSERT_TRUE(background) << background.error().ToString();
  std::string prefix = (*background)->interface_prefix();
  auto own_links = [&] {
    return testing::ShellOutput(
        fmt::format("ip -o link show type veth | grep -c ' {}[0-9]*@' || true", prefix));
  };
  auto own_tables = [&] {
    return testing::ShellOutput(
        fmt::format("nft list tables | grep -c 'inet ralph_{}[0-9]' || true", prefix));
  };
  RecordingSink sink;
  for (int round = 0; round < 2; ++round) {
    std::vector<JobProcess> jobs;
    std::vector<std::unique_ptr<JobNetwork>> networks;
    for (int i = 0; i < 3; ++i) {
      jobs.push_back(
          JobProcess::Fork([](const JobContext&) { return ProbeConnect("203.0.113.10", 80); }));
      auto network =
          (*background)
              ->CreateJob(fmt::format("bg-{}-{}", round, i), jobs.back().pid(), WebOnly(), &sink);
      ASSERT_TRUE(network) << network.error().ToString();
      networks.push_back(std::move(*network));
    }
    EXPECT_EQ(own_links(), "3\n");
    EXPECT_EQ(own_tables(), "3\n");
    // Job 0 has run and exited, the others are torn down while they live.
    EXPECT_EQ(jobs[0].Go({networks[0]->resolver_address(), ""}), "connected:hello");
    for (auto& network : networks) ASSERT_TRUE(network->Teardown());
    size_t events = sink.events().size();
    for (size_t i = 1; i < jobs.size(); ++i) jobs[i].Kill();
    if (round == 0) {
      ASSERT_TRUE((*background)->WaitForRemovals());
      EXPECT_EQ((*background)->live_jobs(), 0u);
      EXPECT_EQ(own_links(), "0\n");
      EXPECT_EQ(own_tables(), "0\n");
    }
    // Round 1: the destructor waits for the queued removals.
    if (round == 1) background->reset();
    EXPECT_EQ(sink.events().size(), events) << "an event after Teardown()";
  }
  EXPECT_EQ(own_links(), "0\n");
  EXPECT_EQ(own_tables(), "0\n");
  testing::ResourceCounts after = testing::CountResources();
  EXPECT_EQ(after, before) << "before: " << ToString(before) << "\nafter:  " << ToString(after);
}

TEST_F(NetEscapeTest, TeardownLeavesNothingBehind) {
  testing::ResourceCounts before = testing::CountResources();
  NetworkSpec spec = WebOnly();
  spec.allowed_domains = {"*.allowed.test"};
  for (int i = 0; i < 5; ++i) {
    // Alternate: job exits before teardown / teardown while the job lives.
    JobProcess job = JobProcess::Fork([](const JobContext& context) {
      return ProbeResolve(context.resolver_v4, "api.allowed.test", LDNS_RR_TYPE_A);
    });
    auto network = service_->CreateJob(fmt::format("leak-{}", i), job.pid(), spec, &sink_);
    ASSERT_TRUE(network) << network.error().ToString();
    EXPECT_NE(testing::CountResources(), before);
    if (i % 2 == 0) {
      EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "rcode:NOERROR A 203.0.113.10");
      ASSERT_TRUE((*network)->Teardown());
    } else {
      ASSERT_TRUE((*network)->Teardown());
      job.Kill();
    }
    EXPECT_TRUE((*network)->Teardown());  // idempotent
  }
  EXPECT_EQ(service_->live_jobs(), 0u);
  testing::ResourceCounts after = testing::CountResources();
  EXPECT_EQ(after, before) << "before: " << ToString(before) << "\nafter:  " << ToString(after);
  EXPECT_EQ(after.foreign_netns_refs, 0);
  EXPECT_EQ(testing::ShellOutput("ip -o link show type veth | grep -c ' rj' || true"), "0\n");
}

// NftSocket::TableMatches reads a table back from the kernel and compares it
// with the objects ApplyTablePlan sends: a table just committed from a plan
// matches that plan (for every shape of plan the service makes), and not
// another; any change made behind the committer's back does not match.
TEST_F(NetEscapeTest, ReadBackMatchesOnlyTheCommittedPlan) {
  auto nft = NftSocket::Open();
  ASSERT_TRUE(nft) << nft.error().ToString();
  JobAddressing addressing{.host_ifname = "rjz7",
                           .host_v4 = *IpPrefix::Parse("10.254.255.1"),
                           .job_v4 = *IpPrefix::Parse("10.254.255.2"),
                           .host_v6 = *IpPrefix::Parse("fd52:616c:7068:ff::1"),
                           .job_v6 = *IpPrefix::Parse("fd52:616c:7068:ff::2")};
  NetworkSpec any_protocol{
      .allow = {{.cidr = "203.0.113.0/24", .protocol = Protocol::kAny},
                {.cidr = "2001:db8::/32", .port_min = 1000, .port_max = 2000}}};
  NetworkSpec named{.allowed_domains = {"*.allowed.test"}};
  std::vector<NftTablePlan> plans;
  for (const NetworkSpec& spec : {NetworkSpec{}, WebOnly(), any_protocol, named}) {
    auto plan = PlanJobTable(addressing, spec, kNflogGroup);
    ASSERT_TRUE(plan) << plan.error().ToString();
    plans.push_back(*plan);
    plans.push_back(WithoutLogging(*plan));
  }
  const std::string table = JobTableName("rjz7");
  auto commit = [&](const NftTablePlan& plan) {
    ASSERT_EQ(testing::Shell("nft delete table inet " + table + " 2>/dev/null; true"), 0);
    ASSERT_TRUE((*nft)->ApplyTablePlan(plan, TableOwner::kNone, ExistingTable::kFail));
  };
  auto matches = [&](const NftTablePlan& plan) {
    auto same = (*nft)->TableMatches(plan);
    EXPECT_TRUE(same) << same.error().ToString();
    return same && *same;
  };
  for (size_t i = 0; i < plans.size(); ++i) {
    commit(plans[i]);
    EXPECT_TRUE(matches(plans[i])) << i << "\n" << RenderNft(plans[i]);
    EXPECT_FALSE(matches(plans[(i + 1) % plans.size()])) << i;
  }
  // Behind the committer's back, each change alone.
  const NftTablePlan& web = plans[2];
  for (const char* change :
       {"flush chain inet {0} egress", "add rule inet {0} egress accept",
        "insert rule inet {0} host_in accept", "add chain inet {0} extra",
        "add table inet {0} {{ flags dormant; }}", "add set inet {0} extra {{ type ipv4_addr; }}",
        "chain inet {0} forward {{ policy drop; }}", "delete chain inet {0} ingress"}) {
    commit(web);
    ASSERT_TRUE(matches(web));
    std::string command = fmt::format(fmt::runtime(change), table);
    int status = testing::Shell("nft '" + command + "' 2>&1");
    if (status != 0) {
      // Chains referenced by a jump cannot be deleted: then flush it first.
      ASSERT_EQ(testing::Shell(
                    fmt::format("nft flush chain inet {} forward && nft '{}'", table, command)),
                0)
          << command;
    }
    EXPECT_FALSE(matches(web)) << command;
  }
  // A rule's expression changed in place: the same shape, another port.
  commit(web);
  NftTablePlan other_port = web;
  for (NftChain& chain : other_port.chains) {
    for (NftRule& rule : chain.rules) {
      if (rule.dport_min == 80) rule.dport_min = rule.dport_max = 81;
    }
  }
  EXPECT_FALSE(matches(other_port));
  ASSERT_EQ(testing::Shell("nft delete table inet " + table), 0);
  EXPECT_FALSE(matches(web));
}

TEST_F(NetEscapeTest, FailuresMidCreateLeaveNothingBehind) {
  testing::ResourceCounts before = testing::CountResources();

  // A malformed rule: refused before anything is made.
  {
    JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
    NetworkSpec spec;
    spec.allow = {{.cidr = "203.0.113.0/33"}};
    auto network = service_->CreateJob("bad-rule", job.pid(), spec, &sink_);
    ASSERT_FALSE(network);
    EXPECT_EQ(network.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(network.error().message(),
              "network of job bad-rule: allow[0]: \"203.0.113.0/33\": prefix length must be "
              "0..32");
  }
  // A bad domain pattern.
  {
    JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
    NetworkSpec spec;
    spec.allowed_domains = {"*"};
    auto network = service_->CreateJob("bad-domain", job.pid(), spec, &sink_);
    ASSERT_FALSE(network);
    EXPECT_EQ(network.error().code(), ErrorCode::kInvalidArgument);
  }
  // A job that is already gone.
  {
    JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
    pid_t pid = job.pid();
    job.Kill();
    auto network = service_->CreateJob("gone", pid, WebOnly(), &sink_);
    ASSERT_FALSE(network);
    EXPECT_EQ(network.error().code(), ErrorCode::kNotFound);
  }
  // The nft commit fails after the veth exists (a table of that name, owned
  // by another live netlink socket, is in the way): the veth must go, the
  // foreign table must stay.
  {
    // Slot 0 of this service's instance: "rja0" (instance 0, the only one).
    std::string table = fmt::format("ralph_{}0", service_->interface_prefix());
    auto other = NftSocket::Open();
    ASSERT_TRUE(other) << other.error().ToString();
    NftTablePlan foreign;
    foreign.name = table;
    ASSERT_TRUE((*other)->ApplyTablePlan(foreign, TableOwner::kThisSocket, ExistingTable::kFail));
    JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
    auto network = service_->CreateJob("nft-fails", job.pid(), WebOnly(), &sink_);
    ASSERT_FALSE(network);
    EXPECT_EQ(network.error().code(), ErrorCode::kAlreadyExists);
    EXPECT_NE(
        network.error().message().find(fmt::format(
            "nft table inet {} exists and is owned by the live netlink socket with port id {}",
            table, (*other)->portid())),
        std::string::npos)
        << network.error().message();
    EXPECT_EQ(testing::CountResources().interfaces, before.interfaces);
    EXPECT_NE(testing::ShellOutput("nft list tables").find("table inet " + table),
              std::string::npos);
    // Closing its socket deletes an owned table (nothing else does).
    other->reset();
    EXPECT_EQ(testing::ShellOutput("nft list tables").find("table inet " + table),
              std::string::npos);
  }
  // The DNS listener cannot bind (port taken), the last step: veth and
  // table must both go.
  {
    int blocker = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(blocker, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
    sockaddr_in address{.sin_family = AF_INET, .sin_port = htons(53), .sin_addr = {}};
    inet_pton(AF_INET, "10.254.0.1", &address.sin_addr);  // slot 0's resolver
    ASSERT_EQ(bind(blocker, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
    NetworkSpec spec = WebOnly();
    spec.allowed_domains = {"*.allowed.test"};
    auto network = service_->CreateJob("dns-fails", job.pid(), spec, &sink_);
    close(blocker);
    ASSERT_FALSE(network);
    EXPECT_EQ(network.error().sys_errno(), EADDRINUSE);
    EXPECT_NE(network.error().message().find(
                  "DNS UDP listener on 10.254.0.1: bind: Address already in use"),
              std::string::npos)
        << network.error().message();
  }
  EXPECT_EQ(service_->live_jobs(), 0u);
  testing::ResourceCounts after = testing::CountResources();
  EXPECT_EQ(after, before) << "before: " << ToString(before) << "\nafter:  " << ToString(after);

  // And the service still works afterwards, on the slot that failed.
  std::string out =
      RunJob(WebOnly(), [](const JobContext&) { return ProbeConnect("203.0.113.10", 80); });
  EXPECT_EQ(out, "connected:hello");
}

// A stale unowned table with the name of the job's slot (what a killed
// service leaves on a kernel without table ownership, or an older version
// of this code) does not block the job: it is replaced in the job's own
// transaction, and the job is confined as usual.
TEST_F(NetEscapeTest, StaleUnownedTableOfTheSlotIsReplaced) {
  EXPECT_TRUE(service_->tables_owned()) << "this kernel (6.18) has NFT_TABLE_F_OWNER";
  std::string table = fmt::format("ralph_{}0", service_->interface_prefix());
  ASSERT_EQ(testing::Shell("nft add table inet " + table), 0);
  std::string out = RunJob(WebOnly(), [](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("203.0.113.20", 80);
  });
  EXPECT_EQ(out, "connected:hello|failed:timeout");
  ASSERT_EQ(networks_.size(), 1u);
  EXPECT_EQ(networks_[0]->host_interface(), fmt::format("{}0", service_->interface_prefix()));
  // It is the job's table now: owned by the service (nobody else may delete
  // it) and holding the job's chains.
  EXPECT_NE(testing::Shell("nft delete table inet " + table + " 2>/dev/null"), 0);
  EXPECT_NE(testing::ShellOutput("nft list table inet " + table).find("chain egress"),
            std::string::npos);
  ASSERT_TRUE(networks_[0]->Teardown());
  networks_.clear();
  EXPECT_EQ(testing::ShellOutput("nft list tables").find("table inet " + table), std::string::npos);
}

TEST_F(NetEscapeTest, HundredJobsAliveAtOnceThenNothingLeaks) {
  testing::ResourceCounts before = testing::CountResources();
  constexpr int kJobs = 100;
  NetworkSpec spec = WebOnly();
  spec.allowed_domains = {"*.allowed.test"};
  std::vector<JobProcess> jobs;
  std::vector<std::unique_ptr<JobNetwork>> networks;
  std::set<std::string> addresses;
  for (int i = 0; i < kJobs; ++i) {
    jobs.push_back(JobProcess::Fork([](const JobContext&) {
      return ProbeConnect("203.0.113.10", 80) + "|" + ProbeConnect("203.0.113.20", 80);
    }));
    auto network = service_->CreateJob(fmt::format("many-{}", i), jobs.back().pid(), spec, &sink_);
    ASSERT_TRUE(network) << i << ": " << network.error().ToString();
    addresses.insert((*network)->job_address_v4());
    addresses.insert((*network)->job_address_v6());
    networks.push_back(std::move(*network));
  }
  EXPECT_EQ(addresses.size(), 2u * kJobs);
  EXPECT_EQ(service_->live_jobs(), static_cast<size_t>(kJobs));
  EXPECT_EQ(testing::CountResources().interfaces, before.interfaces + kJobs);
  EXPECT_EQ(testing::CountResources().nft_tables, before.nft_tables + kJobs);
  // The first, a middle and the last job all still work and are confined.
  for (int i : {0, kJobs / 2, kJobs - 1}) {
    EXPECT_EQ(
        jobs[static_cast<size_t>(i)].Go({networks[static_cast<size_t>(i)]->resolver_address(), ""}),
        "connected:hello|failed:timeout")
        << i;
  }
  for (auto& network : networks) ASSERT_TRUE(network->Teardown());
  jobs.clear();  // kills the rest
  networks.clear();
  EXPECT_EQ(service_->live_jobs(), 0u);
  testing::ResourceCounts after = testing::CountResources();
  EXPECT_EQ(after, before) << "before: " << ToString(before) << "\nafter:  " << ToString(after);
}

TEST_F(NetEscapeTest, ConcurrentJobsGetUniqueAddressesAndCannotReachEachOther) {
  NetworkSpec spec = WebOnly();
  JobProcess first = JobProcess::Fork([](const JobContext&) { return std::string("idle"); });
  auto a = service_->CreateJob("a", first.pid(), spec, &sink_);
  ASSERT_TRUE(a) << a.error().ToString();
  std::string a_address = (*a)->job_address_v4();
  std::string a_gateway = (*a)->resolver_address();
  std::string out = RunJob(spec, [a_address, a_gateway](const JobContext&) {
    return ProbePing(a_address) + "|" + ProbeConnect(a_gateway, 53);
  });
  EXPECT_NE(networks_.back()->job_address_v4(), a_address);
  EXPECT_NE(networks_.back()->job_address_v6(), (*a)->job_address_v6());
  EXPECT_EQ(out, "no-reply|failed:timeout");
  EXPECT_TRUE(Denied(a_address, 0, "rfc1918")) << sink_.Dump();
  EXPECT_TRUE(Denied(a_gateway, 53, "host")) << sink_.Dump();
  EXPECT_TRUE((*a)->Teardown());
}

}  // namespace
}  // namespace ralph::sandbox
