// Where the DNS forwarder sends allowlisted queries
// (NetworkServiceConfig::upstream_dns).
#pragma once

#include <sys/socket.h>

#include <string>

#include "platform/result.h"

namespace ralph::sandbox {

struct UpstreamDns {
  sockaddr_storage address{};
  socklen_t length = 0;
};

// "198.51.100.53", "198.51.100.53:5353", "2001:db8::53", "[2001:db8::53]:53";
// empty: the first "nameserver" of `resolv_conf` (the text of
// /etc/resolv.conf). kInvalidArgument naming what is wrong. Pure.
Result<UpstreamDns> ParseUpstreamDns(const std::string& text, const std::string& resolv_conf);

}  // namespace ralph::sandbox
