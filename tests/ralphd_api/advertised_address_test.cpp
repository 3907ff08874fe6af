// Which address a pairing string advertises: the listen address as given,
// or for 0.0.0.0 / :: the first reachable interface address (up, not
// loopback, not link-local, IPv4 before IPv6), and a clear error when
// there is none.
#include "services/ralphd/api/advertised_address.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace ralph::ralphd::api {
namespace {

using ::testing::HasSubstr;

InterfaceAddress Up(std::string interface, std::string address) {
  return {.interface = std::move(interface), .address = std::move(address), .up = true};
}

TEST(AdvertisedAddressTest, AnExplicitListenHostIsAdvertisedAsIs) {
  EXPECT_EQ(AdvertisedAddress("127.0.0.1", 8443).value(), "127.0.0.1:8443");
  EXPECT_EQ(AdvertisedAddress("192.168.1.20", 9000).value(), "192.168.1.20:9000");
  EXPECT_EQ(AdvertisedAddress("fd00::5", 8443).value(), "[fd00::5]:8443");
}

TEST(AdvertisedAddressTest, PicksTheFirstReachableIpv4InInterfaceOrder) {
  std::vector<InterfaceAddress> seen = {
      {.interface = "lo", .address = "127.0.0.1", .up = true, .loopback = true},
      {.interface = "lo", .address = "::1", .up = true, .loopback = true},
      {.interface = "eth0", .address = "10.0.0.7", .up = false},
      Up("eth1", "fd00::5"),
      Up("eth1", "169.254.3.4"),
      Up("eth2", "192.168.1.20"),
      Up("eth3", "192.168.2.30"),
  };
  EXPECT_EQ(PickAdvertisedHost(seen).value(), "192.168.1.20");
}

TEST(AdvertisedAddressTest, FallsBackToAGlobalIpv6) {
  std::vector<InterfaceAddress> seen = {
      {.interface = "lo", .address = "127.0.0.1", .up = true, .loopback = true},
      Up("eth0", "fe80::5054:ff:fe12:3456"),
      Up("eth0", "fec0::5054:ff:fe12:3456"),
      Up("eth0", "2001:db8::7"),
  };
  EXPECT_EQ(PickAdvertisedHost(seen).value(), "2001:db8::7");
}

TEST(AdvertisedAddressTest, NoReachableAddressIsAnErrorNamingWhatWasSeen) {
  std::vector<InterfaceAddress> seen = {
      {.interface = "lo", .address = "127.0.0.1", .up = true, .loopback = true},
      {.interface = "eth0", .address = "10.0.0.7", .up = false},
      Up("eth1", "fe80::1"),
      Up("eth1", "fec0::5054:ff:fe12:3456"),
  };
  Result<std::string> picked = PickAdvertisedHost(seen);
  ASSERT_FALSE(picked);
  EXPECT_EQ(picked.error().code(), ErrorCode::kNotFound);
  EXPECT_THAT(picked.error().message(), HasSubstr("lo 127.0.0.1 (loopback)"));
  EXPECT_THAT(picked.error().message(), HasSubstr("eth0 10.0.0.7 (down)"));
  EXPECT_THAT(picked.error().message(), HasSubstr("eth1 fe80::1"));
  EXPECT_THAT(PickAdvertisedHost({}).error().message(), HasSubstr("seen: none"));
}

// The real interfaces of this host: loopback is always among them, marked.
TEST(AdvertisedAddressTest, ReadsThisHostsInterfaces) {
  std::vector<InterfaceAddress> all = ReadInterfaceAddresses().value();
  auto lo = std::find_if(all.begin(), all.end(),
                         [](const InterfaceAddress& a) { return a.address == "127.0.0.1"; });
  ASSERT_NE(lo, all.end());
  EXPECT_TRUE(lo->loopback);
  EXPECT_TRUE(lo->up);
  // Whatever is picked for 0.0.0.0 is one of them and never loopback.
  if (Result<std::string> address = AdvertisedAddress("0.0.0.0", 8443)) {
    EXPECT_TRUE(address->ends_with(":8443")) << *address;
    EXPECT_FALSE(address->starts_with("127.")) << *address;
  } else {
    EXPECT_THAT(address.error().message(), HasSubstr("--api-address")) << "no other address here";
  }
}

}  // namespace
}  // namespace ralph::ralphd::api
