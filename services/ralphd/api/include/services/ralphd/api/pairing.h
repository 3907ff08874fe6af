// Password-less pairing (docs/api.md "Pairing"): the pairing string an
// operator reads from the console, the proof a client sends with its CSR,
// and the registry of offers and paired clients in SQLite on the state
// directory.
//
//   auto registry = TRY(PairingRegistry::Open(state + "/pairings.db", *identity, audit));
//   PairingString offer = TRY(registry->CreateOffer("192.168.1.20:8443"));
//   std::string text = offer.Format();       // "ralphos-pair:v1?addr=...&spki=...&..."
//   std::string qr = TRY(RenderQrForTerminal(text));
//
// The client pins offer.spki_sha256 against the TLS handshake, makes a key
// and a CSR, and sends PairRequest with proof = ComputePairingProof(...)
// over that connection; the server calls registry->Pair() with the same
// session's exporter, which signs a client certificate with the device CA.
// A TLS session's first request is checked with registry->Authorize(peer
// certificate), its later ones with registry->Recheck(client id).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "platform/result.h"
#include "platform/sha256.h"
#include "services/audit/audit_log.h"
#include "services/ralphd/api/identity.h"

struct sqlite3;

namespace ralph::ralphd::api {

inline constexpr size_t kPairingSecretSize = 16;  // 128 bits
inline constexpr size_t kPairingIdSize = 8;       // 64 bits, 16 hex digits
// RFC 8446 section 7.5 exporter (empty context): binds a proof to one TLS session.
inline constexpr std::string_view kPairingExporterLabel = "EXPORTER-ralphos-pair-v1";
inline constexpr size_t kPairingExporterSize = 32;
inline constexpr std::string_view kPairingStringPrefix = "ralphos-pair:v1?";

using PairingSecret = std::array<uint8_t, kPairingSecretSize>;

// ralphos-pair:v1?addr=HOST:PORT&spki=<64 hex>&id=<16 hex>&secret=<32 hex>&exp=<unix seconds>
struct PairingString {
  std::string address;  // "192.168.1.20:8443", "[fe80::1]:8443", "ralph.local:8443"
  Sha256Digest spki_sha256{};
  std::string id;  // 16 lower-case hex digits
  PairingSecret secret{};
  int64_t expires_unix = 0;

  std::string Format() const;
  // Strict: the prefix, exactly these five fields once each in this order,
  // each well-formed; kInvalidArgument naming the first field that is not.
  static Result<PairingString> Parse(std::string_view text);
};

// HMAC-SHA256(secret, "ralphos-pair-v1" 0x00 id 0x00 exporter csr_spki_sha256).
std::array<uint8_t, 32> ComputePairingProof(const PairingSecret& secret, std::string_view id,
                                            std::span<const uint8_t> exporter,
                                            const Sha256Digest& csr_spki_sha256);

// The SHA-256 of the CSR's SubjectPublicKeyInfo (what the proof binds);
// kInvalidArgument for a CSR that does not parse.
Result<Sha256Digest> CsrSpkiSha256(std::string_view csr_pem);

// The body of POST /v1/pair.
struct PairRequest {
  std::string id;
  std::string name;  // 1..64 of [A-Za-z0-9 ._-], the client's label
  std::string csr_pem;
  std::array<uint8_t, 32> proof{};
};
// Strict JSON: an object with exactly id, name, csr, proof (all strings);
// kInvalidArgument naming the field that is missing, unknown, of the wrong
// type or out of range.
Result<PairRequest> ParsePairRequest(std::string_view json);
std::string PairRequestToJson(const PairRequest& request);

// The client's side: a fresh P-256 key and a CSR signed by it.
struct ClientKeyAndCsr {
  std::string key_pem;
  std::string csr_pem;
};
Result<ClientKeyAndCsr> MakeClientKeyAndCsr(std::string_view name);

// The QR code of `text` for a terminal: two modules per character cell
// (Unicode half blocks), dark on light, with the quiet zone.
Result<std::string> RenderQrForTerminal(std::string_view text);

struct PairedClient {
  std::string id;  // the certificate's serial, lower-case hex
  std::string name;
  std::string spki_sha256_hex;
  int64_t paired_unix = 0;
  int64_t expires_unix = 0;
  int64_t revoked_unix = 0;  // 0: not revoked
};

struct PairingOptions {
  std::chrono::seconds offer_ttl{600};
  std::chrono::seconds client_validity{std::chrono::hours(24 * 365)};
  // Pair() calls of any kind within one minute; the rest get kBusy.
  int max_attempts_per_minute = 10;
  // Wrong proofs for one offer before it is burnt.
  int max_failures_per_offer = 3;
};

// What Pair() returns to the client.
struct PairResult {
  PairedClient client;
  std::string certificate_pem;
  std::string ca_pem;
};

class PairingRegistry {
 public:
  // Opens or creates the registry (0600). `identity` and `audit` are
  // borrowed and must outlive it; the clock is the identity's.
  static Result<std::unique_ptr<PairingRegistry>> Open(const std::string& path,
                                                       const DeviceIdentity& identity,
                                                       audit::AuditSinkInterface& audit,
                                                       PairingOptions options = {});
  ~PairingRegistry();
  PairingRegistry(const PairingRegistry&) = delete;
  PairingRegistry& operator=(const PairingRegistry&) = delete;

  // A fresh one-time offer for clients reaching the API at `address`.
  Result<PairingString> CreateOffer(std::string_view address);

  // Checks and consumes the offer and signs the CSR. `exporter` is this
  // TLS session's kPairingExporterLabel exporter. Errors:
  //   kBusy                too many attempts this minute
  //   kNotFound            no such offer
  //   kInvalidState        the offer was used, burnt or expired
  //   kVerificationFailed  the proof does not match (counts toward burning)
  //   kInvalidArgument     the CSR or name is unacceptable
  Result<PairResult> Pair(const PairRequest& request, std::span<const uint8_t> exporter,
                          std::string_view remote);

  // The client a request comes from, when its certificate is one this
  // device issued, is inside its validity and is paired and not revoked.
  // kPermissionDenied naming the reason otherwise.
  Result<PairedClient> Authorize(X509* peer_certificate) const;
  // A later request on a TLS session whose certificate Authorize accepted
  // (TLS 1.3 has no renegotiation and the server asks for no post-handshake
  // certificate, so the certificate is the session's): only what can
  // change since is checked, in memory and without a signature check — the
  // client is still paired, not revoked, and not expired (the expiry
  // recorded when its certificate was issued). kPermissionDenied as
  // Authorize's.
  Result<PairedClient> Recheck(std::string_view client_id) const;

  Result<std::vector<PairedClient>> List() const;
  // kNotFound for an unknown id; revoking twice is kInvalidState.
  Result<void> Revoke(std::string_view client_id, std::string_view actor);

 private:
  struct DbDeleter {
    void operator()(sqlite3* db) const;
  };
  PairingRegistry(const DeviceIdentity& identity, audit::AuditSinkInterface& audit,
                  PairingOptions options)
      : identity_(identity), audit_(audit), options_(options) {}
  Result<void> Load();
  Error DbError(int rc, std::string_view what) const;
  Result<void> Audit(std::string_view type, std::string_view subject, nlohmann::json details);

  const DeviceIdentity& identity_;
  audit::AuditSinkInterface& audit_;
  PairingOptions options_;
  std::string path_;
  std::unique_ptr<sqlite3, DbDeleter> db_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, PairedClient> clients_;
  std::deque<std::chrono::system_clock::time_point> attempts_;
};

}  // namespace ralph::ralphd::api
