// The pairing string, the proof and the pairing request body.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <qrencode.h>

#include <charconv>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ossl.h"
#include "services/ralphd/api/pairing.h"

namespace ralph::ralphd::api {
namespace {

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

// HOST:PORT where HOST is a DNS name, an IPv4 address or a bracketed IPv6
// address, and PORT is 1..65535.
Result<void> CheckAddress(std::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Invalid(fmt::format("pairing string field addr \"{}\" is not HOST:PORT", address));
  }
  std::string_view host = address.substr(0, colon);
  std::string_view port = address.substr(colon + 1);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
    return Invalid(fmt::format("pairing string field addr has port \"{}\", not 1..65535", port));
  }
  bool bracketed = host.size() > 2 && host.front() == '[' && host.back() == ']';
  std::string_view allowed = bracketed ? "0123456789abcdefABCDEF:.%[]" : "";
  for (char c : host) {
    bool ok = bracketed ? allowed.find(c) != std::string_view::npos
                        : (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-');
    if (!ok) {
      return Invalid(
          fmt::format("pairing string field addr has host \"{}\" with character '{}'", host, c));
    }
  }
  if (host.size() > 253) return Invalid("pairing string field addr has a host over 253 characters");
  return {};
}

}  // namespace

std::string PairingString::Format() const {
  return fmt::format("{}addr={}&spki={}&id={}&secret={}&exp={}", kPairingStringPrefix, address,
                     DigestToHex(spki_sha256), id, ossl::HexOf(secret), expires_unix);
}

Result<PairingString> PairingString::Parse(std::string_view text) {
  if (!text.starts_with(kPairingStringPrefix)) {
    return Invalid(fmt::format("a pairing string starts with \"{}\"", kPairingStringPrefix));
  }
  text.remove_prefix(kPairingStringPrefix.size());
  constexpr std::string_view kFields[] = {"addr", "spki", "id", "secret", "exp"};
  std::string_view values[5];
  for (size_t i = 0; i < 5; ++i) {
    size_t amp = text.find('&');
    std::string_view pair = text.substr(0, amp);
    size_t eq = pair.find('=');
    if (eq == std::string_view::npos || pair.substr(0, eq) != kFields[i]) {
      return Invalid(fmt::format("pairing string field {} expected where \"{}\" is", kFields[i],
                                 pair.substr(0, eq)));
    }
    values[i] = pair.substr(eq + 1);
    if (amp == std::string_view::npos) {
      if (i != 4) {
        return Invalid(fmt::format("pairing string ends before field {}", kFields[i + 1]));
      }
      text = {};
    } else {
      if (i == 4) return Invalid("pairing string has fields after exp");
      text.remove_prefix(amp + 1);
    }
  }
  PairingString out;
  TRY(CheckAddress(values[0]));
  out.address = std::string(values[0]);
  auto spki = TRY(ossl::BytesFromHex(values[1], kSha256Size, "pairing string field spki"));
  std::copy(spki.begin(), spki.end(), out.spki_sha256.begin());
  TRY(ossl::BytesFromHex(values[2], kPairingIdSize, "pairing string field id"));
  out.id = std::string(values[2]);
  for (char& c : out.id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto secret =
      TRY(ossl::BytesFromHex(values[3], kPairingSecretSize, "pairing string field secret"));
  std::copy(secret.begin(), secret.end(), out.secret.begin());
  auto [end, ec] =
      std::from_chars(values[4].data(), values[4].data() + values[4].size(), out.expires_unix);
  if (ec != std::errc() || end != values[4].data() + values[4].size() || out.expires_unix <= 0) {
    return Invalid(
        fmt::format("pairing string field exp \"{}\" is not a positive integer", values[4]));
  }
  return out;
}

std::array<uint8_t, 32> ComputePairingProof(const PairingSecret& secret, std::string_view id,
                                            std::span<const uint8_t> exporter,
                                            const Sha256Digest& csr_spki_sha256) {
  std::string message("ralphos-pair-v1");
  message.push_back('\0');
  message.append(id);
  message.push_back('\0');
  message.append(reinterpret_cast<const char*>(exporter.data()), exporter.size());
  message.append(reinterpret_cast<const char*>(csr_spki_sha256.data()), csr_spki_sha256.size());
  std::array<uint8_t, 32> out{};
  size_t size = 0;
  // A fixed algorithm and sizes: EVP_Q_mac fails only without memory.
  if (!EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, secret.data(), secret.size(),
                 reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(),
                 out.size(), &size)) {
    out.fill(0);
  }
  return out;
}

Result<Sha256Digest> CsrSpkiSha256(std::string_view csr_pem) {
  ossl::ReqPtr req = TRY(ossl::ReqFromPem(csr_pem, "the CSR"));
  EVP_PKEY* key = X509_REQ_get0_pubkey(req.get());
  if (!key) return Invalid("the CSR has no public key");
  return ossl::SpkiSha256(key);
}

Result<PairRequest> ParsePairRequest(std::string_view text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Invalid("the pairing request is not valid JSON");
  if (!json.is_object()) return Invalid("the pairing request must be a JSON object");
  constexpr std::string_view kKnown[] = {"id", "name", "csr", "proof"};
  for (const auto& [key, value] : json.items()) {
    if (std::find(std::begin(kKnown), std::end(kKnown), key) == std::end(kKnown)) {
      return Invalid(fmt::format("pairing request field \"{}\" is unknown", key));
    }
  }
  std::string fields[4];
  for (size_t i = 0; i < 4; ++i) {
    auto it = json.find(std::string(kKnown[i]));
    if (it == json.end()) {
      return Invalid(fmt::format("pairing request field \"{}\" is missing", kKnown[i]));
    }
    if (!it->is_string()) {
      return Invalid(fmt::format("pairing request field \"{}\" must be a string, not {}", kKnown[i],
                                 it->type_name()));
    }
    fields[i] = it->get<std::string>();
  }
  PairRequest request;
  TRY(ossl::BytesFromHex(fields[0], kPairingIdSize, "pairing request field \"id\""));
  request.id = fields[0];
  for (char& c : request.id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (fields[1].empty() || fields[1].size() > 64) {
    return Invalid("pairing request field \"name\" must be 1..64 characters");
  }
  for (char c : fields[1]) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != ' ' && c != '.' && c != '_' &&
        c != '-') {
      return Invalid(fmt::format(
          "pairing request field \"name\" has character '{}'; allowed: A-Z a-z 0-9 space . _ -",
          c));
    }
  }
  request.name = fields[1];
  if (fields[2].size() > 16 * 1024) {
    return Invalid("pairing request field \"csr\" is over 16 KiB");
  }
  request.csr_pem = fields[2];
  auto proof = TRY(ossl::BytesFromHex(fields[3], 32, "pairing request field \"proof\""));
  std::copy(proof.begin(), proof.end(), request.proof.begin());
  return request;
}

std::string PairRequestToJson(const PairRequest& request) {
  return nlohmann::json{{"id", request.id},
                        {"name", request.name},
                        {"csr", request.csr_pem},
                        {"proof", ossl::HexOf(request.proof)}}
      .dump();
}

Result<ClientKeyAndCsr> MakeClientKeyAndCsr(std::string_view name) {
  ossl::PkeyPtr key = TRY(ossl::GenerateP256Key());
  ossl::ReqPtr req(X509_REQ_new());
  if (!req) return ossl::OpenSslError(ErrorCode::kInternal, "X509_REQ_new");
  std::string common_name(name);
  X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req.get()), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  if (X509_REQ_set_pubkey(req.get(), key.get()) != 1 ||
      X509_REQ_sign(req.get(), key.get(), EVP_sha256()) <= 0) {
    return ossl::OpenSslError(ErrorCode::kInternal, "signing a CSR");
  }
  return ClientKeyAndCsr{TRY(ossl::PrivateKeyToPem(key.get())), TRY(ossl::ReqToPem(req.get()))};
}

Result<std::string> RenderQrForTerminal(std::string_view text) {
  std::string copy(text);
  QRcode* code = QRcode_encodeString8bit(copy.c_str(), 0, QR_ECLEVEL_M);
  if (!code) return Error::FromErrno("encoding the pairing QR code", errno);
  constexpr int kQuiet = 2;
  int width = code->width;
  auto dark = [&](int x, int y) {
    if (x < 0 || y < 0 || x >= width || y >= width) return false;
    return (code->data[y * width + x] & 1) != 0;
  };
  // Light modules are drawn (full blocks), dark ones left as the terminal's
  // background, so a dark-background terminal shows dark-on-light as scanners expect.
  std::string out;
  for (int y = -kQuiet; y < width + kQuiet; y += 2) {
    for (int x = -kQuiet; x < width + kQuiet; ++x) {
      bool top = !dark(x, y), bottom = !dark(x, y + 1);
      if (top && bottom) {
        out += "\u2588";
      } else if (top) {
        out += "\u2580";
      } else if (bottom) {
        out += "\u2584";
      } else {
        out += " ";
      }
    }
    out += "\n";
  }
  QRcode_free(code);
  return out;
}

}  // namespace ralph::ralphd::api
