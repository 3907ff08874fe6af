// CMS (PKCS#7) detached signatures over the exact manifest bytes (OpenSSL).
//
// Trust: a keyring of X.509 certificates (a PEM file, or a directory whose
// *.pem / *.crt files are all loaded) that the running slot ships. The signer
// certificate must chain to a keyring certificate (a keyring may also hold the
// signer certificate itself), be within its validity period, allow
// digitalSignature when it has a keyUsage extension, and carry the
// codeSigning extended key usage. An optional CRL file enables revocation
// checks for the whole chain.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::ota {

class Keyring {
 public:
  // Loads every certificate of `path` (file or directory) and, when
  // `crl_path` is not empty, the CRLs of that PEM file. kNotFound when the
  // path is missing, kCorrupt when a file does not parse, kInvalidArgument
  // when the keyring holds no certificate.
  static Result<Keyring> Load(const std::string& path, const std::string& crl_path = "");

  ~Keyring();
  Keyring(Keyring&&) noexcept;
  Keyring& operator=(Keyring&&) noexcept;

  const std::string& path() const { return path_; }
  size_t certificate_count() const { return certificate_count_; }

  struct Impl;

 private:
  explicit Keyring(std::unique_ptr<Impl> impl, std::string path, size_t count);
  std::unique_ptr<Impl> impl_;
  std::string path_;
  size_t certificate_count_ = 0;
  friend struct SignatureAccess;
};

struct SignerInfo {
  std::string subject;  // "CN=RalphOS release 2026,O=Ralph"
  std::string issuer;
  std::string not_after;  // "2027-11-22 13:00:00 UTC"
  std::string serial;     // hex
};

// Signs `data` with the PEM certificate and private key; returns DER CMS.
// `extra_certs_path` (optional PEM) adds intermediates to the signature.
// `signing_time` (seconds since the epoch) replaces the clock in the CMS
// signingTime attribute, for reproducible bundles (the image builder passes
// SOURCE_DATE_EPOCH); with an RSA key (PKCS#1 v1.5) the whole blob is then a
// function of its inputs.
Result<std::vector<uint8_t>> SignDetached(std::span<const uint8_t> data,
                                          const std::string& cert_path, const std::string& key_path,
                                          const std::string& extra_certs_path = "",
                                          std::optional<int64_t> signing_time = std::nullopt);

// Reads the signer of a DER CMS blob without verifying anything (for `info`
// when no keyring is given). kCorrupt when it is not a CMS signature.
Result<SignerInfo> ReadSigner(std::span<const uint8_t> signature);

// Verifies that `signature` (DER CMS, detached) signs exactly `data` and that
// its signer is trusted by `keyring` (see above). kVerificationFailed with the
// reason otherwise: "signature does not match the manifest", "signer
// 'CN=...' is not trusted by keyring <path>: unable to get local issuer
// certificate", "... certificate has expired", "... lacks the codeSigning
// extended key usage". kCorrupt when the blob is not a CMS signature.
Result<SignerInfo> VerifyDetached(std::span<const uint8_t> data, std::span<const uint8_t> signature,
                                  const Keyring& keyring);

}  // namespace ralph::ota
