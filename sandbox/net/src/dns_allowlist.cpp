#include "sandbox/net/dns_allowlist.h"

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

constexpr size_t kMaxName = 253;  // RFC 1035 2.3.4, presentation form
constexpr size_t kMaxLabel = 63;

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool LabelChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// Empty string on success, else what is wrong.
std::string CheckName(std::string_view name) {
  if (name.empty()) return "empty name";
  if (name.size() > kMaxName) return fmt::format("longer than {} bytes", kMaxName);
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view label = name.substr(start, end - start);
    if (label.empty()) return "empty label";
    if (label.size() > kMaxLabel) {
      return fmt::format("label \"{}\" longer than {} bytes", label, kMaxLabel);
    }
    for (char c : label) {
      if (!LabelChar(c)) return fmt::format("label \"{}\" has character '{}'", label, c);
    }
    start = end + 1;
  }
  return "";
}

}  // namespace

std::string NormalizeDnsName(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  std::string lower;
  lower.reserve(name.size());
  for (char c : name) lower.push_back(Lower(c));
  if (!CheckName(lower).empty()) return "";
  return lower;
}

Result<DnsAllowlist> DnsAllowlist::Create(const std::vector<std::string>& patterns) {
  DnsAllowlist list;
  for (size_t i = 0; i < patterns.size(); ++i) {
    std::string_view pattern = patterns[i];
    bool wildcard = pattern.starts_with("*.");
    std::string_view rest = wildcard ? pattern.substr(2) : pattern;
    if (!rest.empty() && rest.back() == '.') rest.remove_suffix(1);
    std::string lower;
    for (char c : rest) lower.push_back(Lower(c));
    std::string problem = CheckName(lower);
    if (problem.empty() && wildcard && lower.find('.') == std::string::npos) {
      problem = "a wildcard needs at least two labels after \"*.\"";
    }
    if (!problem.empty()) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("allowed_domains[{}] \"{}\": {}", i, pattern, problem));
    }
    if (wildcard) {
      list.suffixes_.push_back("." + lower);
    } else {
      list.exact_.push_back(lower);
    }
  }
  return list;
}

bool DnsAllowlist::Allows(std::string_view name) const {
  std::string normalized = NormalizeDnsName(name);
  if (normalized.empty()) return false;
  for (const std::string& exact : exact_) {
    if (normalized == exact) return true;
  }
  for (const std::string& suffix : suffixes_) {
    if (normalized.size() > suffix.size() && normalized.ends_with(suffix)) return true;
  }
  return false;
}

}  // namespace ralph::sandbox
