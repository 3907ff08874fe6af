#include "services/network/resolv_conf.h"

#include <arpa/inet.h>

#include <array>
#include <sstream>
#include <vector>

#include <fmt/format.h>

namespace ralph::network {
namespace {

std::vector<std::string> Words(std::string_view text) {
  std::vector<std::string> words;
  std::istringstream stream{std::string(text)};
  for (std::string word; stream >> word;) words.push_back(word);
  return words;
}

bool IsAddress(const std::string& text) {
  unsigned char buffer[16];
  return ::inet_pton(AF_INET, text.c_str(), buffer) == 1 ||
         ::inet_pton(AF_INET6, text.c_str(), buffer) == 1;
}

// Letters, digits, '-', '.', '_': what a search domain may hold here.
bool IsDomain(const std::string& text) {
  if (text.empty() || text.size() > 253) return false;
  for (char c : text) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool OneOf(std::string_view reason, std::initializer_list<std::string_view> reasons) {
  for (std::string_view r : reasons) {
    if (reason == r) return true;
  }
  return false;
}

}  // namespace

Result<ResolvConfPlan> PlanResolvConf(const LeaseEnvironment& lease) {
  ResolvConfPlan plan;
  if (OneOf(lease.reason, {"EXPIRE", "NOCARRIER", "RELEASE", "STOP", "DEPARTED", "FAIL"})) {
    plan.action = ResolvConfPlan::Action::kRemove;
    return plan;
  }
  if (!OneOf(lease.reason, {"BOUND", "RENEW", "REBIND", "REBOOT", "INFORM", "STATIC"})) {
    return plan;
  }
  std::vector<std::string> servers = Words(lease.name_servers);
  for (const std::string& server : servers) {
    if (!IsAddress(server)) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("{} on {}: DNS server \"{}\" is not an IPv4 or IPv6 address",
                                     lease.reason, lease.interface, server));
    }
  }
  std::vector<std::string> search = Words(lease.domain_search);
  if (search.empty()) search = Words(lease.domain_name);
  for (const std::string& domain : search) {
    if (!IsDomain(domain)) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("{} on {}: search domain \"{}\" has characters other than "
                                     "letters, digits, '-', '.' and '_'",
                                     lease.reason, lease.interface, domain));
    }
  }
  if (servers.empty()) {
    plan.action = ResolvConfPlan::Action::kRemove;
    return plan;
  }
  plan.action = ResolvConfPlan::Action::kWrite;
  plan.content = fmt::format("# written by ralph-dhcpcd-hook from the {} lease on {}\n",
                             lease.reason, lease.interface);
  if (!search.empty()) plan.content += fmt::format("search {}\n", fmt::join(search, " "));
  for (const std::string& server : servers) plan.content += fmt::format("nameserver {}\n", server);
  return plan;
}

}  // namespace ralph::network
