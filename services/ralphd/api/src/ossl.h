// Owning pointers for OpenSSL objects and the small conversions the API
// layer repeats (PEM in and out, SPKI digests, random bytes, OpenSSL's error
// queue as text). Private to services/ralphd/api.
#pragma once

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "platform/sha256.h"

namespace ralph::ralphd::api::ossl {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_REQ* p) const { X509_REQ_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(ASN1_INTEGER* p) const { ASN1_INTEGER_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Free>;
using X509Ptr = std::unique_ptr<X509, Free>;
using ReqPtr = std::unique_ptr<X509_REQ, Free>;
using BioPtr = std::unique_ptr<BIO, Free>;

// OpenSSL's error queue, drained, as "what: reason; reason".
Error OpenSslError(ErrorCode code, std::string_view what);

Result<PkeyPtr> GenerateP256Key();
Result<std::string> PrivateKeyToPem(EVP_PKEY* key);
Result<std::string> CertToPem(X509* cert);
Result<std::string> ReqToPem(X509_REQ* req);
// kCorrupt naming `what` when the text is not one PEM object of the kind.
Result<PkeyPtr> PrivateKeyFromPem(std::string_view pem, std::string_view what);
Result<X509Ptr> CertFromPem(std::string_view pem, std::string_view what);
Result<ReqPtr> ReqFromPem(std::string_view pem, std::string_view what);

// SHA-256 of the DER SubjectPublicKeyInfo of `key`: what pairing pins.
Result<Sha256Digest> SpkiSha256(EVP_PKEY* key);

Result<void> RandomBytes(std::span<uint8_t> out);
// 128 random bits as a positive ASN.1 serial; its lower-case hex is the
// client id.
Result<std::string> RandomSerialHex();

std::string HexOf(std::span<const uint8_t> bytes);
// Exactly `size` bytes of hex (either case); kInvalidArgument naming `what`.
Result<std::vector<uint8_t>> BytesFromHex(std::string_view hex, size_t size, std::string_view what);

// The certificate's serial as lower-case hex without leading zeros.
std::string SerialHex(const X509* cert);

// Signs `cert` (subject, issuer, key, validity, serial set by the caller)
// after adding the extensions in `extensions` ("basicConstraints" =
// "critical,CA:FALSE", ...), each by its short name and openssl.cnf value.
Result<void> AddExtensionsAndSign(X509* cert, X509* issuer,
                                  std::span<const std::pair<const char*, const char*>> extensions,
                                  EVP_PKEY* signing_key);

// Sets notBefore/notAfter from system_clock points.
Result<void> SetValidity(X509* cert, std::chrono::system_clock::time_point not_before,
                         std::chrono::system_clock::time_point not_after);
// notAfter of the certificate as a system_clock point.
Result<std::chrono::system_clock::time_point> NotAfter(const X509* cert);
Result<std::chrono::system_clock::time_point> NotBefore(const X509* cert);

}  // namespace ralph::ralphd::api::ossl
