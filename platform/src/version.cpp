#include "platform/version.h"

#include <charconv>

#include <fmt/format.h>

namespace ralph {
namespace {

Error NotAVersion(std::string_view text) {
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("version \"{}\" is not MAJOR.MINOR.PATCH (e.g. 1.4.2; decimal "
                                 "fields 0..4294967295 without leading zeros)",
                                 text));
}

}  // namespace

Result<Version> Version::Parse(std::string_view text) {
  Version v;
  uint32_t* fields[3] = {&v.major, &v.minor, &v.patch};
  size_t start = 0;
  for (int i = 0; i < 3; ++i) {
    size_t end = i < 2 ? text.find('.', start) : text.size();
    if (end == std::string_view::npos) return NotAVersion(text);
    std::string_view field = text.substr(start, end - start);
    auto [parsed_end, ec] = std::from_chars(field.data(), field.data() + field.size(), *fields[i]);
    if (field.empty() || ec != std::errc() || parsed_end != field.data() + field.size() ||
        (field.size() > 1 && field[0] == '0')) {
      return NotAVersion(text);
    }
    start = end + 1;
  }
  return v;
}

std::string Version::ToString() const {
  return fmt::format("{}.{}.{}", major, minor, patch);
}

}  // namespace ralph
