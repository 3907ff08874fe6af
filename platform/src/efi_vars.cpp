#include "platform/efi_vars.h"

#include <fmt/format.h>

#include "platform/hex.h"

namespace ralph {
namespace {

// Text positions of the 16 bytes, in EFI_GUID memory order. The first three
// fields (4, 2 and 2 bytes) are little-endian in memory but written
// big-endian in the text form; the last 8 bytes are in text order.
constexpr int kTextOffsets[16] = {6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34};

constexpr EfiGuid MakeGuid(std::array<uint8_t, 16> bytes) {
  EfiGuid guid;
  guid.bytes = bytes;
  return guid;
}

}  // namespace

// 8be4df61-93ca-11d2-aa0d-00e098032b8c
const EfiGuid kEfiGlobalGuid = MakeGuid({0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d,
                                         0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c});
// dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d
const EfiGuid kRalphVendorGuid = MakeGuid({0xb3, 0x0a, 0xd3, 0xdc, 0x38, 0x2c, 0xf0, 0x49, 0x8b,
                                           0xb2, 0xff, 0x7a, 0xe2, 0xf8, 0x39, 0x0d});

Result<EfiGuid> EfiGuid::Parse(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("invalid GUID \"{}\": {}", text, why));
  };
  if (text.size() != 36) {
    return bad(fmt::format("expected 36 characters (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), got {}",
                           text.size()));
  }
  for (size_t i = 0; i < text.size(); ++i) {
    bool dash_position = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash_position) {
      if (text[i] != '-') return bad(fmt::format("expected '-' at position {}", i));
    } else if (HexDigitValue(text[i]) < 0) {
      return bad(fmt::format("'{}' at position {} is not a hex digit", text[i], i));
    }
  }
  EfiGuid guid;
  for (int i = 0; i < 16; ++i) {
    int at = kTextOffsets[i];
    guid.bytes[i] =
        static_cast<uint8_t>(HexDigitValue(text[at]) << 4 | HexDigitValue(text[at + 1]));
  }
  return guid;
}

std::string EfiGuid::ToString() const {
  std::string text(36, '-');
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int i = 0; i < 16; ++i) {
    int at = kTextOffsets[i];
    text[at] = kDigits[bytes[i] >> 4];
    text[at + 1] = kDigits[bytes[i] & 0xf];
  }
  return text;
}

}  // namespace ralph
