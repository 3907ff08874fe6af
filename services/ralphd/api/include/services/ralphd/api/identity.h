// The appliance's TLS identity on the state directory: a device key with a
// self-signed device certificate (what the API serves and what pairing pins
// by its SubjectPublicKeyInfo digest), and a small device CA whose key signs
// the paired clients' certificates.
//
//   auto identity = TRY(DeviceIdentity::LoadOrCreate("/var/lib/ralph/ralphd/identity"));
//   std::string pin = identity->spki_sha256_hex();
//
// Files (0600, in one directory that appears atomically by rename, so a
// crash mid-creation leaves nothing half-made): device.key, device.crt,
// ca.key, ca.crt. A later start reloads and checks them (each parses, each
// key matches its certificate, neither certificate is expired, the CA is a
// CA); any failure is an error naming the file, never a silent replacement —
// a new device key would orphan every paired client.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "platform/result.h"
#include "platform/sha256.h"

typedef struct evp_pkey_st EVP_PKEY;
typedef struct x509_st X509;

namespace ralph::ralphd::api {

using Clock = std::function<std::chrono::system_clock::time_point()>;

struct IdentityOptions {
  // The wall clock for validity (tests move it); system_clock when empty.
  Clock clock;
  // Validity of the device and CA certificates made on first start.
  std::chrono::hours validity{24 * 365 * 30};
};

// A signed client certificate.
struct IssuedCertificate {
  std::string pem;
  std::string serial_hex;  // the client id
  std::chrono::system_clock::time_point not_after;
};

class DeviceIdentity {
 public:
  // Loads the identity in `dir`, or makes it when `dir` does not exist (its
  // parent is created 0700 if needed). kCorrupt (unparsable file, key does
  // not match certificate, CA certificate not a CA), kInvalidState (a
  // certificate expired or not yet valid), kNotFound (a file missing from
  // an existing identity), kIo/kPermissionDenied from the file system.
  static Result<std::unique_ptr<DeviceIdentity>> LoadOrCreate(const std::string& dir,
                                                              IdentityOptions options = {});
  ~DeviceIdentity();
  DeviceIdentity(const DeviceIdentity&) = delete;
  DeviceIdentity& operator=(const DeviceIdentity&) = delete;

  const std::string& dir() const { return dir_; }
  std::string device_key_path() const { return dir_ + "/device.key"; }
  std::string device_cert_path() const { return dir_ + "/device.crt"; }
  const std::string& device_cert_pem() const { return device_cert_pem_; }
  const std::string& ca_cert_pem() const { return ca_cert_pem_; }
  const Sha256Digest& spki_sha256() const { return spki_sha256_; }
  std::string spki_sha256_hex() const { return DigestToHex(spki_sha256_); }

  // Borrowed OpenSSL objects for the TLS context and verification.
  EVP_PKEY* device_key() const { return device_key_; }
  X509* device_cert() const { return device_cert_; }
  X509* ca_cert() const { return ca_cert_; }

  // Verifies the CSR's self-signature and signs a client certificate for
  // its public key with the device CA: subject CN=`name`, a fresh random
  // 128-bit serial, clientAuth only, valid from now to now + `validity`.
  // kInvalidArgument naming what is wrong with the CSR.
  Result<IssuedCertificate> SignClientCsr(std::string_view csr_pem, std::string_view name,
                                          std::chrono::seconds validity) const;

  std::chrono::system_clock::time_point Now() const;

 private:
  DeviceIdentity() = default;

  std::string dir_;
  IdentityOptions options_;
  EVP_PKEY* device_key_ = nullptr;
  X509* device_cert_ = nullptr;
  EVP_PKEY* ca_key_ = nullptr;
  X509* ca_cert_ = nullptr;
  std::string device_cert_pem_;
  std::string ca_cert_pem_;
  Sha256Digest spki_sha256_{};
};

}  // namespace ralph::ralphd::api
