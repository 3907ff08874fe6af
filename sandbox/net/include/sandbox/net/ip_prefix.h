// IpPrefix: an IPv4 or IPv6 address with a prefix length, parsed strictly.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::sandbox {

enum class IpFamily { kV4, kV6 };

struct IpPrefix {
  IpFamily family = IpFamily::kV4;
  // Network byte order; only the first 4 bytes are used for IPv4.
  std::array<uint8_t, 16> bytes{};
  uint8_t length = 32;

  // "203.0.113.7" (a /32), "203.0.113.0/24", "2001:db8::/32", "fd00:ec2::254".
  // kInvalidArgument naming the text when the address does not parse, the
  // length is out of range, or host bits are set below the prefix length.
  static Result<IpPrefix> Parse(std::string_view text);
  // A single address (/32 or /128) from raw bytes (4 or 16 of them).
  static IpPrefix Address(IpFamily family, const uint8_t* data);

  size_t address_size() const { return family == IpFamily::kV4 ? 4 : 16; }
  uint8_t max_length() const { return family == IpFamily::kV4 ? 32 : 128; }
  bool is_address() const { return length == max_length(); }
  // The netmask for `length` in network byte order (address_size() bytes used).
  std::array<uint8_t, 16> Mask() const;
  // True when every address of `other` lies inside this prefix.
  bool Contains(const IpPrefix& other) const;
  // "203.0.113.0/24"; a plain address prints without "/32" or "/128".
  std::string ToString() const;
  // The address alone, without any length.
  std::string AddressString() const;
  // The `index`-th of the 2^extra_bits equal parts of this prefix (length +
  // extra_bits). kInvalidArgument when that is longer than the family
  // allows or `index` does not fit in extra_bits.
  Result<IpPrefix> Subnet(unsigned extra_bits, uint32_t index) const;

  bool operator==(const IpPrefix&) const = default;
};

}  // namespace ralph::sandbox
