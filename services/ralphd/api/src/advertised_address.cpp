#include "services/ralphd/api/advertised_address.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <fmt/format.h>

#include <cerrno>
#include <memory>

namespace ralph::ralphd::api {
namespace {

bool IsV6(std::string_view host) {
  return host.find(':') != std::string_view::npos;
}

// 169.254.0.0/16 and fe80::/10 are valid on one link only, and a client
// elsewhere on the LAN cannot use them; fec0::/10 (site-local) is
// deprecated and routes nowhere (QEMU's user network still advertises it).
bool IsLocalScope(std::string_view host) {
  if (!IsV6(host)) return host.starts_with("169.254.");
  in6_addr a{};
  if (inet_pton(AF_INET6, std::string(host).c_str(), &a) != 1) return false;
  return a.s6_addr[0] == 0xfe && ((a.s6_addr[1] & 0xc0) == 0x80 || (a.s6_addr[1] & 0xc0) == 0xc0);
}

}  // namespace

std::string FormatHostPort(std::string_view host, uint16_t port) {
  return IsV6(host) ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

Result<std::string> PickAdvertisedHost(std::span<const InterfaceAddress> addresses) {
  for (bool want_v6 : {false, true}) {
    for (const InterfaceAddress& a : addresses) {
      if (!a.up || a.loopback || IsV6(a.address) != want_v6 || IsLocalScope(a.address)) continue;
      return a.address;
    }
  }
  std::string seen;
  for (const InterfaceAddress& a : addresses) {
    seen += fmt::format("{}{} {}{}{}", seen.empty() ? "" : ", ", a.interface, a.address,
                        a.up ? "" : " (down)", a.loopback ? " (loopback)" : "");
  }
  return Error::Make(ErrorCode::kNotFound,
                     fmt::format("no interface address a client could reach (up, not loopback, not "
                                 "link- or site-local); seen: {}",
                                 seen.empty() ? "none" : seen));
}

Result<std::vector<InterfaceAddress>> ReadInterfaceAddresses() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return Error::FromErrno("reading the interface addresses", errno);
  std::unique_ptr<ifaddrs, decltype(&freeifaddrs)> owner(list, &freeifaddrs);
  std::vector<InterfaceAddress> out;
  for (const ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr) continue;
    char text[INET6_ADDRSTRLEN] = {};
    int family = i->ifa_addr->sa_family;
    const void* raw = nullptr;
    if (family == AF_INET) {
      raw = &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr;
    } else if (family == AF_INET6) {
      raw = &reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr;
    } else {
      continue;
    }
    if (!inet_ntop(family, raw, text, sizeof(text))) continue;
    out.push_back({.interface = i->ifa_name ? i->ifa_name : "",
                   .address = text,
                   .up = (i->ifa_flags & IFF_UP) != 0,
                   .loopback = (i->ifa_flags & IFF_LOOPBACK) != 0});
  }
  return out;
}

Result<std::string> AdvertisedAddress(std::string_view listen_host, uint16_t port) {
  if (listen_host != "0.0.0.0" && listen_host != "::") return FormatHostPort(listen_host, port);
  std::vector<InterfaceAddress> addresses = TRY(ReadInterfaceAddresses());
  std::string host = TRY_CTX(PickAdvertisedHost(addresses),
                             fmt::format("the API listens on {} (every interface); the pairing "
                                         "string needs an address (--api-address HOST:PORT)",
                                         listen_host));
  return FormatHostPort(host, port);
}

}  // namespace ralph::ralphd::api
