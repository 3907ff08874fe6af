// Deciding on DNS messages (pure, over c-ares): what to do with a job's query,
// the REFUSED/SERVFAIL answers, and which addresses an upstream answer opens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "platform/result.h"
#include "sandbox/net/dns_allowlist.h"
#include "sandbox/net/ip_prefix.h"

namespace ralph::sandbox {

enum class DnsAction {
  kForward,  // allowlisted: send upstream
  kRefuse,   // well-formed but not allowlisted (or not a standard query)
  kFormErr,  // unparsable, or not exactly one question
};

struct DnsQueryDecision {
  DnsAction action = DnsAction::kFormErr;
  std::string name;  // normalized question name ("" when unparsable)
  uint16_t type = 0;
  uint16_t id = 0;
  std::string reason;  // "dns: name not allowed", ...
};

DnsQueryDecision DecideDnsQuery(const std::vector<uint8_t>& query, const DnsAllowlist& allowlist);

// Response codes (RFC 1035 4.1.1) the forwarder answers with.
inline constexpr uint8_t kDnsFormErr = 1;
inline constexpr uint8_t kDnsServFail = 2;
inline constexpr uint8_t kDnsRefused = 5;

// An answer to `query` with `rcode` (kDnsRefused, ...) and no records.
// When the query cannot be parsed, a bare header echoing its id.
std::vector<uint8_t> MakeDnsError(const std::vector<uint8_t>& query, uint8_t rcode);

struct DnsAddress {
  IpPrefix address;
  uint32_t ttl = 0;  // seconds, as the record says
};

// Parses an upstream response to a query for `name` with id `id`.
// kCorrupt when unparsable, not a response, or id/question do not match.
// Returns the A and AAAA records of the answer section.
Result<std::vector<DnsAddress>> ExtractDnsAddresses(const std::vector<uint8_t>& response,
                                                    uint16_t id, const std::string& name);

}  // namespace ralph::sandbox
