// Hex text <-> bytes, the one parser and formatter of the tree (digests,
// GUIDs, keys). Both cases are accepted on input, so a digest pasted from
// another tool parses; output is always lower case, so text written by the
// tree has one spelling.
//
//   std::string text = HexEncode(bytes);               // "00ff10"
//   std::vector<uint8_t> back = TRY(HexDecode(text));
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph {

// 0..15 for '0'-'9', 'a'-'f', 'A'-'F'; -1 for any other character.
int HexDigitValue(char c);

// Two lower-case digits per byte.
std::string HexEncode(std::span<const uint8_t> bytes);

// The bytes `hex` spells. kInvalidArgument on an odd length ("odd number of
// hex digits (5)") or a non-hex character ("'x' at position 10 is not a hex
// digit"); the empty string is zero bytes.
Result<std::vector<uint8_t>> HexDecode(std::string_view hex);

// As HexDecode into exactly out.size() bytes: kInvalidArgument naming the
// expected and actual digit counts when the length differs.
Result<void> HexDecodeInto(std::string_view hex, std::span<uint8_t> out);

}  // namespace ralph
