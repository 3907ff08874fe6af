#include "services/network/resolv_conf.h"

#include <gtest/gtest.h>

namespace ralph::network {
namespace {

using Action = ResolvConfPlan::Action;

TEST(PlanResolvConf, ALeaseWritesItsServersAndSearchDomains) {
  auto plan = PlanResolvConf({"BOUND", "eth0", "10.0.2.3 2001:db8::53", "lab.example example", ""});
  ASSERT_TRUE(plan) << plan.error().ToString();
  EXPECT_EQ(plan->action, Action::kWrite);
  EXPECT_EQ(plan->content,
            "# written by ralph-dhcpcd-hook from the BOUND lease on eth0\n"
            "search lab.example example\n"
            "nameserver 10.0.2.3\n"
            "nameserver 2001:db8::53\n");
}

TEST(PlanResolvConf, DomainNameIsTheSearchListWhenTheLeaseHasNone) {
  auto plan = PlanResolvConf({"RENEW", "eth0", "192.0.2.3", "", "corp.example"});
  ASSERT_TRUE(plan) << plan.error().ToString();
  EXPECT_EQ(plan->action, Action::kWrite);
  EXPECT_NE(plan->content.find("search corp.example\n"), std::string::npos) << plan->content;
}

TEST(PlanResolvConf, EveryLeaseReasonWrites) {
  for (const char* reason : {"BOUND", "RENEW", "REBIND", "REBOOT", "INFORM", "STATIC"}) {
    auto plan = PlanResolvConf({reason, "eth0", "10.0.2.3", "", ""});
    ASSERT_TRUE(plan) << reason;
    EXPECT_EQ(plan->action, Action::kWrite) << reason;
    EXPECT_EQ(plan->content.find("search"), std::string::npos) << plan->content;
  }
}

TEST(PlanResolvConf, ALeaseWithoutServersOrALostLeaseRemovesTheFile) {
  auto none = PlanResolvConf({"BOUND", "eth0", "", "", ""});
  ASSERT_TRUE(none);
  EXPECT_EQ(none->action, Action::kRemove);
  for (const char* reason : {"EXPIRE", "NOCARRIER", "RELEASE", "STOP", "DEPARTED", "FAIL"}) {
    auto plan = PlanResolvConf({reason, "eth0", "", "", ""});
    ASSERT_TRUE(plan) << reason;
    EXPECT_EQ(plan->action, Action::kRemove) << reason;
  }
}

TEST(PlanResolvConf, OtherEventsChangeNothing) {
  for (const char* reason : {"PREINIT", "CARRIER", "TIMEOUT", "IPV4LL", "ROUTERADVERT", ""}) {
    auto plan = PlanResolvConf({reason, "eth0", "10.0.2.3", "", ""});
    ASSERT_TRUE(plan) << reason;
    EXPECT_EQ(plan->action, Action::kNone) << reason;
  }
}

TEST(PlanResolvConf, AServerThatIsNotAnAddressIsRefusedByName) {
  auto plan = PlanResolvConf({"BOUND", "eth0", "10.0.2.3 ns.example", "", ""});
  ASSERT_FALSE(plan);
  EXPECT_EQ(plan.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(
      plan.error().ToString().find("DNS server \"ns.example\" is not an IPv4 or IPv6 address"),
      std::string::npos)
      << plan.error().ToString();
}

TEST(PlanResolvConf, ADomainWithOtherCharactersIsRefusedByName) {
  auto plan = PlanResolvConf({"BOUND", "eth0", "10.0.2.3", "evil;options", ""});
  ASSERT_FALSE(plan);
  EXPECT_EQ(plan.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(plan.error().ToString().find("search domain \"evil;options\" has characters"),
            std::string::npos)
      << plan.error().ToString();
}

TEST(PlanResolvConf, ValuesSplitByNewlinesStayOnTheirOwnLine) {
  // A hostile server's "example\nnameserver" in the search list: the words are rejoined with
  // spaces, never a line of their own.
  auto plan = PlanResolvConf({"BOUND", "eth0", "10.0.2.3", "example\nnameserver", ""});
  ASSERT_TRUE(plan) << plan.error().ToString();
  EXPECT_NE(plan->content.find("search example nameserver\n"), std::string::npos) << plan->content;
  EXPECT_EQ(plan->content.find("\nnameserver\n"), std::string::npos) << plan->content;
}

}  // namespace
}  // namespace ralph::network
