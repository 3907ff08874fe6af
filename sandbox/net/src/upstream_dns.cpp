#include "upstream_dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "sandbox/net/ip_prefix.h"

namespace ralph::sandbox {
namespace {

// The address of the first "nameserver <address>" line, or empty.
std::string FirstNameserver(std::string_view resolv) {
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  for (std::string_view rest = resolv; !rest.empty();) {
    size_t end = rest.find('\n');
    std::string_view line = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    auto next_word = [&]() {
      while (!line.empty() && blank(line.front())) line.remove_prefix(1);
      size_t n = 0;
      while (n < line.size() && !blank(line[n])) ++n;
      std::string_view word = line.substr(0, n);
      line.remove_prefix(n);
      return word;
    };
    if (next_word() == "nameserver") {
      std::string_view address = next_word();
      if (!address.empty()) return std::string(address);
    }
  }
  return {};
}

}  // namespace

Result<UpstreamDns> ParseUpstreamDns(const std::string& configured,
                                     const std::string& resolv_conf) {
  std::string text = configured.empty() ? FirstNameserver(resolv_conf) : configured;
  if (text.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "upstream_dns is empty and /etc/resolv.conf names no nameserver");
  }
  std::string host = text;
  uint16_t port = 53;
  auto parse_port = [&](std::string_view digits) -> Result<void> {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc() || end != digits.data() + digits.size() || value == 0 || value > 65535) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("upstream_dns \"{}\": bad port", text));
    }
    port = static_cast<uint16_t>(value);
    return {};
  };
  if (text.starts_with('[')) {
    size_t close = text.find(']');
    if (close == std::string::npos) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("upstream_dns \"{}\": missing ']'", text));
    }
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') {
        return Error::Make(ErrorCode::kInvalidArgument,
                           fmt::format("upstream_dns \"{}\": expected ':' after ']'", text));
      }
      TRY(parse_port(std::string_view(text).substr(close + 2)));
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    size_t colon = text.find(':');
    host = text.substr(0, colon);
    TRY(parse_port(std::string_view(text).substr(colon + 1)));
  }
  auto address = IpPrefix::Parse(host);
  if (!address || !address->is_address()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("upstream_dns \"{}\": not an IP address", text));
  }
  UpstreamDns upstream;
  if (address->family == IpFamily::kV4) {
    // reinterpret_cast: sockaddr_storage is the generic buffer for any family.
    auto* in = reinterpret_cast<sockaddr_in*>(&upstream.address);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    std::memcpy(&in->sin_addr, address->bytes.data(), 4);
    upstream.length = sizeof(sockaddr_in);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&upstream.address);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    std::memcpy(&in6->sin6_addr, address->bytes.data(), 16);
    upstream.length = sizeof(sockaddr_in6);
  }
  return upstream;
}

}  // namespace ralph::sandbox
