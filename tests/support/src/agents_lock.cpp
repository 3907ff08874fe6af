#include "tests/support/agents_lock.h"

#include <fstream>
#include <regex>
#include <sstream>

namespace ralph::testing {

std::string LockedNpmVersion(const std::string& lock_path, std::string_view package,
                             std::string_view arch) {
  std::ifstream lock(lock_path);
  std::string line;
  while (std::getline(lock, line)) {
    std::istringstream fields(line);
    std::string kind, line_arch, variant, name, version;
    fields >> kind >> line_arch >> variant >> name >> version;
    if (kind == "npm" && line_arch == arch && name == package) return version;
  }
  return "";
}

bool NamesVersion(const std::string& text, const std::string& version) {
  std::regex word("(^|[^0-9.])" + std::regex_replace(version, std::regex(R"(\.)"), R"(\.)") +
                  "($|[^0-9.])");
  return std::regex_search(text, word);
}

}  // namespace ralph::testing
