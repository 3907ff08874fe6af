#include "sandbox/net/dns_message.h"

#include <ares.h>
#include <arpa/inet.h>

#include <array>
#include <cstddef>
#include <memory>
#include <optional>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

// c-ares, not ldns: any use of ldns links its DNSSEC code (rr.o needs
// dnssec.o), and with it most of libcrypto, into the statically linked
// launcher, whose every start then pays a page fault per page of
// libcrypto's relocated tables (milliseconds per start). c-ares parses names
// (compression, loops, escaping) and A/AAAA answers; the fixed-size header
// and the record framing around them are RFC 1035 4.1.

constexpr size_t kHeaderSize = 12;
constexpr size_t kFixedRecordSize = 10;  // type, class, ttl, rdlength
constexpr size_t kMaxAnswers = 64;       // A + AAAA records taken from one answer

struct Header {
  uint16_t id = 0;
  bool response = false;
  uint8_t opcode = 0;
  uint16_t counts[4] = {};  // question, answer, authority, additional
};

uint16_t Read16(const std::vector<uint8_t>& wire, size_t at) {
  return static_cast<uint16_t>(wire[at] << 8 | wire[at + 1]);
}

std::optional<Header> ReadHeader(const std::vector<uint8_t>& wire) {
  if (wire.size() < kHeaderSize) return std::nullopt;
  Header header;
  header.id = Read16(wire, 0);
  header.response = (wire[2] & 0x80) != 0;
  header.opcode = static_cast<uint8_t>((wire[2] >> 3) & 0x0f);
  for (size_t i = 0; i < 4; ++i) header.counts[i] = Read16(wire, 4 + 2 * i);
  return header;
}

struct ReleaseAresString {
  void operator()(char* text) const { ares_free_string(text); }
};

// The name at `at` in presentation form without the trailing dot ("" for the
// root), escaped by c-ares (so a '.' inside a label never passes for a label
// boundary), and the offset just past it; nullopt when it does not parse.
std::optional<std::pair<std::string, size_t>> ReadName(const std::vector<uint8_t>& wire,
                                                       size_t at) {
  char* text = nullptr;
  long length = 0;
  if (at >= wire.size() ||
      ares_expand_name(wire.data() + at, wire.data(), static_cast<int>(wire.size()), &text,
                       &length) != ARES_SUCCESS)
    return std::nullopt;
  std::unique_ptr<char, ReleaseAresString> owned(text);
  return std::make_pair(std::string(text), at + static_cast<size_t>(length));
}

struct Question {
  std::string name;
  uint16_t type = 0;
  size_t end = 0;  // offset just past the question section
};

// The single question right after the header.
std::optional<Question> ReadQuestion(const std::vector<uint8_t>& wire) {
  auto name = ReadName(wire, kHeaderSize);
  if (!name || wire.size() - name->second < 4) return std::nullopt;
  return Question{name->first, Read16(wire, name->second), name->second + 4};
}

// True when `count` records start at `at` and end exactly at the message's end.
bool RecordsFill(const std::vector<uint8_t>& wire, size_t at, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    auto name = ReadName(wire, at);
    if (!name || wire.size() - name->second < kFixedRecordSize) return false;
    size_t data = name->second + kFixedRecordSize;
    size_t length = Read16(wire, data - 2);
    if (wire.size() - data < length) return false;
    at = data + length;
  }
  return at == wire.size();
}

static_assert(offsetof(ares_addrttl, ipaddr) == 0 && offsetof(ares_addr6ttl, ip6addr) == 0,
              "AppendAddresses reads the address at the start of the record");

// Appends the A (ares_addrttl) or AAAA (ares_addr6ttl) records c-ares's
// `parse` finds in `response`: kCorrupt when it does not parse.
template <typename Record>
Result<void> AppendAddresses(const std::vector<uint8_t>& response, IpFamily family,
                             int (*parse)(const unsigned char*, int, hostent**, Record*, int*),
                             std::vector<DnsAddress>* addresses) {
  std::array<Record, kMaxAnswers> records;
  int count = static_cast<int>(records.size());
  int status =
      parse(response.data(), static_cast<int>(response.size()), nullptr, records.data(), &count);
  if (status == ARES_ENODATA) return {};
  if (status != ARES_SUCCESS)
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("upstream answer does not parse: {}", ares_strerror(status)));
  for (int i = 0; i < count; ++i) {
    // The first member (in_addr or ares_in6_addr) holds the address in
    // network order, as bytes.
    addresses->push_back({IpPrefix::Address(family, reinterpret_cast<const uint8_t*>(&records[i])),
                          static_cast<uint32_t>(std::max(records[i].ttl, 0))});
  }
  return {};
}

}  // namespace

DnsQueryDecision DecideDnsQuery(const std::vector<uint8_t>& query, const DnsAllowlist& allowlist) {
  DnsQueryDecision decision;
  std::optional<Header> header = ReadHeader(query);
  if (!header) {
    decision.reason = "dns: malformed query";
    return decision;
  }
  decision.id = header->id;
  if (header->response || header->counts[0] != 1) {
    decision.reason = "dns: not exactly one question";
    return decision;
  }
  // A query is forwarded as it came: nothing may ride along but the
  // question and an additional section (EDNS) that parses to the last byte.
  std::optional<Question> question = ReadQuestion(query);
  if (!question || header->counts[1] != 0 || header->counts[2] != 0 ||
      !RecordsFill(query, question->end, header->counts[3])) {
    decision.reason = "dns: malformed query";
    return decision;
  }
  decision.type = question->type;
  decision.name = NormalizeDnsName(question->name);
  if (header->opcode != 0) {  // QUERY
    decision.action = DnsAction::kRefuse;
    decision.reason = "dns: not a standard query";
    return decision;
  }
  if (decision.name.empty()) {
    // Escaped bytes, empty labels: nothing an allowlist can name.
    decision.name = question->name;
    decision.action = DnsAction::kRefuse;
    decision.reason = "dns: name not allowed";
    return decision;
  }
  if (!allowlist.Allows(decision.name)) {
    decision.action = DnsAction::kRefuse;
    decision.reason = "dns: name not allowed";
    return decision;
  }
  decision.action = DnsAction::kForward;
  decision.reason = "dns: allowed";
  return decision;
}

std::vector<uint8_t> MakeDnsError(const std::vector<uint8_t>& query, uint8_t rcode) {
  // The header (id, opcode and RD echoed; QR, RA and the rcode set), then the
  // question when there is exactly one that parses, and no records.
  std::vector<uint8_t> answer(kHeaderSize, 0);
  if (query.size() >= 2) {
    answer[0] = query[0];
    answer[1] = query[1];
  }
  answer[2] = 0x80;
  answer[3] = static_cast<uint8_t>(0x80 | (rcode & 0x0f));
  std::optional<Header> header = ReadHeader(query);
  if (!header || header->counts[0] != 1) return answer;
  std::optional<Question> question = ReadQuestion(query);
  if (!question) return answer;
  answer[2] = static_cast<uint8_t>(0x80 | (query[2] & 0x79));  // opcode and RD
  answer[5] = 1;                                               // one question
  // Copied as it came: a compression pointer in it still points into an
  // identical header and question.
  answer.insert(answer.end(), query.begin() + kHeaderSize,
                query.begin() + static_cast<long>(question->end));
  return answer;
}

Result<std::vector<DnsAddress>> ExtractDnsAddresses(const std::vector<uint8_t>& response,
                                                    uint16_t id, const std::string& name) {
  std::optional<Header> header = ReadHeader(response);
  std::optional<Question> question;
  if (header && header->counts[0] == 1) question = ReadQuestion(response);
  if (!question) return Error::Make(ErrorCode::kCorrupt, "upstream answer does not parse");
  if (!header->response)
    return Error::Make(ErrorCode::kCorrupt, "upstream sent a query, not an answer");
  if (header->id != id) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("upstream answer id {} != query id {}", header->id, id));
  }
  std::string answered = NormalizeDnsName(question->name);
  if (answered != name) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("upstream answered \"{}\", asked \"{}\"", answered, name));
  }
  // c-ares takes the records of the question's name and of the CNAME chain
  // from it (a record's TTL is capped by the chain's), nothing else.
  std::vector<DnsAddress> addresses;
  TRY(AppendAddresses<ares_addrttl>(response, IpFamily::kV4, ares_parse_a_reply, &addresses));
  TRY(AppendAddresses<ares_addr6ttl>(response, IpFamily::kV6, ares_parse_aaaa_reply, &addresses));
  return addresses;
}

}  // namespace ralph::sandbox
