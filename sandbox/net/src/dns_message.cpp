#include "sandbox/net/dns_message.h"

#include <ldns/ldns.h>

#include <cstdlib>
#include <memory>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

struct PktDeleter {
  void operator()(ldns_pkt* pkt) const { ldns_pkt_free(pkt); }
};
using PktPtr = std::unique_ptr<ldns_pkt, PktDeleter>;
struct MallocDeleter {
  void operator()(void* p) const { free(p); }
};

PktPtr Parse(const std::vector<uint8_t>& wire) {
  ldns_pkt* pkt = nullptr;
  if (ldns_wire2pkt(&pkt, wire.data(), wire.size()) != LDNS_STATUS_OK) return nullptr;
  return PktPtr(pkt);
}

std::string QuestionName(const ldns_pkt* pkt) {
  ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(pkt), 0);
  if (!question) return "";
  std::unique_ptr<char, MallocDeleter> text(ldns_rdf2str(ldns_rr_owner(question)));
  if (!text) return "";
  return text.get();
}

}  // namespace

DnsQueryDecision DecideDnsQuery(const std::vector<uint8_t>& query, const DnsAllowlist& allowlist) {
  DnsQueryDecision decision;
  if (query.size() >= 2) decision.id = static_cast<uint16_t>(query[0] << 8 | query[1]);
  PktPtr pkt = Parse(query);
  if (!pkt) {
    decision.reason = "dns: malformed query";
    return decision;
  }
  if (ldns_pkt_qr(pkt.get()) || ldns_pkt_qdcount(pkt.get()) != 1 ||
      ldns_rr_list_rr_count(ldns_pkt_question(pkt.get())) != 1) {
    decision.reason = "dns: not exactly one question";
    return decision;
  }
  ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(pkt.get()), 0);
  decision.type = static_cast<uint16_t>(ldns_rr_get_type(question));
  std::string raw = QuestionName(pkt.get());
  decision.name = NormalizeDnsName(raw);
  if (ldns_pkt_get_opcode(pkt.get()) != LDNS_PACKET_QUERY) {
    decision.action = DnsAction::kRefuse;
    decision.reason = "dns: not a standard query";
    return decision;
  }
  if (decision.name.empty()) {
    // Escaped bytes, empty labels: nothing an allowlist can name.
    decision.name = raw;
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
  PktPtr pkt = Parse(query);
  if (pkt) {
    ldns_pkt_set_qr(pkt.get(), true);
    ldns_pkt_set_ra(pkt.get(), true);
    ldns_pkt_set_aa(pkt.get(), false);
    ldns_pkt_set_rcode(pkt.get(), rcode);
    uint8_t* wire = nullptr;
    size_t size = 0;
    if (ldns_pkt2wire(&wire, pkt.get(), &size) == LDNS_STATUS_OK) {
      std::unique_ptr<uint8_t, MallocDeleter> owned(wire);
      return std::vector<uint8_t>(wire, wire + size);
    }
  }
  // A bare 12-byte header: id echoed, QR set, the rcode, no sections.
  std::vector<uint8_t> header(12, 0);
  if (query.size() >= 2) {
    header[0] = query[0];
    header[1] = query[1];
  }
  header[2] = 0x80;
  header[3] = static_cast<uint8_t>(0x80 | (rcode & 0x0f));
  return header;
}

Result<std::vector<DnsAddress>> ExtractDnsAddresses(const std::vector<uint8_t>& response,
                                                    uint16_t id, const std::string& name) {
  PktPtr pkt = Parse(response);
  if (!pkt) return Error::Make(ErrorCode::kCorrupt, "upstream answer does not parse");
  if (!ldns_pkt_qr(pkt.get())) {
    return Error::Make(ErrorCode::kCorrupt, "upstream sent a query, not an answer");
  }
  if (ldns_pkt_id(pkt.get()) != id) {
    return Error::Make(ErrorCode::kCorrupt, fmt::format("upstream answer id {} != query id {}",
                                                        ldns_pkt_id(pkt.get()), id));
  }
  std::string answered = NormalizeDnsName(QuestionName(pkt.get()));
  if (answered != name) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("upstream answered \"{}\", asked \"{}\"", answered, name));
  }
  std::vector<DnsAddress> addresses;
  ldns_rr_list* answer = ldns_pkt_answer(pkt.get());
  for (size_t i = 0; i < ldns_rr_list_rr_count(answer); ++i) {
    ldns_rr* rr = ldns_rr_list_rr(answer, i);
    ldns_rr_type type = ldns_rr_get_type(rr);
    if (type != LDNS_RR_TYPE_A && type != LDNS_RR_TYPE_AAAA) continue;
    ldns_rdf* rdf = ldns_rr_rdf(rr, 0);
    size_t expected = type == LDNS_RR_TYPE_A ? 4 : 16;
    if (!rdf || ldns_rdf_size(rdf) != expected) continue;
    addresses.push_back({IpPrefix::Address(type == LDNS_RR_TYPE_A ? IpFamily::kV4 : IpFamily::kV6,
                                           ldns_rdf_data(rdf)),
                         ldns_rr_ttl(rr)});
  }
  return addresses;
}

}  // namespace ralph::sandbox
