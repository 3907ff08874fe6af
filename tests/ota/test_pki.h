// Test certificates and keys, made with the OpenSSL API into a directory:
// a CA, and signers issued by it with chosen validity and extensions.
#pragma once

#include <string>

namespace ralph::ota::testing {

struct CertOptions {
  std::string common_name = "RalphOS test signer";
  long not_before_days = -1;  // relative to now
  long not_after_days = 365;
  bool code_signing_eku = true;
  bool digital_signature_ku = true;
};

struct KeyPair {
  std::string cert_path;
  std::string key_path;
};

// Makes a self-signed CA into dir/<name>.crt + dir/<name>.key.
KeyPair MakeCa(const std::string& dir, const std::string& name);
// Makes a certificate for a fresh key signed by `issuer`.
KeyPair MakeSigner(const std::string& dir, const std::string& name, const KeyPair& issuer,
                   const CertOptions& options = {});
// A PEM CRL by `issuer` that revokes the certificate in `revoked_cert_path`.
std::string MakeCrl(const std::string& dir, const std::string& name, const KeyPair& issuer,
                    const std::string& revoked_cert_path);
// A self-signed server certificate for 127.0.0.1/localhost issued by `issuer`.
KeyPair MakeServerCert(const std::string& dir, const std::string& name, const KeyPair& issuer);

}  // namespace ralph::ota::testing
