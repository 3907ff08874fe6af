// Canonical JSON: one text for one JSON value, so that a hash of the text
// is a hash of the value. The audit log stores each row's details in this
// form (the chain covers those bytes); the shared agent memory hashes its
// values in it (services/memory).
//
// The text of a value (docs/memory.md "Canonical JSON" has examples):
//   - no whitespace anywhere;
//   - an object's members sorted by name, bytewise (unsigned bytes of the
//     UTF-8 name); a name appears once (a parsed object keeps the last of
//     duplicate names, so duplicates never reach this function);
//   - strings in UTF-8 as they are, except `"` -> \", `\` -> \\, the
//     control characters U+0008, U+0009, U+000A, U+000C, U+000D -> \b \t \n
//     \f \r, the other characters below U+0020 -> \u00XX with lower-case hex;
//     invalid UTF-8 (only possible in a value built in code, never in one
//     parsed from text) is replaced by U+FFFD;
//   - an integer that fits in 64 bits (signed or unsigned) in decimal, no
//     sign for non-negative values, no leading zeros;
//   - any other number (one written with a fraction or an exponent, or too
//     large for 64 bits) as an IEEE double in the shortest form that reads
//     back to the same double, with ".0" when it would look like an integer
//     ("1.0", "1e+100" stays as is): so 1 and 1.0 are different values;
//   - true, false, null.
// It is nlohmann::json's compact serialisation; this function is the one
// place that asks for it.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace ralph::audit {

std::string CanonicalJson(const nlohmann::json& value);

}  // namespace ralph::audit
