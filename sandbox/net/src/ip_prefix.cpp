#include "sandbox/net/ip_prefix.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

namespace ralph::sandbox {

Result<IpPrefix> IpPrefix::Parse(std::string_view text) {
  std::string address(text);
  std::string_view length_text;
  size_t slash = text.find('/');
  if (slash != std::string_view::npos) {
    address = std::string(text.substr(0, slash));
    length_text = text.substr(slash + 1);
  }
  IpPrefix prefix;
  if (inet_pton(AF_INET, address.c_str(), prefix.bytes.data()) == 1) {
    prefix.family = IpFamily::kV4;
  } else if (inet_pton(AF_INET6, address.c_str(), prefix.bytes.data()) == 1) {
    prefix.family = IpFamily::kV6;
  } else {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("\"{}\": not an IPv4 or IPv6 address", text));
  }
  prefix.length = prefix.max_length();
  if (slash != std::string_view::npos) {
    unsigned value = 0;
    auto [end, ec] =
        std::from_chars(length_text.data(), length_text.data() + length_text.size(), value);
    if (length_text.empty() || ec != std::errc() ||
        end != length_text.data() + length_text.size() || value > prefix.max_length()) {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("\"{}\": prefix length must be 0..{}", text, prefix.max_length()));
    }
    prefix.length = static_cast<uint8_t>(value);
  }
  std::array<uint8_t, 16> mask = prefix.Mask();
  for (size_t i = 0; i < prefix.address_size(); ++i) {
    if ((prefix.bytes[i] & ~mask[i]) != 0) {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("\"{}\": host bits set below the /{} prefix", text, prefix.length));
    }
  }
  return prefix;
}

IpPrefix IpPrefix::Address(IpFamily family, const uint8_t* data) {
  IpPrefix prefix;
  prefix.family = family;
  std::memcpy(prefix.bytes.data(), data, prefix.address_size());
  prefix.length = prefix.max_length();
  return prefix;
}

std::array<uint8_t, 16> IpPrefix::Mask() const {
  std::array<uint8_t, 16> mask{};
  unsigned remaining = length;
  for (size_t i = 0; i < address_size() && remaining > 0; ++i) {
    unsigned bits = remaining >= 8 ? 8 : remaining;
    mask[i] = static_cast<uint8_t>(0xff00u >> bits);
    remaining -= bits;
  }
  return mask;
}

Result<IpPrefix> IpPrefix::Subnet(unsigned extra_bits, uint32_t index) const {
  if (extra_bits > 16 || length + extra_bits > max_length() || (index >> extra_bits) != 0) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: no part {} of {} equal parts (at most /{})", ToString(),
                                   index, 1u << std::min(extra_bits, 16u), max_length()));
  }
  IpPrefix part = *this;
  for (unsigned i = 0; i < extra_bits; ++i) {
    unsigned bit = length + extra_bits - 1 - i;  // from the most significant bit
    if ((index >> i) & 1) part.bytes[bit / 8] |= static_cast<uint8_t>(0x80 >> (bit % 8));
  }
  part.length = static_cast<uint8_t>(length + extra_bits);
  return part;
}

bool IpPrefix::Contains(const IpPrefix& other) const {
  if (other.family != family || other.length < length) return false;
  std::array<uint8_t, 16> mask = Mask();
  for (size_t i = 0; i < address_size(); ++i) {
    if ((other.bytes[i] & mask[i]) != bytes[i]) return false;
  }
  return true;
}

std::string IpPrefix::AddressString() const {
  char buffer[INET6_ADDRSTRLEN] = {};
  inet_ntop(family == IpFamily::kV4 ? AF_INET : AF_INET6, bytes.data(), buffer, sizeof(buffer));
  return buffer;
}

std::string IpPrefix::ToString() const {
  if (is_address()) return AddressString();
  return fmt::format("{}/{}", AddressString(), length);
}

}  // namespace ralph::sandbox
