// DNS from DHCP (services/dhcp/resolver.h): what each dhcpcd event does to
// the resolver file, untrusted lease values refused, and the file updates.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "platform/file_io.h"
#include "services/dhcp/resolver.h"
#include "tests/support/temp_dir.h"

namespace ralph::dhcp {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Env = std::map<std::string, std::string>;

Env Lease(std::string reason, std::string servers, std::string search = "") {
  Env env = {{"reason", std::move(reason)},
             {"interface", "eth0"},
             {"new_domain_name_servers", std::move(servers)}};
  if (!search.empty()) env["new_domain_search"] = std::move(search);
  return env;
}

TEST(PlanDnsUpdate, LeaseEventsSetTheServers) {
  for (const char* reason : {"BOUND", "RENEW", "REBIND", "REBOOT", "INFORM", "STATIC", "TIMEOUT"}) {
    auto update = PlanDnsUpdate(Lease(reason, "10.0.2.3 2001:db8::53", "ralph.test lab"));
    ASSERT_TRUE(update) << reason << ": " << update.error().ToString();
    EXPECT_EQ(update->action, DnsAction::kSet) << reason;
    EXPECT_EQ(update->dns.interface, "eth0");
    EXPECT_THAT(update->dns.servers, ElementsAre("10.0.2.3", "2001:db8::53"));
    EXPECT_THAT(update->dns.search, ElementsAre("ralph.test", "lab"));
  }
  auto bound = PlanDnsUpdate(Lease("BOUND", "10.0.2.3", "ralph.test"));
  EXPECT_EQ(bound->why, "BOUND on eth0: nameserver 10.0.2.3, search ralph.test");
  // No domain_search: the domain name is the search list.
  Env named = Lease("RENEW", "10.0.2.3");
  named["new_domain_name"] = "example.org";
  EXPECT_THAT(PlanDnsUpdate(named)->dns.search, ElementsAre("example.org"));
}

TEST(PlanDnsUpdate, LostLeasesClearAndOtherEventsDoNothing) {
  for (const char* reason : {"EXPIRE", "FAIL", "RELEASE", "STOP", "STOPPED", "NOCARRIER",
                             "NOCARRIER_ROAMING", "DEPARTED", "IPV4LL"}) {
    auto update = PlanDnsUpdate({{"reason", reason}, {"interface", "eth0"}});
    ASSERT_TRUE(update) << reason;
    EXPECT_EQ(update->action, DnsAction::kClear) << reason;
    EXPECT_EQ(update->dns.interface, "eth0");
  }
  for (const char* reason : {"PREINIT", "CARRIER", "TEST", "ROUTERADVERT", "BOUND6", "WEIRD"}) {
    auto update = PlanDnsUpdate({{"reason", reason}});
    ASSERT_TRUE(update) << reason;
    EXPECT_EQ(update->action, DnsAction::kNone) << reason;
  }
  // A lease without DNS servers leaves nothing to resolve with.
  auto empty = PlanDnsUpdate(Lease("BOUND", ""));
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->action, DnsAction::kClear);
  EXPECT_EQ(empty->why, "BOUND on eth0: the lease names no DNS server");
}

TEST(PlanDnsUpdate, UntrustedValuesAreRefusedByName) {
  auto no_reason = PlanDnsUpdate({{"interface", "eth0"}});
  ASSERT_FALSE(no_reason);
  EXPECT_THAT(no_reason.error().message(), HasSubstr("no reason"));
  Env traversal = Lease("BOUND", "10.0.2.3");
  traversal["interface"] = "../etc";
  auto bad_if = PlanDnsUpdate(traversal);
  ASSERT_FALSE(bad_if);
  EXPECT_THAT(bad_if.error().message(), HasSubstr("interface '../etc' is not an interface name"));
  auto bad_server = PlanDnsUpdate(Lease("BOUND", "10.0.2.3 evil\noptions"));
  ASSERT_FALSE(bad_server);
  EXPECT_EQ(bad_server.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(bad_server.error().message(),
              HasSubstr("new_domain_name_servers: 'evil' is not an IPv4 or IPv6 address"));
  auto bad_search = PlanDnsUpdate(Lease("BOUND", "10.0.2.3", "ok.test bad..name"));
  ASSERT_FALSE(bad_search);
  EXPECT_THAT(bad_search.error().message(),
              HasSubstr("new_domain_search: 'bad..name' is not a domain name"));
  Env bad_domain = Lease("BOUND", "10.0.2.3");
  bad_domain["new_domain_name"] = "a;b";
  EXPECT_THAT(PlanDnsUpdate(bad_domain).error().message(),
              HasSubstr("new_domain_name: 'a;b' is not a domain name"));
}

TEST(RenderResolvConf, MergesInNameOrderDeduplicatesAndCaps) {
  InterfaceDns eth1{"eth1", {"192.0.2.1", "192.0.2.2"}, {"b.test"}};
  InterfaceDns eth0{"eth0", {"10.0.2.3", "192.0.2.1", "192.0.2.9"}, {"a.test", "b.test"}};
  EXPECT_EQ(RenderResolvConf({eth1, eth0}),
            "# Written by ralph-dhcp-hook from the DHCP leases of eth0, eth1.\n"
            "nameserver 10.0.2.3\n"
            "nameserver 192.0.2.1\n"
            "nameserver 192.0.2.9\n"
            "search a.test b.test\n");
  EXPECT_EQ(RenderResolvConf({}),
            "# Written by ralph-dhcp-hook from the DHCP leases: none has DNS servers.\n");
}

TEST(InterfaceState, RoundTripsAndRefusesGarbage) {
  InterfaceDns dns{"enp0s3", {"10.0.2.3", "fe80::1"}, {"ralph.test"}};
  auto parsed = ParseInterfaceState("enp0s3", RenderInterfaceState(dns));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, dns);
  auto garbage = ParseInterfaceState("eth0", "nameserver 10.0.2.3\noptions ndots:9\n");
  ASSERT_FALSE(garbage);
  EXPECT_THAT(garbage.error().message(), HasSubstr("line 2: 'options ndots:9'"));
}

// The apply step on a real directory: per-interface state, the merged file
// replaced whole, a lost lease removing only that interface.
TEST(ApplyDnsUpdate, BoundRenewExpireAcrossInterfaces) {
  testing::TempDir dir("ralph-dhcp");
  ResolverPaths paths{dir / "run/dns", dir / "run/resolv.conf"};
  auto eth0 = PlanDnsUpdate(Lease("BOUND", "10.0.2.3", "ralph.test"));
  ASSERT_TRUE(ApplyDnsUpdate(*eth0, paths));
  EXPECT_EQ(*ReadWholeFile(paths.resolv_conf),
            "# Written by ralph-dhcp-hook from the DHCP leases of eth0.\n"
            "nameserver 10.0.2.3\nsearch ralph.test\n");
  Env second = Lease("BOUND", "192.0.2.53");
  second["interface"] = "eth1";
  ASSERT_TRUE(ApplyDnsUpdate(*PlanDnsUpdate(second), paths));
  auto renew = PlanDnsUpdate(Lease("RENEW", "10.0.2.4", "ralph.test"));
  ASSERT_TRUE(ApplyDnsUpdate(*renew, paths));
  EXPECT_EQ(*ReadWholeFile(paths.resolv_conf),
            "# Written by ralph-dhcp-hook from the DHCP leases of eth0, eth1.\n"
            "nameserver 10.0.2.4\nnameserver 192.0.2.53\nsearch ralph.test\n");
  auto expire = PlanDnsUpdate({{"reason", "EXPIRE"}, {"interface", "eth0"}});
  ASSERT_TRUE(ApplyDnsUpdate(*expire, paths));
  EXPECT_EQ(*ReadWholeFile(paths.resolv_conf),
            "# Written by ralph-dhcp-hook from the DHCP leases of eth1.\n"
            "nameserver 192.0.2.53\n");
  EXPECT_FALSE(ReadWholeFile(dir / "run/dns/eth0"));
  // No temporaries left behind; kNone touches nothing.
  for (const auto& entry : std::filesystem::directory_iterator(
           std::filesystem::path(paths.resolv_conf).parent_path())) {
    EXPECT_FALSE(entry.path().string().ends_with(".tmp")) << entry.path();
  }
  ASSERT_TRUE(ApplyDnsUpdate(*PlanDnsUpdate({{"reason", "PREINIT"}}), paths));
  struct stat st {};
  ASSERT_EQ(::stat(paths.resolv_conf.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST(ApplyDnsUpdate, CorruptStateIsNamed) {
  testing::TempDir dir("ralph-dhcp");
  ResolverPaths paths{dir / "dns", dir / "resolv.conf"};
  ASSERT_TRUE(ApplyDnsUpdate(*PlanDnsUpdate(Lease("BOUND", "10.0.2.3")), paths));
  ASSERT_TRUE(WriteWholeFile(dir / "dns/eth9", "nameserver not-an-ip\n"));
  auto applied = ApplyDnsUpdate(*PlanDnsUpdate(Lease("RENEW", "10.0.2.3")), paths);
  ASSERT_FALSE(applied);
  EXPECT_THAT(applied.error().message(), HasSubstr("dns/eth9"));
  EXPECT_THAT(applied.error().message(), HasSubstr("'not-an-ip' is not an IPv4 or IPv6 address"));
}

}  // namespace
}  // namespace ralph::dhcp
