#include "services/ralphd/policy.h"

#include <tinyxml2.h>

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/ip_prefix.h"
#include "services/agents/profile.h"

namespace ralph::ralphd {
namespace {

using tinyxml2::XMLAttribute;
using tinyxml2::XMLElement;
using tinyxml2::XMLNode;

constexpr std::string_view kDefaultPolicy = R"(<?xml version="1.0"?>
<!-- The policy a new appliance starts with. "default": the sandbox's
     default limits, no network. "agent", where agent jobs run unless they
     name a profile: room for a coding agent, and a network that reaches its
     own tool's API hosts and nothing else. -->
<policy format="1">
  <profile name="default">
    <limits memory="512MiB" cpu-millis="1000" pids="256" disk="2GiB" timeout="1h"/>
  </profile>
  <profile name="agent">
    <limits memory="4GiB" cpu-millis="2000" pids="1024" disk="8GiB" timeout="8h"/>
    <egress/>
  </profile>
</policy>
)";

constexpr uint64_t kMaxTimeoutMs = uint64_t{30} * 24 * 3600 * 1000;

// Where each element and attribute starts in the text. tinyxml2 keeps only
// line numbers, so the positions are found by walking the text in document
// order alongside the parsed nodes: an element's start tag is the first
// "<name" after the previous node, comments, declarations and CDATA are
// skipped whole, and text nodes cannot contain '<'.
class Positions {
 public:
  Positions(std::string_view text, const tinyxml2::XMLDocument& document) : text_(text) {
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\n') line_starts_.push_back(i + 1);
    }
    size_t cursor = 0;
    Walk(document, cursor);
  }

  PolicyIssue At(const XMLElement* element, std::string message) const {
    auto it = elements_.find(element);
    return At(it == elements_.end() ? std::string_view::npos : it->second, element,
              std::move(message));
  }

  PolicyIssue At(const XMLElement* element, std::string_view attribute, std::string message) const {
    auto it = attributes_.find(Key(element, attribute));
    if (it == attributes_.end()) return At(element, std::move(message));
    return At(it->second, element, std::move(message));
  }

 private:
  static std::string Key(const XMLElement* element, std::string_view attribute) {
    return fmt::format("{}/{}", static_cast<const void*>(element), attribute);
  }

  PolicyIssue At(size_t offset, const XMLElement* element, std::string message) const {
    if (offset == std::string_view::npos) {
      return {.line = element->GetLineNum(), .column = 0, .message = std::move(message)};
    }
    auto next = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    size_t line_start = *(next - 1);
    return {.line = static_cast<int>(next - line_starts_.begin()),
            .column = static_cast<int>(offset - line_start + 1),
            .message = std::move(message)};
  }

  void SkipPast(size_t& cursor, std::string_view open, std::string_view close) {
    size_t at = text_.find(open, cursor);
    if (at == std::string_view::npos) return;
    size_t end = text_.find(close, at + open.size());
    cursor = end == std::string_view::npos ? text_.size() : end + close.size();
  }

  void Walk(const XMLNode& parent, size_t& cursor) {
    for (const XMLNode* node = parent.FirstChild(); node; node = node->NextSibling()) {
      if (node->ToComment()) {
        SkipPast(cursor, "<!--", "-->");
      } else if (node->ToDeclaration()) {
        SkipPast(cursor, "<?", "?>");
      } else if (node->ToUnknown()) {
        SkipPast(cursor, "<!", ">");
      } else if (const tinyxml2::XMLText* text = node->ToText(); text && text->CData()) {
        SkipPast(cursor, "<![CDATA[", "]]>");
      } else if (const XMLElement* element = node->ToElement()) {
        std::string open = fmt::format("<{}", element->Name());
        size_t at = text_.find(open, cursor);
        while (at != std::string_view::npos && at + open.size() < text_.size() &&
               !IsTagEnd(text_[at + open.size()])) {
          at = text_.find(open, at + 1);
        }
        if (at == std::string_view::npos) return;  // cannot happen for a parsed document
        elements_[element] = at;
        cursor = ScanAttributes(element, at + open.size());
        Walk(*element, cursor);
      }
    }
  }

  static bool IsTagEnd(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '/' || c == '>';
  }

  // Records where each attribute name of the start tag at `at` begins;
  // returns the offset after the start tag.
  size_t ScanAttributes(const XMLElement* element, size_t at) {
    size_t i = at;
    while (i < text_.size()) {
      while (i < text_.size() && IsTagEnd(text_[i]) && text_[i] != '>' && text_[i] != '/') ++i;
      if (i >= text_.size() || text_[i] == '>') return i + 1;
      if (text_[i] == '/') {
        ++i;
        continue;
      }
      size_t name_start = i;
      while (i < text_.size() && text_[i] != '=' && !IsTagEnd(text_[i])) ++i;
      attributes_[Key(element, text_.substr(name_start, i - name_start))] = name_start;
      while (i < text_.size() && text_[i] != '"' && text_[i] != '\'' && text_[i] != '>') ++i;
      if (i >= text_.size() || text_[i] == '>') continue;
      char quote = text_[i];
      size_t close = text_.find(quote, i + 1);
      i = close == std::string_view::npos ? text_.size() : close + 1;
    }
    return i;
  }

  std::string_view text_;
  std::vector<size_t> line_starts_{0};
  std::unordered_map<const XMLElement*, size_t> elements_;
  std::unordered_map<std::string, size_t> attributes_;
};

Result<uint64_t> ParseNumber(std::string_view text) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("'{}' is not a number", text));
  }
  return n;
}

// "536870912", "512M", "512MiB", "2G", "2GiB" (binary multiples).
Result<uint64_t> ParseBytes(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view unit = text.substr(digits);
  static constexpr std::pair<std::string_view, unsigned> kUnits[] = {
      {"", 0},     {"K", 10},   {"M", 20},   {"G", 30},   {"T", 40},
      {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
  };
  for (const auto& [name, shift] : kUnits) {
    if (unit != name) continue;
    Result<uint64_t> n = ParseNumber(text.substr(0, digits));
    if (!n) break;
    if (*n > (UINT64_MAX >> shift)) {
      return Error::Make(ErrorCode::kInvalidArgument, fmt::format("'{}' is too large", text));
    }
    return *n << shift;
  }
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("'{}' is not a size (a number, optionally with K, M, G, T or "
                                 "KiB, MiB, GiB, TiB)",
                                 text));
}

// "500ms", "30s", "10m", "1h": a unit is required.
Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view unit = text.substr(digits);
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}};
  for (const auto& [name, scale] : kUnits) {
    if (unit != name) continue;
    Result<uint64_t> n = ParseNumber(text.substr(0, digits));
    if (!n) break;
    if (*n == 0 || *n > kMaxTimeoutMs / scale) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("'{}' is out of range 1ms..720h", text));
    }
    return std::chrono::milliseconds(*n * scale);
  }
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("'{}' is not a duration (a number with ms, s, m or h)", text));
}

// "443" or "8000-8100".
Result<std::pair<uint16_t, uint16_t>> ParsePortRange(std::string_view text) {
  size_t dash = text.find('-');
  std::string_view low_text = text.substr(0, dash);
  std::string_view high_text = dash == std::string_view::npos ? low_text : text.substr(dash + 1);
  Result<uint64_t> low = ParseNumber(low_text);
  Result<uint64_t> high = ParseNumber(high_text);
  if (!low || !high || *low < 1 || *high > 65535 || *low > *high) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("'{}' is not a port (1..65535) or a range LOW-HIGH", text));
  }
  return std::pair<uint16_t, uint16_t>(static_cast<uint16_t>(*low), static_cast<uint16_t>(*high));
}

// Every agent profile's API hosts, each once, in profile order: the names
// <egress agent-hosts="..."> may list.
std::vector<std::string_view> KnownAgentHosts() {
  std::vector<std::string_view> hosts;
  for (agents::AgentKind kind : {agents::AgentKind::kClaude, agents::AgentKind::kCodex,
                                 agents::AgentKind::kOpenCode, agents::AgentKind::kCommand}) {
    for (std::string_view host : agents::GetProfile(kind).api_hosts) {
      if (std::find(hosts.begin(), hosts.end(), host) == hosts.end()) hosts.push_back(host);
    }
  }
  return hosts;
}

bool IsProfileName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

class Checker {
 public:
  Checker(const Positions& positions, std::vector<PolicyIssue>& issues)
      : positions_(positions), issues_(issues) {}

  void Issue(const XMLElement* element, std::string message) {
    issues_.push_back(positions_.At(element, std::move(message)));
  }
  void Issue(const XMLElement* element, std::string_view attribute, std::string message) {
    issues_.push_back(positions_.At(element, attribute, std::move(message)));
  }

  // Reports every attribute not in `known`.
  void OnlyAttributes(const XMLElement* element, std::initializer_list<std::string_view> known) {
    for (const XMLAttribute* a = element->FirstAttribute(); a; a = a->Next()) {
      if (std::find(known.begin(), known.end(), a->Name()) == known.end()) {
        Issue(element, a->Name(),
              fmt::format("<{}>: unknown attribute '{}' (expected {})", element->Name(), a->Name(),
                          fmt::join(known, ", ")));
      }
    }
  }

  // Reports text and every child element not in `known`.
  void OnlyChildren(const XMLElement* element, std::initializer_list<std::string_view> known) {
    for (const XMLNode* node = element->FirstChild(); node; node = node->NextSibling()) {
      if (const XMLElement* child = node->ToElement()) {
        if (std::find(known.begin(), known.end(), child->Name()) == known.end()) {
          Issue(child,
                known.size() == 0
                    ? fmt::format("<{}>: takes no child elements, found <{}>", element->Name(),
                                  child->Name())
                    : fmt::format("<{}>: unknown element in <{}> (expected {})", child->Name(),
                                  element->Name(), fmt::join(Bracketed(known), ", ")));
        }
      } else if (const tinyxml2::XMLText* text = node->ToText()) {
        std::string_view value = text->Value();
        if (value.find_first_not_of(" \t\r\n") != std::string_view::npos) {
          Issue(element, fmt::format("<{}>: unexpected text", element->Name()));
        }
      }
    }
  }

  Profile ReadProfile(const XMLElement* element) {
    Profile profile;
    OnlyAttributes(element, {"name", "isolation", "vm-pool"});
    if (const char* isolation = element->Attribute("isolation")) {
      if (auto parsed = ParseIsolation(isolation)) {
        profile.isolation = *parsed;
      } else {
        Issue(element, "isolation",
              fmt::format("<profile>: isolation: '{}' is not namespaces or vm", isolation));
      }
    }
    if (const char* text = element->Attribute("vm-pool")) {
      Result<uint64_t> n = ParseNumber(text);
      if (!n || *n > kMaxVmPool) {
        Issue(element, "vm-pool",
              fmt::format("<profile>: vm-pool: '{}' is not a number in 0..{}", text, kMaxVmPool));
      } else if (*n > 0 && profile.isolation != Isolation::kVm) {
        Issue(element, "vm-pool",
              "<profile>: vm-pool: only a profile with isolation=\"vm\" has a pool of VMs");
      } else {
        profile.vm_pool = static_cast<uint32_t>(*n);
      }
    }
    OnlyChildren(element, {"limits", "egress", "mount", "memory", "credentials"});
    const char* name = element->Attribute("name");
    if (!name) {
      Issue(element, "<profile>: the name attribute is required");
    } else if (!IsProfileName(name)) {
      Issue(element, "name",
            fmt::format("<profile>: name '{}' is not a profile name ([a-z0-9._-], 1..64)", name));
    } else {
      profile.name = name;
    }
    size_t limits_seen = 0;
    size_t egress_seen = 0;
    size_t credentials_seen = 0;
    size_t memory_seen = 0;
    for (const XMLElement* child = element->FirstChildElement(); child;
         child = child->NextSiblingElement()) {
      std::string_view kind = child->Name();
      if (kind == "limits") {
        if (++limits_seen > 1) Issue(child, "<limits>: only one per profile");
        ReadLimits(child, profile.limits);
        limits_element_ = child;
      } else if (kind == "egress") {
        if (++egress_seen > 1) Issue(child, "<egress>: only one per profile");
        ReadEgress(child, profile);
      } else if (kind == "mount") {
        profile.mounts.push_back(ReadMount(child));
        mount_elements_.push_back(child);
      } else if (kind == "credentials") {
        if (++credentials_seen > 1) Issue(child, "<credentials>: only one per profile");
        profile.credentials = ReadCredentials(child);
      } else if (kind == "memory") {
        if (++memory_seen > 1) Issue(child, "<memory>: only one per profile");
        profile.memory = ReadMemory(child);
      }
    }
    if (egress_seen == 0) profile.network = sandbox::NetworkSpec{.enabled = false};
    return profile;
  }

  // The sandbox's own checks on what the profile would give a job, placed
  // on the element (or attribute) the field came from.
  void CheckWithSandbox(const XMLElement* element, const Profile& profile) {
    Result<sandbox::SandboxSpec> spec =
        MakeJobSpec(profile, JobRequest{.argv = {"true"}}, JobEnvironment{});
    if (spec) return;
    const std::string& message = spec.error().message();
    static constexpr std::pair<std::string_view, std::string_view> kLimitFields[] = {
        {"limits.memory_bytes", "memory"},
        {"limits.cpu_millis", "cpu-millis"},
        {"limits.pids", "pids"},
        {"limits.disk_bytes", "disk"}};
    for (const auto& [field, attribute] : kLimitFields) {
      if (message.rfind(field, 0) == 0 && limits_element_) {
        Issue(limits_element_, attribute, fmt::format("<limits>: {}", message));
        return;
      }
    }
    if (message.rfind("binds[", 0) == 0) {
      size_t index = 0;
      std::from_chars(message.data() + 6, message.data() + message.size(), index);
      if (index < mount_elements_.size()) {
        Issue(mount_elements_[index], fmt::format("<mount>: {}", message));
        return;
      }
    }
    Issue(element, fmt::format("<profile>: {}", message));
  }

  void ResetProfileElements() {
    limits_element_ = nullptr;
    mount_elements_.clear();
  }

 private:
  static std::vector<std::string> Bracketed(std::initializer_list<std::string_view> names) {
    std::vector<std::string> out;
    for (std::string_view name : names) out.push_back(fmt::format("<{}>", name));
    return out;
  }

  void ReadLimits(const XMLElement* element, ProfileLimits& limits) {
    OnlyAttributes(element, {"memory", "cpu-millis", "pids", "disk", "timeout"});
    OnlyChildren(element, {});
    auto bytes = [&](const char* attribute, uint64_t& out) {
      const char* text = element->Attribute(attribute);
      if (!text) return;
      Result<uint64_t> n = ParseBytes(text);
      if (!n) {
        Issue(element, attribute, fmt::format("<limits>: {}: {}", attribute, n.error().message()));
      } else {
        out = *n;
      }
    };
    auto count = [&](const char* attribute, uint32_t& out, uint64_t max) {
      const char* text = element->Attribute(attribute);
      if (!text) return;
      Result<uint64_t> n = ParseNumber(text);
      if (!n || *n < 1 || *n > max) {
        Issue(element, attribute,
              fmt::format("<limits>: {}: '{}' is not a number in 1..{}", attribute, text, max));
      } else {
        out = static_cast<uint32_t>(*n);
      }
    };
    bytes("memory", limits.memory_bytes);
    bytes("disk", limits.disk_bytes);
    count("cpu-millis", limits.cpu_millis, 1024 * 1000);
    count("pids", limits.pids, 1'000'000);
    if (const char* text = element->Attribute("timeout")) {
      Result<std::chrono::milliseconds> timeout = ParseDuration(text);
      if (!timeout) {
        Issue(element, "timeout", fmt::format("<limits>: timeout: {}", timeout.error().message()));
      } else {
        limits.timeout = *timeout;
      }
    }
  }

  void ReadEgress(const XMLElement* element, Profile& profile) {
    sandbox::NetworkSpec& network = profile.network;
    network = sandbox::NetworkSpec{.enabled = true, .domain_ports = {443}};
    OnlyAttributes(element, {"domain-ports", "agent-hosts"});
    if (const char* text = element->Attribute("agent-hosts"))
      ReadAgentHosts(element, text, profile);
    OnlyChildren(element, {"allow"});
    if (const char* text = element->Attribute("domain-ports")) {
      network.domain_ports.clear();
      std::string_view list = text;
      size_t start = 0;
      while (start <= list.size()) {
        size_t comma = list.find(',', start);
        if (comma == std::string_view::npos) comma = list.size();
        Result<uint64_t> port = ParseNumber(list.substr(start, comma - start));
        if (!port || *port < 1 || *port > 65535) {
          Issue(
              element, "domain-ports",
              fmt::format("<egress>: domain-ports: '{}' is not a list of ports (1..65535)", text));
          break;
        }
        network.domain_ports.push_back(static_cast<uint16_t>(*port));
        start = comma + 1;
      }
    }
    for (const XMLElement* allow = element->FirstChildElement("allow"); allow;
         allow = allow->NextSiblingElement("allow")) {
      ReadAllow(allow, network);
    }
  }

  // agent-hosts="all" (the default), "none", or a comma-separated list of
  // agent API hosts (only those of them the job's agent profile has).
  void ReadAgentHosts(const XMLElement* element, std::string_view text, Profile& profile) {
    if (text == "all") {
      profile.agent_hosts_mode = AgentHostsMode::kAll;
      return;
    }
    if (text == "none") {
      profile.agent_hosts_mode = AgentHostsMode::kNone;
      return;
    }
    profile.agent_hosts_mode = AgentHostsMode::kListed;
    const std::vector<std::string_view> known = KnownAgentHosts();
    size_t start = 0;
    while (start <= text.size()) {
      size_t comma = text.find(',', start);
      if (comma == std::string_view::npos) comma = text.size();
      std::string_view host = text.substr(start, comma - start);
      while (!host.empty() && host.front() == ' ') host.remove_prefix(1);
      while (!host.empty() && host.back() == ' ') host.remove_suffix(1);
      if (host.empty()) {
        Issue(element, "agent-hosts",
              fmt::format("<egress>: agent-hosts: '{}' has an empty entry (expected all, none or "
                          "a comma-separated list of agent API hosts)",
                          text));
        return;
      }
      if (std::find(known.begin(), known.end(), host) == known.end()) {
        Issue(element, "agent-hosts",
              fmt::format("<egress>: agent-hosts: '{}' is not an agent profile's API host "
                          "(expected all, none or some of: {}); other names go in <allow "
                          "domain=...>",
                          host, fmt::join(known, ", ")));
      } else if (std::find(profile.agent_hosts.begin(), profile.agent_hosts.end(), host) ==
                 profile.agent_hosts.end()) {
        profile.agent_hosts.emplace_back(host);
      }
      start = comma + 1;
    }
  }

  void ReadAllow(const XMLElement* element, sandbox::NetworkSpec& network) {
    OnlyAttributes(element, {"cidr", "domain", "ports", "protocol"});
    OnlyChildren(element, {});
    const char* cidr = element->Attribute("cidr");
    const char* domain = element->Attribute("domain");
    if ((cidr == nullptr) == (domain == nullptr)) {
      Issue(element, "<allow>: needs exactly one of cidr or domain");
      return;
    }
    if (domain) {
      for (const char* attribute : {"ports", "protocol"}) {
        if (element->Attribute(attribute)) {
          Issue(element, attribute,
                fmt::format("<allow>: {} goes with cidr; domains use <egress domain-ports=...>",
                            attribute));
        }
      }
      Result<sandbox::DnsAllowlist> check = sandbox::DnsAllowlist::Create({domain});
      if (!check) {
        Issue(element, "domain", fmt::format("<allow>: domain: {}", check.error().message()));
        return;
      }
      network.allowed_domains.push_back(domain);
      return;
    }
    sandbox::EgressRule rule;
    Result<sandbox::IpPrefix> prefix = sandbox::IpPrefix::Parse(cidr);
    if (!prefix) {
      Issue(element, "cidr", fmt::format("<allow>: cidr: {}", prefix.error().message()));
    } else {
      rule.cidr = prefix->ToString();
    }
    if (const char* ports = element->Attribute("ports")) {
      Result<std::pair<uint16_t, uint16_t>> range = ParsePortRange(ports);
      if (!range) {
        Issue(element, "ports", fmt::format("<allow>: ports: {}", range.error().message()));
      } else {
        rule.port_min = range->first;
        rule.port_max = range->second;
      }
    }
    if (const char* protocol = element->Attribute("protocol")) {
      std::string_view p = protocol;
      if (p == "tcp") {
        rule.protocol = sandbox::Protocol::kTcp;
      } else if (p == "udp") {
        rule.protocol = sandbox::Protocol::kUdp;
      } else if (p == "any") {
        rule.protocol = sandbox::Protocol::kAny;
      } else {
        Issue(element, "protocol",
              fmt::format("<allow>: protocol: '{}' is not tcp, udp or any", protocol));
      }
    }
    network.allow.push_back(rule);
  }

  CredentialGrant ReadCredentials(const XMLElement* element) {
    CredentialGrant grant;
    OnlyAttributes(element, {"scopes", "tenant", "holders"});
    OnlyChildren(element, {});
    const char* scopes = element->Attribute("scopes");
    if (!scopes) {
      Issue(element, "<credentials>: the scopes attribute is required (agent, tenant, global)");
    } else {
      std::string_view list = scopes;
      size_t start = 0;
      while (start <= list.size()) {
        size_t comma = list.find(',', start);
        if (comma == std::string_view::npos) comma = list.size();
        Result<creds::Scope> scope = creds::ParseScope(list.substr(start, comma - start));
        if (!scope) {
          Issue(element, "scopes",
                fmt::format("<credentials>: scopes: {}", scope.error().message()));
          break;
        }
        if (std::find(grant.scopes.begin(), grant.scopes.end(), *scope) != grant.scopes.end()) {
          Issue(
              element, "scopes",
              fmt::format("<credentials>: scopes: '{}' is listed twice", creds::ScopeName(*scope)));
          break;
        }
        grant.scopes.push_back(*scope);
        start = comma + 1;
      }
      // Most specific first, whatever the order written.
      std::sort(grant.scopes.begin(), grant.scopes.end());
    }
    bool tenant_scope = std::find(grant.scopes.begin(), grant.scopes.end(),
                                  creds::Scope::kTenant) != grant.scopes.end();
    const char* tenant = element->Attribute("tenant");
    if (tenant_scope && !tenant) {
      Issue(element, "scopes", "<credentials>: the tenant scope needs a tenant attribute");
    } else if (tenant && !tenant_scope) {
      Issue(element, "tenant", "<credentials>: tenant is only for the tenant scope");
    } else if (tenant && !IsProfileName(tenant)) {
      Issue(element, "tenant",
            fmt::format("<credentials>: tenant '{}' is not a name ([a-z0-9._-], 1..64)", tenant));
    } else if (tenant) {
      grant.tenant = tenant;
    }
    if (const char* text = element->Attribute("holders")) {
      Result<uint64_t> n = ParseNumber(text);
      if (!n || *n < 1 || *n > 64) {
        Issue(element, "holders",
              fmt::format("<credentials>: holders: '{}' is not a number in 1..64", text));
      } else {
        grant.holders = static_cast<uint32_t>(*n);
      }
    }
    return grant;
  }

  memory::Access ReadMemory(const XMLElement* element) {
    OnlyAttributes(element, {"access"});
    OnlyChildren(element, {});
    const char* access = element->Attribute("access");
    if (!access) {
      Issue(element, "<memory>: the access attribute is required (read or read-write)");
      return memory::Access::kRead;
    }
    std::string_view a = access;
    if (a == "read-write") return memory::Access::kReadWrite;
    if (a != "read") {
      Issue(element, "access",
            fmt::format("<memory>: access: '{}' is not read or read-write", access));
    }
    return memory::Access::kRead;
  }

  sandbox::BindMount ReadMount(const XMLElement* element) {
    sandbox::BindMount mount;
    OnlyAttributes(element, {"source", "destination", "access"});
    OnlyChildren(element, {});
    for (const char* attribute : {"source", "destination"}) {
      const char* value = element->Attribute(attribute);
      if (!value) {
        Issue(element, fmt::format("<mount>: the {} attribute is required", attribute));
      } else if (value[0] != '/') {
        Issue(element, attribute,
              fmt::format("<mount>: {}: '{}' is not an absolute path", attribute, value));
      }
    }
    mount.source = element->Attribute("source") ? element->Attribute("source") : "";
    mount.destination = element->Attribute("destination") ? element->Attribute("destination") : "";
    if (const char* access = element->Attribute("access")) {
      std::string_view a = access;
      if (a == "read-only") {
        mount.access = sandbox::BindAccess::kReadOnly;
      } else if (a == "read-write") {
        mount.access = sandbox::BindAccess::kReadWrite;
      } else {
        Issue(element, "access",
              fmt::format("<mount>: access: '{}' is not read-only or read-write", access));
      }
    }
    return mount;
  }

  const Positions& positions_;
  std::vector<PolicyIssue>& issues_;
  const XMLElement* limits_element_ = nullptr;
  std::vector<const XMLElement*> mount_elements_;
};

// "all", "none", or the listed hosts.
nlohmann::json AgentHostsToJson(const Profile& profile) {
  switch (profile.agent_hosts_mode) {
    case AgentHostsMode::kAll: return "all";
    case AgentHostsMode::kNone: return "none";
    case AgentHostsMode::kListed: return profile.agent_hosts;
  }
  return nullptr;
}

Error Refused(std::string_view field, uint64_t asked, const Profile& profile, uint64_t allowed) {
  return Error::Make(ErrorCode::kRefused,
                     fmt::format("limits.{}: {} is more than profile '{}' allows ({})", field,
                                 asked, profile.name, allowed));
}

}  // namespace

const Profile* Policy::Find(std::string_view name) const {
  auto it = profiles.find(name);
  return it == profiles.end() ? nullptr : &it->second;
}

std::string PolicyIssue::ToString() const {
  if (column == 0) return fmt::format("{}: {}", line, message);
  return fmt::format("{}:{}: {}", line, column, message);
}

PolicyCheck CheckPolicy(std::string_view document) {
  PolicyCheck check;
  tinyxml2::XMLDocument xml;
  if (xml.Parse(document.data(), document.size()) != tinyxml2::XML_SUCCESS) {
    // ErrorStr() is "Error=NAME ErrorID=N (0xN) Line number=L: detail".
    std::string_view text = xml.ErrorStr();
    size_t line_at = text.find("Line number=");
    size_t detail_at = line_at == text.npos ? text.npos : text.find(": ", line_at);
    std::string_view detail = detail_at == text.npos ? "" : text.substr(detail_at + 2);
    check.issues.push_back({.line = xml.ErrorLineNum(),
                            .column = 0,
                            .message = fmt::format("XML syntax error: {}{}{}", xml.ErrorName(),
                                                   detail.empty() ? "" : ": ", detail)});
    return check;
  }
  Positions positions(document, xml);
  Checker checker(positions, check.issues);
  const XMLElement* root = xml.RootElement();
  if (!root || std::string_view(root->Name()) != "policy") {
    check.issues.push_back({.line = root ? root->GetLineNum() : 1,
                            .column = 0,
                            .message = fmt::format("the root element must be <policy>, found <{}>",
                                                   root ? root->Name() : "")});
    if (root) check.issues.back() = positions.At(root, check.issues.back().message);
    return check;
  }
  checker.OnlyAttributes(root, {"format"});
  checker.OnlyChildren(root, {"profile"});
  const char* format = root->Attribute("format");
  if (!format) {
    checker.Issue(root, "<policy>: the format attribute is required (format=\"1\")");
  } else if (std::string_view(format) != "1") {
    checker.Issue(
        root, "format",
        fmt::format("<policy>: format '{}' is not supported (this build reads 1)", format));
  }
  Policy policy;
  for (const XMLElement* element = root->FirstChildElement("profile"); element;
       element = element->NextSiblingElement("profile")) {
    checker.ResetProfileElements();
    size_t before = check.issues.size();
    Profile profile = checker.ReadProfile(element);
    if (check.issues.size() != before) continue;
    checker.CheckWithSandbox(element, profile);
    if (policy.profiles.count(profile.name)) {
      checker.Issue(element, "name",
                    fmt::format("<profile>: profile '{}' is defined twice", profile.name));
      continue;
    }
    policy.profiles.emplace(profile.name, std::move(profile));
  }
  if (check.issues.empty()) check.policy = std::move(policy);
  return check;
}

Result<Policy> ParsePolicy(std::string_view document) {
  PolicyCheck check = CheckPolicy(document);
  if (check.ok()) return std::move(*check.policy);
  std::vector<std::string> lines;
  for (const PolicyIssue& issue : check.issues) lines.push_back(issue.ToString());
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("invalid policy:\n{}", fmt::join(lines, "\n")));
}

std::string_view DefaultPolicyDocument() {
  return kDefaultPolicy;
}

Result<sandbox::SandboxSpec> MakeJobSpec(const Profile& profile, const JobRequest& job,
                                         const JobEnvironment& environment) {
  const ProfileLimits& allowed = profile.limits;
  const LimitsRequest& asked = job.limits;
  if (asked.memory_bytes && *asked.memory_bytes > allowed.memory_bytes) {
    return Refused("memory_bytes", *asked.memory_bytes, profile, allowed.memory_bytes);
  }
  if (asked.cpu_millis && *asked.cpu_millis > allowed.cpu_millis) {
    return Refused("cpu_millis", *asked.cpu_millis, profile, allowed.cpu_millis);
  }
  if (asked.pids && *asked.pids > allowed.pids) {
    return Refused("pids", *asked.pids, profile, allowed.pids);
  }
  if (asked.disk_bytes && *asked.disk_bytes > allowed.disk_bytes) {
    return Refused("disk_bytes", *asked.disk_bytes, profile, allowed.disk_bytes);
  }
  uint64_t allowed_timeout = static_cast<uint64_t>(allowed.timeout.count());
  if (asked.timeout_ms && *asked.timeout_ms > allowed_timeout) {
    return Refused("timeout_ms", *asked.timeout_ms, profile, allowed_timeout);
  }

  sandbox::SandboxSpec spec;
  spec.base_kind = environment.base_kind;
  spec.base = environment.base;
  spec.binds = profile.mounts;
  spec.argv = job.argv;
  for (const auto& [name, value] : job.env) spec.env.push_back(fmt::format("{}={}", name, value));
  spec.cwd = job.cwd.value_or(spec.workspace);
  spec.limits.memory_bytes = asked.memory_bytes.value_or(allowed.memory_bytes);
  spec.limits.cpu_millis = asked.cpu_millis.value_or(allowed.cpu_millis);
  spec.limits.pids = asked.pids.value_or(allowed.pids);
  spec.limits.disk_bytes = asked.disk_bytes.value_or(allowed.disk_bytes);
  spec.timeout = asked.timeout_ms ? std::chrono::milliseconds(*asked.timeout_ms) : allowed.timeout;
  spec.network = profile.network;
  for (std::string& domain : AgentEgressDomains(profile, job.agent_hosts)) {
    spec.network.allowed_domains.push_back(std::move(domain));
  }
  TRY(sandbox::ValidateSpec(spec));
  return spec;
}

Result<void> CheckWorkspaceGit(const Profile& profile, const GitUrl& url) {
  const sandbox::NetworkSpec& network = profile.network;
  if (!network.enabled) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("workspace_git.url: profile '{}' has no network (no <egress>), "
                                   "so its job cannot clone from {}",
                                   profile.name, url.host));
  }
  sandbox::DnsAllowlist allowlist = TRY(sandbox::DnsAllowlist::Create(network.allowed_domains));
  if (!allowlist.Allows(url.host)) {
    return Error::Make(
        ErrorCode::kRefused,
        fmt::format("workspace_git.url: host '{}' is not allowed by profile '{}''s egress "
                    "(allowed domains: {}); add <allow domain=\"{}\"/> to its <egress>",
                    url.host, profile.name,
                    network.allowed_domains.empty()
                        ? std::string("none")
                        : fmt::format("{}", fmt::join(network.allowed_domains, ", ")),
                    url.host));
  }
  const std::vector<uint16_t>& ports = network.domain_ports;
  if (std::find(ports.begin(), ports.end(), url.port) == ports.end()) {
    return Error::Make(ErrorCode::kRefused,
                       fmt::format("workspace_git.url: port {} is not among profile '{}''s "
                                   "domain ports ({})",
                                   url.port, profile.name, fmt::join(ports, ", ")));
  }
  return {};
}

void CloneIntoWorkspace(sandbox::SandboxSpec& spec, const WorkspaceGitRequest& git) {
  // The URL and the ref reach the script as positional parameters, never
  // as text pasted into it: both are the client's. No password prompt on a
  // 401, no protocol but http(s) (a redirect or a submodule cannot switch
  // to file:// or ssh). The whole history: a shallow clone is not served
  // by git's dumb HTTP protocol (plain file servers), and agents read the
  // log. git's own output goes to stderr: an agent's stdout is its event
  // stream.
  static constexpr std::string_view kScript =
      "url=$1 ref=$2 dir=$3; shift 3\n"
      "clone() { GIT_TERMINAL_PROMPT=0 git -c protocol.allow=never -c protocol.http.allow=always "
      "-c protocol.https.allow=always clone --quiet \"$@\" >&2; }\n"
      "if [ -n \"$ref\" ]; then clone --branch \"$ref\" -- \"$url\" \"$dir\"; "
      "else clone -- \"$url\" \"$dir\"; fi\n"
      "status=$?\n"
      "if [ $status -ne 0 ]; then\n"
      "  echo \"ralphd: workspace_git: cloning $url failed (git exit $status)\" >&2\n"
      "  exit 125\n"
      "fi\n"
      "exec \"$@\"\n";
  static_assert(kCloneFailedExit == 125, "the script's exit status");
  std::vector<std::string> argv = {"/bin/sh",      "-c",    std::string(kScript),
                                   "ralphd-clone", git.url, git.ref.value_or(""),
                                   spec.workspace};
  argv.insert(argv.end(), spec.argv.begin(), spec.argv.end());
  spec.argv = std::move(argv);
}

std::vector<std::string> AgentEgressDomains(const Profile& profile,
                                            const std::vector<std::string>& agent_hosts) {
  std::vector<std::string> out;
  // No <egress>: no network at all, for an agent job too.
  if (!profile.network.enabled || profile.agent_hosts_mode == AgentHostsMode::kNone) return out;
  const std::vector<std::string>& listed = profile.agent_hosts;
  const std::vector<std::string>& already = profile.network.allowed_domains;
  for (const std::string& host : agent_hosts) {
    if (profile.agent_hosts_mode == AgentHostsMode::kListed &&
        std::find(listed.begin(), listed.end(), host) == listed.end()) {
      continue;
    }
    if (std::find(already.begin(), already.end(), host) != already.end()) continue;
    if (std::find(out.begin(), out.end(), host) != out.end()) continue;
    out.push_back(host);
  }
  return out;
}

Result<Isolation> JobIsolation(const Profile& profile, std::optional<Isolation> requested,
                               const VmSupport& vm) {
  Isolation isolation = profile.isolation;
  if (requested) {
    if (*requested < profile.isolation) {
      return Error::Make(
          ErrorCode::kRefused,
          fmt::format("isolation: '{}' is less than profile '{}' requires ({})",
                      IsolationName(*requested), profile.name, IsolationName(profile.isolation)));
    }
    isolation = *requested;
  }
  if (isolation == Isolation::kVm && !vm.available) {
    return Error::Make(
        ErrorCode::kUnsupported,
        fmt::format("isolation: {} requires vm, and this machine cannot run a VM "
                    "job: {}",
                    requested == Isolation::kVm ? std::string("the job")
                                                : fmt::format("profile '{}'", profile.name),
                    vm.reason));
  }
  return isolation;
}

nlohmann::json ProfileToJson(const Profile& profile) {
  nlohmann::json allow = nlohmann::json::array();
  for (const sandbox::EgressRule& rule : profile.network.allow) {
    allow.push_back({{"cidr", rule.cidr},
                     {"port_min", rule.port_min},
                     {"port_max", rule.port_max},
                     {"protocol", rule.protocol == sandbox::Protocol::kTcp   ? "tcp"
                                  : rule.protocol == sandbox::Protocol::kUdp ? "udp"
                                                                             : "any"}});
  }
  nlohmann::json mounts = nlohmann::json::array();
  for (const sandbox::BindMount& mount : profile.mounts) {
    mounts.push_back(
        {{"source", mount.source},
         {"destination", mount.destination},
         {"access", mount.access == sandbox::BindAccess::kReadOnly ? "read-only" : "read-write"}});
  }
  nlohmann::json out = {{"name", profile.name},
                        {"isolation", IsolationName(profile.isolation)},
                        {"vm_pool", profile.vm_pool},
                        {"limits",
                         {{"memory_bytes", profile.limits.memory_bytes},
                          {"cpu_millis", profile.limits.cpu_millis},
                          {"pids", profile.limits.pids},
                          {"disk_bytes", profile.limits.disk_bytes},
                          {"timeout_ms", profile.limits.timeout.count()}}},
                        {"network",
                         {{"enabled", profile.network.enabled},
                          {"allow", allow},
                          {"domains", profile.network.allowed_domains},
                          {"domain_ports", profile.network.domain_ports},
                          {"agent_hosts", AgentHostsToJson(profile)}}},
                        {"mounts", mounts}};
  out["memory"] = profile.memory ? nlohmann::json(memory::AccessName(*profile.memory))
                                 : nlohmann::json(nullptr);
  if (profile.credentials) {
    nlohmann::json scopes = nlohmann::json::array();
    for (creds::Scope scope : profile.credentials->scopes)
      scopes.push_back(creds::ScopeName(scope));
    out["credentials"] = {{"scopes", scopes}, {"holders", profile.credentials->holders}};
    if (!profile.credentials->tenant.empty()) {
      out["credentials"]["tenant"] = profile.credentials->tenant;
    }
  }
  return out;
}

}  // namespace ralph::ralphd
