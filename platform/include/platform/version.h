// A release version, MAJOR.MINOR.PATCH, compared field by field: what a slot
// record stores (boot/slot_state.h), what a bundle manifest declares
// (services/ota/bundle/manifest.h) and what anti-rollback compares.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph {

struct Version {
  uint32_t major = 0;
  uint32_t minor = 0;
  uint32_t patch = 0;

  // Strict, one spelling per version: "1.4.2", three decimal fields of
  // 0..4294967295 without sign, spaces, leading zeros or a leading "v";
  // kInvalidArgument naming the text otherwise.
  static Result<Version> Parse(std::string_view text);
  std::string ToString() const;
  friend bool operator==(const Version&, const Version&) = default;
  friend auto operator<=>(const Version&, const Version&) = default;
};

}  // namespace ralph
