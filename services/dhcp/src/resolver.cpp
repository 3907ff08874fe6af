#include "services/dhcp/resolver.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <memory>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::dhcp {
namespace {

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

std::vector<std::string> Words(std::string_view text) {
  std::vector<std::string> words;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

bool IsIpAddress(const std::string& text) {
  std::array<unsigned char, 16> buffer{};
  return ::inet_pton(AF_INET, text.c_str(), buffer.data()) == 1 ||
         ::inet_pton(AF_INET6, text.c_str(), buffer.data()) == 1;
}

// RFC 1035 host name syntax (letters, digits, '-', '_' seen in the wild),
// labels of 1..63, 253 in all; one trailing dot allowed.
bool IsDomainName(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

// An interface name that is safe as a file name: what the kernel allows
// (IFNAMSIZ) minus anything that is not [A-Za-z0-9._-], and not "." / "..".
bool IsInterfaceName(std::string_view name) {
  if (name.empty() || name.size() > 15 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// The words of `value`, each of which must pass `valid` ("...: 'x' is not
// <kind>" otherwise).
Result<std::vector<std::string>> CheckedWords(std::string_view variable, std::string_view value,
                                              bool (*valid)(std::string_view),
                                              std::string_view kind) {
  std::vector<std::string> words = Words(value);
  for (const std::string& word : words) {
    if (!valid(word)) return Invalid(fmt::format("{}: '{}' is not {}", variable, word, kind));
  }
  return words;
}

Result<std::vector<std::string>> Servers(std::string_view variable, std::string_view value) {
  return CheckedWords(
      variable, value, [](std::string_view word) { return IsIpAddress(std::string(word)); },
      "an IPv4 or IPv6 address");
}

Result<std::vector<std::string>> Domains(std::string_view variable, std::string_view value) {
  return CheckedWords(variable, value, IsDomainName, "a domain name");
}

std::string Get(const std::map<std::string, std::string>& env, const std::string& key) {
  auto it = env.find(key);
  return it == env.end() ? std::string() : it->second;
}

const std::set<std::string_view> kSetReasons = {"BOUND",  "RENEW",  "REBIND", "REBOOT",
                                                "INFORM", "STATIC", "TIMEOUT"};
const std::set<std::string_view> kClearReasons = {
    "EXPIRE",   "FAIL",  "RELEASE", "STOP", "STOPPED", "NOCARRIER", "NOCARRIER_ROAMING",
    "DEPARTED", "IPV4LL"};

// Everything here lives on /run, a tmpfs a power cut wipes anyway: a
// replace needs atomicity for readers, no sync.
Result<void> ReplaceFile(const std::string& path, std::string_view content) {
  return WriteFileAtomically(path, content, 0644, Durability::kNone);
}

Result<void> MakeDirs(const std::string& path) {
  for (size_t slash = 1; slash != std::string::npos;) {
    slash = path.find('/', slash + 1);
    std::string part = path.substr(0, slash);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
      return Error::FromErrno(fmt::format("mkdir {}", part), errno);
    }
  }
  return {};
}

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};

// Every interface's recorded state, skipping temporaries.
Result<std::vector<InterfaceDns>> ReadStates(const std::string& dir) {
  std::unique_ptr<DIR, DirCloser> handle(::opendir(dir.c_str()));
  if (!handle) return Error::FromErrno(fmt::format("opendir {}", dir), errno);
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(handle.get())) {
    std::string name = entry->d_name;
    if (IsInterfaceName(name) && !name.ends_with(".tmp")) names.push_back(name);
  }
  std::vector<InterfaceDns> states;
  for (const std::string& name : names) {
    std::string path = dir + "/" + name;
    Result<std::string> text = ReadWholeFile(path);
    if (!text) {
      if (text.error().code() == ErrorCode::kNotFound) continue;  // removed meanwhile
      return std::move(text).error();
    }
    states.push_back(TRY_CTX(ParseInterfaceState(name, *text), path));
  }
  return states;
}

}  // namespace

Result<DnsUpdate> PlanDnsUpdate(const std::map<std::string, std::string>& env) {
  std::string reason = Get(env, "reason");
  if (reason.empty()) return Invalid("dhcpcd environment: no reason");
  DnsUpdate update;
  bool set = kSetReasons.count(reason) != 0;
  bool clear = kClearReasons.count(reason) != 0;
  if (!set && !clear) {
    update.why = fmt::format("{}: nothing to do for DNS", reason);
    return update;
  }
  std::string interface = Get(env, "interface");
  if (!IsInterfaceName(interface)) {
    return Invalid(
        fmt::format("dhcpcd environment: interface '{}' is not an interface name", interface));
  }
  update.dns.interface = interface;
  if (clear) {
    update.action = DnsAction::kClear;
    update.why = fmt::format("{} on {}: its DNS servers are forgotten", reason, interface);
    return update;
  }
  update.dns.servers = TRY(Servers("new_domain_name_servers", Get(env, "new_domain_name_servers")));
  std::string search = Get(env, "new_domain_search");
  update.dns.search = search.empty() ? TRY(Domains("new_domain_name", Get(env, "new_domain_name")))
                                     : TRY(Domains("new_domain_search", search));
  if (update.dns.servers.empty()) {
    update.action = DnsAction::kClear;
    update.why = fmt::format("{} on {}: the lease names no DNS server", reason, interface);
    update.dns.search.clear();
    return update;
  }
  update.action = DnsAction::kSet;
  update.why = fmt::format(
      "{} on {}: nameserver {}{}", reason, interface, fmt::join(update.dns.servers, " "),
      update.dns.search.empty() ? std::string()
                                : fmt::format(", search {}", fmt::join(update.dns.search, " ")));
  return update;
}

std::string RenderResolvConf(std::vector<InterfaceDns> interfaces) {
  std::sort(interfaces.begin(), interfaces.end(),
            [](const InterfaceDns& a, const InterfaceDns& b) { return a.interface < b.interface; });
  std::vector<std::string> servers;
  std::vector<std::string> search;
  std::vector<std::string> sources;
  for (const InterfaceDns& dns : interfaces) {
    sources.push_back(dns.interface);
    for (const std::string& server : dns.servers) {
      if (servers.size() < kMaxNameservers &&
          std::find(servers.begin(), servers.end(), server) == servers.end()) {
        servers.push_back(server);
      }
    }
    for (const std::string& domain : dns.search) {
      if (search.size() < kMaxSearchDomains &&
          std::find(search.begin(), search.end(), domain) == search.end()) {
        search.push_back(domain);
      }
    }
  }
  std::string out = "# Written by ralph-dhcp-hook from the DHCP leases";
  out += sources.empty() ? std::string(": none has DNS servers.\n")
                         : fmt::format(" of {}.\n", fmt::join(sources, ", "));
  for (const std::string& server : servers) out += fmt::format("nameserver {}\n", server);
  if (!search.empty()) out += fmt::format("search {}\n", fmt::join(search, " "));
  return out;
}

std::string RenderInterfaceState(const InterfaceDns& dns) {
  std::string out;
  for (const std::string& server : dns.servers) out += fmt::format("nameserver {}\n", server);
  if (!dns.search.empty()) out += fmt::format("search {}\n", fmt::join(dns.search, " "));
  return out;
}

Result<InterfaceDns> ParseInterfaceState(std::string_view interface, std::string_view text) {
  if (!IsInterfaceName(interface)) {
    return Invalid(fmt::format("'{}' is not an interface name", interface));
  }
  InterfaceDns dns;
  dns.interface = std::string(interface);
  std::istringstream lines{std::string(text)};
  int number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    std::vector<std::string> words = Words(line);
    if (words.empty()) continue;
    std::string rest = line.substr(line.find(words[0]) + words[0].size());
    if (words[0] == "nameserver" && words.size() == 2) {
      auto servers = TRY_CTX(Servers("nameserver", rest), fmt::format("line {}", number));
      dns.servers.insert(dns.servers.end(), servers.begin(), servers.end());
    } else if (words[0] == "search") {
      dns.search = TRY_CTX(Domains("search", rest), fmt::format("line {}", number));
    } else {
      return Invalid(
          fmt::format("line {}: '{}' is not 'nameserver <address>' or 'search ...'", number, line));
    }
  }
  return dns;
}

Result<void> ApplyDnsUpdate(const DnsUpdate& update, const ResolverPaths& paths) {
  if (update.action == DnsAction::kNone) return {};
  TRY(MakeDirs(paths.state_dir));
  std::string state = paths.state_dir + "/" + update.dns.interface;
  if (update.action == DnsAction::kSet) {
    TRY(ReplaceFile(state, RenderInterfaceState(update.dns)));
  } else if (::unlink(state.c_str()) != 0 && errno != ENOENT) {
    return Error::FromErrno(fmt::format("removing {}", state), errno);
  }
  std::string dir = paths.resolv_conf.substr(0, paths.resolv_conf.rfind('/'));
  if (!dir.empty()) TRY(MakeDirs(dir));
  std::vector<InterfaceDns> states = TRY(ReadStates(paths.state_dir));
  TRY(ReplaceFile(paths.resolv_conf, RenderResolvConf(std::move(states))));
  return {};
}

}  // namespace ralph::dhcp
