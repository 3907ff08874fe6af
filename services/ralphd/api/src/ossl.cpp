#include "ossl.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <fmt/format.h>

#include "platform/hex.h"

namespace ralph::ralphd::api::ossl {

Error OpenSslError(ErrorCode code, std::string_view what) {
  std::string reasons;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof(buffer));
    if (!reasons.empty()) reasons += "; ";
    reasons += buffer;
  }
  if (reasons.empty()) return Error::Make(code, std::string(what));
  return Error::Make(code, fmt::format("{}: {}", what, reasons));
}

Result<PkeyPtr> GenerateP256Key() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return OpenSslError(ErrorCode::kInternal, "generating a P-256 key");
  return key;
}

namespace {

template <typename Write>
Result<std::string> ToPem(Write&& write, std::string_view what) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, fmt::format("writing {} as PEM", what));
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

template <typename Read>
auto FromPem(std::string_view pem, std::string_view what, Read&& read)
    -> Result<std::unique_ptr<std::remove_pointer_t<decltype(read(nullptr))>, Free>> {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return OpenSslError(ErrorCode::kInternal, "BIO_new_mem_buf");
  auto* object = read(bio.get());
  if (!object) {
    return OpenSslError(ErrorCode::kCorrupt,
                        fmt::format("{} is not a PEM {}", what, "object of the expected kind"));
  }
  return std::unique_ptr<std::remove_pointer_t<decltype(object)>, Free>(object);
}

}  // namespace

Result<std::string> PrivateKeyToPem(EVP_PKEY* key) {
  return ToPem(
      [&](BIO* bio) {
        return PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
      },
      "a private key");
}

Result<std::string> CertToPem(X509* cert) {
  return ToPem([&](BIO* bio) { return PEM_write_bio_X509(bio, cert); }, "a certificate");
}

Result<std::string> ReqToPem(X509_REQ* req) {
  return ToPem([&](BIO* bio) { return PEM_write_bio_X509_REQ(bio, req); }, "a CSR");
}

Result<PkeyPtr> PrivateKeyFromPem(std::string_view pem, std::string_view what) {
  return FromPem(pem, what, [](BIO* bio) {
    return PEM_read_bio_PrivateKey(bio, nullptr, nullptr, const_cast<char*>(""));
  });
}

Result<X509Ptr> CertFromPem(std::string_view pem, std::string_view what) {
  return FromPem(pem, what,
                 [](BIO* bio) { return PEM_read_bio_X509(bio, nullptr, nullptr, nullptr); });
}

Result<ReqPtr> ReqFromPem(std::string_view pem, std::string_view what) {
  return FromPem(pem, what,
                 [](BIO* bio) { return PEM_read_bio_X509_REQ(bio, nullptr, nullptr, nullptr); });
}

Result<Sha256Digest> SpkiSha256(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int size = i2d_PUBKEY(key, &der);
  if (size <= 0) return OpenSslError(ErrorCode::kInternal, "encoding a public key");
  auto digest = Sha256::Of(std::span<const uint8_t>(der, static_cast<size_t>(size)));
  OPENSSL_free(der);
  return digest;
}

Result<void> RandomBytes(std::span<uint8_t> out) {
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    return OpenSslError(ErrorCode::kInternal, "RAND_bytes");
  }
  return {};
}

Result<std::string> RandomSerialHex() {
  uint8_t bytes[16];
  TRY(RandomBytes(bytes));
  bytes[0] &= 0x7f;  // positive
  bytes[0] |= 0x40;  // and always 32 hex digits
  return HexOf(bytes);
}

std::string HexOf(std::span<const uint8_t> bytes) {
  return DigestToHex(bytes);
}

Result<std::vector<uint8_t>> BytesFromHex(std::string_view hex, size_t size,
                                          std::string_view what) {
  if (hex.size() != size * 2) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} must be {} hex digits, not {}", what, size * 2, hex.size()));
  }
  return TRY_CTX(HexDecode(hex), what);
}

std::string SerialHex(const X509* cert) {
  std::unique_ptr<BIGNUM, Free> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (!bn) return {};
  char* hex = BN_bn2hex(bn.get());
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Result<void> AddExtensionsAndSign(X509* cert, X509* issuer,
                                  std::span<const std::pair<const char*, const char*>> extensions,
                                  EVP_PKEY* signing_key) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
  for (const auto& [name, value] : extensions) {
    std::unique_ptr<X509_EXTENSION, Free> extension(
        X509V3_EXT_nconf(nullptr, &context, name, value));
    if (!extension || X509_add_ext(cert, extension.get(), -1) != 1) {
      return OpenSslError(ErrorCode::kInternal, fmt::format("adding extension {}", name));
    }
  }
  if (X509_sign(cert, signing_key, EVP_sha256()) <= 0) {
    return OpenSslError(ErrorCode::kInternal, "signing a certificate");
  }
  return {};
}

Result<void> SetValidity(X509* cert, std::chrono::system_clock::time_point not_before,
                         std::chrono::system_clock::time_point not_after) {
  time_t from = std::chrono::system_clock::to_time_t(not_before);
  time_t to = std::chrono::system_clock::to_time_t(not_after);
  if (!ASN1_TIME_set(X509_getm_notBefore(cert), from) ||
      !ASN1_TIME_set(X509_getm_notAfter(cert), to)) {
    return OpenSslError(ErrorCode::kInternal, "setting a certificate's validity");
  }
  return {};
}

namespace {
Result<std::chrono::system_clock::time_point> FromAsn1(const ASN1_TIME* time,
                                                       std::string_view what) {
  struct tm tm {};
  if (!time || ASN1_TIME_to_tm(time, &tm) != 1) {
    return OpenSslError(ErrorCode::kCorrupt, fmt::format("reading a certificate's {}", what));
  }
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}
}  // namespace

Result<std::chrono::system_clock::time_point> NotAfter(const X509* cert) {
  return FromAsn1(X509_get0_notAfter(cert), "notAfter");
}

Result<std::chrono::system_clock::time_point> NotBefore(const X509* cert) {
  return FromAsn1(X509_get0_notBefore(cert), "notBefore");
}

}  // namespace ralph::ralphd::api::ossl
