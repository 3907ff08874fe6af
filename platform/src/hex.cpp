#include "platform/hex.h"

#include <fmt/format.h>

namespace ralph {

int HexDigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string HexEncode(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return out;
}

Result<void> HexDecodeInto(std::string_view hex, std::span<uint8_t> out) {
  if (hex.size() != out.size() * 2) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("expected {} hex digits, got {}", out.size() * 2, hex.size()));
  }
  for (size_t i = 0; i < hex.size(); ++i) {
    if (HexDigitValue(hex[i]) < 0) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("'{}' at position {} is not a hex digit", hex[i], i));
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint8_t>(HexDigitValue(hex[2 * i]) << 4 | HexDigitValue(hex[2 * i + 1]));
  }
  return {};
}

Result<std::vector<uint8_t>> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("odd number of hex digits ({})", hex.size()));
  }
  std::vector<uint8_t> out(hex.size() / 2);
  TRY(HexDecodeInto(hex, out));
  return out;
}

}  // namespace ralph
