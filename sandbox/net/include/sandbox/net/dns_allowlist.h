// Which DNS names a job may resolve (pure).
//
// Patterns: "example.com" matches exactly that name; "*.example.com" matches
// every name below it ("a.example.com", "a.b.example.com") but not
// "example.com" itself. Matching is case-insensitive and ignores one trailing
// dot. Patterns are validated: LDH labels (plus '_'), 1..63 bytes per label,
// at most 253 bytes in all, '*' only as a whole leftmost label.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::sandbox {

class DnsAllowlist {
 public:
  // kInvalidArgument naming the first bad pattern and what is wrong with it.
  static Result<DnsAllowlist> Create(const std::vector<std::string>& patterns);

  // True when `name` (as it appears in a query, any case, with or without the
  // trailing dot) is allowed. Names that are not valid host names (empty
  // labels, labels over 63 bytes, over 253 bytes) never match.
  bool Allows(std::string_view name) const;
  bool empty() const { return exact_.empty() && suffixes_.empty(); }

 private:
  DnsAllowlist() = default;
  std::vector<std::string> exact_;     // lower case, no trailing dot
  std::vector<std::string> suffixes_;  // ".example.com"
};

// Lower-cases `name` and strips one trailing dot; empty when `name` is not a
// syntactically valid DNS name (see above).
std::string NormalizeDnsName(std::string_view name);

}  // namespace ralph::sandbox
