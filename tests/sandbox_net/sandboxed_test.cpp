// The network escapes through real sandboxes: SandboxService (user, pid,
// mount, net namespaces; seccomp; no capabilities; overlay rootfs) runs
// sandbox_net_probe inside, networked by the service's own NetworkService exactly as in
// production. Same private test network as escape_test.cpp (test_topology.h).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/arch.h"
#include "private_netns_environment.h"
#include "sandbox/net/network_service.h"
#include "sandbox/service.h"
#include "test_topology.h"

namespace ralph::sandbox {
namespace {

using testing::RecordingSink;
using testing::World;

const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new testing::PrivateNetnsEnvironment);

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

class SandboxedNetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    world_ = World::Start();
    config_.upstream_dns = "198.51.100.53";
    config_.nflog_group = 7772;
  }
  static void TearDownTestSuite() {
    delete world_;
    world_ = nullptr;
  }

  void SetUp() override {
    ASSERT_EQ(::access("/usr/sbin/mkfs.ext4", X_OK), 0) << "mkfs.ext4 missing (e2fsprogs)";
    world_->ClearLog();
    work_ = fmt::format("/tmp/ralph-sandbox-net-test-{}", ::getpid());
    base_ = work_ + "/base";
    for (const std::string& dir : {work_, base_, base_ + "/usr", base_ + "/etc"}) {
      ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir;
    }
    for (const char* link : {"bin", "lib", "lib64", "sbin"}) {
      ASSERT_EQ(::symlink(fmt::format("usr/{}", link).c_str(), (base_ + "/" + link).c_str()), 0);
    }
    auto cgroups = DetectCgroups(fmt::format("ralph-net-test-{}", ::getpid()));
    ASSERT_TRUE(cgroups) << cgroups.error().ToString();
    ServiceOptions options;
    options.state_dir = work_ + "/state";
    options.name = fmt::format("nt{}", ::getpid());
    options.ids = {(1u << 24) + (static_cast<uint32_t>(::getpid()) % 4096u) * 65536u, 65536};
    options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
    auto service =
        SandboxService::Create(options, std::move(*cgroups), MakeNetworkProvider(config_, &sink_));
    ASSERT_TRUE(service) << service.error().ToString();
    service_ = std::move(*service);
  }

  void TearDown() override {
    service_.reset();
    ASSERT_EQ(std::system(("rm -rf " + work_).c_str()), 0);
  }

  // Runs `script` with /bin/sh in a sandbox networked with `network`.
  std::vector<std::string> Run(const NetworkSpec& network, const std::string& script) {
    SandboxSpec spec;
    spec.base = base_;
    spec.binds = {{"/usr", "/usr", BindAccess::kReadOnly},
                  {RALPH_NET_PROBE_DIR, "/probe", BindAccess::kReadOnly}};
    spec.argv = {"/bin/sh", "-c", "P=/probe/sandbox_net_probe; R=$($P resolver); " + script};
    spec.env = {"PATH=/usr/bin:/bin"};
    spec.network = network;
    spec.timeout = std::chrono::seconds(120);
    auto id = service_->CreateJob(spec);
    if (!id) {
      ADD_FAILURE() << id.error().ToString();
      return {};
    }
    auto run = service_->Run(*id);
    EXPECT_TRUE(run) << run.error().ToString();
    auto result = service_->Wait(*id);
    EXPECT_TRUE(result) << result.error().ToString();
    auto destroyed = service_->Destroy(*id);
    EXPECT_TRUE(destroyed) << destroyed.error().ToString();
    if (!result) return {};
    EXPECT_EQ(result->exit_code, 0) << result->stderr_data;
    return Lines(result->stdout_data);
  }

  bool Denied(const std::string& destination, uint16_t port, const std::string& reason) {
    return sink_.WaitFor([&](const NetEvent& e) {
      return e.verdict == NetVerdict::kDenied && e.destination == destination && e.port == port &&
             e.reason == reason;
    });
  }

  static World* world_;
  static inline NetworkServiceConfig config_;
  RecordingSink sink_;
  std::string work_, base_;
  std::unique_ptr<SandboxService> service_;
};

World* SandboxedNetTest::world_ = nullptr;

TEST_F(SandboxedNetTest, EscapesFailAndAllowlistedNameWorks) {
  // A host service on every address, for the host-reachability case.
  int host_service = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(host_service, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in any{.sin_family = AF_INET, .sin_port = htons(9997), .sin_addr = {INADDR_ANY}};
  ASSERT_EQ(bind(host_service, reinterpret_cast<sockaddr*>(&any), sizeof(any)), 0);
  ASSERT_EQ(listen(host_service, 8), 0);
  testing::ResourceCounts before = testing::CountResources();

  NetworkSpec network;
  network.allowed_domains = {"*.allowed.test"};
  network.domain_ports = {80};
  std::string tunnel = std::string(63, 'a') + "." + std::string(63, 'b') + ".t.exfil.test";
  std::vector<std::string> out = Run(network,
                                     "$P connect 169.254.169.254 80; "
                                     "$P connect fd00:ec2::254 80; "
                                     "$P connect 10.9.9.9 80; "
                                     "$P connect 203.0.113.20 80; "
                                     "$P connect $R 9997; "
                                     "$P connect 192.0.2.1 9997; "
                                     "$P resolve $R evil.test 1; "
                                     "$P resolve $R " +
                                         tunnel +
                                         " 16; "
                                         "$P resolve 198.51.100.53 evil.test 1; "
                                         "$P ping 203.0.113.10; "
                                         "$P connect 203.0.113.10 80; "
                                         "$P resolve $R api.allowed.test 1; "
                                         "$P connect 203.0.113.10 80; "
                                         "$P connect 203.0.113.10 8080");
  ASSERT_EQ(out.size(), 14u) << fmt::format("{}", fmt::join(out, "\n"));
  EXPECT_EQ(out[0], "failed:timeout");  // metadata
  EXPECT_EQ(out[1], "failed:timeout");  // metadata over IPv6
  EXPECT_EQ(out[2], "failed:timeout");  // RFC 1918
  EXPECT_EQ(out[3], "failed:timeout");  // direct IP, not allowlisted
  EXPECT_EQ(out[4], "failed:timeout");  // the host, via its gateway address
  EXPECT_EQ(out[5], "failed:timeout");  // the host, via its uplink address
  EXPECT_EQ(out[6], "rcode:REFUSED");
  EXPECT_EQ(out[7], "rcode:REFUSED");     // tunnelling
  EXPECT_EQ(out[8], "failed:no answer");  // around the resolver
  EXPECT_NE(out[9], "reply");             // raw ICMP: no capability, and dropped anyway
  EXPECT_EQ(out[10], "failed:timeout");   // not resolved yet: not open
  EXPECT_EQ(out[11], "rcode:NOERROR A 203.0.113.10");
  EXPECT_EQ(out[12], "connected:hello");
  EXPECT_EQ(out[13], "failed:timeout");  // the opened address, another port

  // The test hosts saw nothing but the allowed connection and query.
  std::vector<std::string> seen = world_->Log();
  EXPECT_EQ(seen.size(), 2u) << fmt::format("{}", fmt::join(seen, "\n"));
  EXPECT_TRUE(world_->SawAny("dns api.allowed.test. 1"));
  EXPECT_TRUE(world_->SawAny("tcp 203.0.113.10 80 from 192.0.2.1"));
  EXPECT_LT(accept(host_service, nullptr, nullptr), 0);
  close(host_service);

  EXPECT_TRUE(Denied("169.254.169.254", 80, "metadata")) << sink_.Dump();
  EXPECT_TRUE(Denied("fd00:ec2::254", 80, "metadata")) << sink_.Dump();
  EXPECT_TRUE(Denied("10.9.9.9", 80, "rfc1918")) << sink_.Dump();
  EXPECT_TRUE(Denied("203.0.113.20", 80, "not-allowlisted")) << sink_.Dump();
  EXPECT_TRUE(Denied("192.0.2.1", 9997, "host")) << sink_.Dump();
  EXPECT_TRUE(Denied("evil.test", 53, "dns: name not allowed")) << sink_.Dump();
  EXPECT_TRUE(Denied(tunnel, 53, "dns: name not allowed")) << sink_.Dump();
  EXPECT_TRUE(sink_.WaitFor([](const NetEvent& e) {
    return e.verdict == NetVerdict::kAllowed && e.destination == "203.0.113.10" &&
           e.reason == "dns-allowlist";
  })) << sink_.Dump();

  // Destroy removed the job's veth and table.
  testing::ResourceCounts after = testing::CountResources();
  EXPECT_EQ(after.interfaces, before.interfaces);
  EXPECT_EQ(after.foreign_netns_refs, 0);
}

#ifdef RALPH_SANDBOX_CLI
// `ralph-sandbox run --events` prints the job's connection attempts, allowed
// and denied; without it the launcher collects none, and the same packets
// pass and are dropped.
TEST_F(SandboxedNetTest, LauncherPrintsConnectionEventsOnlyWithEvents) {
  std::string state = work_ + "/launcher-state";
  std::string err_file = work_ + "/launcher.err";
  auto launch = [&](const std::string& flag) {
    std::string out = testing::ShellOutput(fmt::format(
        "{} run {} --allow 203.0.113.10:80 --rootfs {} --ro-bind /usr:/usr --ro-bind {}:/probe "
        "--state-dir {} -- /bin/sh -c 'P=/probe/sandbox_net_probe; $P connect 203.0.113.10 80; "
        "$P connect 203.0.113.20 80' 2>{}",
        RALPH_SANDBOX_CLI, flag, base_, RALPH_NET_PROBE_DIR, state, err_file));
    return std::make_pair(out, testing::ShellOutput("cat " + err_file));
  };
  auto [out, err] = launch("--events");
  EXPECT_EQ(out, "connected:hello\nfailed:timeout\n") << err;
  EXPECT_NE(err.find("network: allowed tcp 203.0.113.10 port 80 (allowlist)"), std::string::npos)
      << err;
  EXPECT_NE(err.find("network: denied tcp 203.0.113.20 port 80 (not-allowlisted)"),
            std::string::npos)
      << err;
  auto [quiet_out, quiet_err] = launch("");
  EXPECT_EQ(quiet_out, "connected:hello\nfailed:timeout\n") << quiet_err;
  EXPECT_EQ(quiet_err.find("network:"), std::string::npos) << quiet_err;
  EXPECT_FALSE(world_->SawAny("tcp 203.0.113.20"));
  // The launchers' warm volume and tables.
  testing::ShellOutput(fmt::format("{} drain --state-dir {}", RALPH_SANDBOX_CLI, state));
}
#endif

TEST_F(SandboxedNetTest, AllowlistedCidrConnectsFromTheSandbox) {
  NetworkSpec network;
  network.allow = {{.cidr = "203.0.113.0/24", .port_min = 80},
                   {.cidr = "2001:db8:1::/64", .port_min = 80}};
  std::vector<std::string> out = Run(network,
                                     "$P connect 203.0.113.10 80; $P connect 2001:db8:1::10 80; "
                                     "$P connect 2001:db8:1::10 443");
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], "connected:hello");
  EXPECT_EQ(out[1], "connected:hello");
  EXPECT_EQ(out[2], "failed:timeout");
  EXPECT_FALSE(world_->SawAny("443"));
}

}  // namespace
}  // namespace ralph::sandbox
