// The address a pairing string advertises when the API listens on every
// interface (0.0.0.0 or ::): the listen address itself would tell a client
// nothing, so the offer names one the appliance can be reached at, chosen
// from its interfaces when the offer is made (DHCP may have changed them
// since the daemon started).
//
//   std::string address = TRY(AdvertisedAddress("0.0.0.0", 8443));  // "192.168.1.20:8443"
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::ralphd::api {

struct InterfaceAddress {
  std::string interface;  // "eth0"
  std::string address;    // numeric: "192.168.1.20", "fd00::5"
  bool up = false;
  bool loopback = false;
};

// The candidate for a client on another host: the first interface address,
// in the kernel's order, that is up, not loopback and not link-local (nor
// the deprecated IPv6 site-local fec0::/10); IPv4
// before IPv6 (a typed-in or scanned IPv4 address is what a LAN client has).
// kNotFound, naming what was seen, when there is none.
Result<std::string> PickAdvertisedHost(std::span<const InterfaceAddress> addresses);

// This host's interface addresses (getifaddrs), IPv4 and IPv6 only.
Result<std::vector<InterfaceAddress>> ReadInterfaceAddresses();

// "HOST:PORT", or "[HOST]:PORT" for an IPv6 host.
std::string FormatHostPort(std::string_view host, uint16_t port);

// FormatHostPort for the pairing string: `listen_host`
// itself unless it is the unspecified address, else PickAdvertisedHost over
// this host's interfaces.
Result<std::string> AdvertisedAddress(std::string_view listen_host, uint16_t port);

}  // namespace ralph::ralphd::api
