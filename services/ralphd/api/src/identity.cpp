#include "services/ralphd/api/identity.h"

#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <utility>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "files.h"
#include "ossl.h"
#include "platform/file_io.h"

namespace ralph::ralphd::api {
namespace {

using std::chrono::system_clock;

// Clients and the device may disagree on the time by a few minutes.
constexpr std::chrono::minutes kBackdate{5};

struct Made {
  ossl::PkeyPtr key;
  ossl::X509Ptr cert;
};

Result<Made> MakeSelfSigned(std::string_view common_name, bool ca, system_clock::time_point now,
                            std::chrono::hours validity) {
  Made made;
  made.key = TRY(ossl::GenerateP256Key());
  made.cert.reset(X509_new());
  if (!made.cert) return ossl::OpenSslError(ErrorCode::kInternal, "X509_new");
  X509* cert = made.cert.get();
  X509_set_version(cert, 2);
  std::string serial = TRY(ossl::RandomSerialHex());
  BIGNUM* bn = nullptr;
  BN_hex2bn(&bn, serial.c_str());
  std::unique_ptr<BIGNUM, ossl::Free> owned(bn);
  if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert))) {
    return ossl::OpenSslError(ErrorCode::kInternal, "setting a serial");
  }
  TRY(ossl::SetValidity(cert, now - kBackdate, now + validity));
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("RalphOS"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(
      name, "CN", MBSTRING_UTF8,
      reinterpret_cast<const unsigned char*>(std::string(common_name).c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509_set_pubkey(cert, made.key.get());
  if (ca) {
    const std::pair<const char*, const char*> extensions[] = {
        {"basicConstraints", "critical,CA:TRUE,pathlen:0"},
        {"keyUsage", "critical,keyCertSign,cRLSign"},
        {"subjectKeyIdentifier", "hash"}};
    TRY(ossl::AddExtensionsAndSign(cert, cert, extensions, made.key.get()));
  } else {
    const std::pair<const char*, const char*> extensions[] = {
        {"basicConstraints", "critical,CA:FALSE"},
        {"keyUsage", "critical,digitalSignature"},
        {"extendedKeyUsage", "serverAuth"},
        {"subjectAltName", "DNS:ralphos.local,IP:127.0.0.1"},
        {"subjectKeyIdentifier", "hash"}};
    TRY(ossl::AddExtensionsAndSign(cert, cert, extensions, made.key.get()));
  }
  return made;
}

constexpr const char* kFiles[] = {"device.key", "device.crt", "ca.key", "ca.crt"};

Result<void> Create(const std::string& dir, const IdentityOptions& options,
                    system_clock::time_point now) {
  std::string parent = std::filesystem::path(dir).parent_path().string();
  TRY(MakeDirectories(parent, 0700));
  std::string temp = dir + ".new-XXXXXX";
  if (!::mkdtemp(temp.data())) return Error::FromErrno(fmt::format("mkdtemp {}", temp), errno);
  auto fail = [&](Error error) {
    std::error_code ec;
    std::filesystem::remove_all(temp, ec);
    return std::move(error).WithContext(fmt::format("making the device identity in {}", dir));
  };
  auto device = MakeSelfSigned("RalphOS device", false, now, options.validity);
  if (!device) return fail(device.error());
  auto ca = MakeSelfSigned("RalphOS device CA", true, now, options.validity);
  if (!ca) return fail(ca.error());
  std::pair<const char*, Result<std::string>> contents[] = {
      {kFiles[0], ossl::PrivateKeyToPem(device->key.get())},
      {kFiles[1], ossl::CertToPem(device->cert.get())},
      {kFiles[2], ossl::PrivateKeyToPem(ca->key.get())},
      {kFiles[3], ossl::CertToPem(ca->cert.get())}};
  for (auto& [name, content] : contents) {
    if (!content) return fail(content.error());
    auto written = WriteFileAtomically(temp + "/" + name, *content, 0600, Durability::kFileSynced);
    if (!written) return fail(written.error());
  }
  if (auto synced = FsyncDirectory(temp); !synced) return fail(synced.error());
  if (::rename(temp.c_str(), dir.c_str()) != 0) {
    int err = errno;
    std::error_code ec;
    std::filesystem::remove_all(temp, ec);
    // Another process made it first: theirs is the identity.
    if (err == EEXIST || err == ENOTEMPTY) return {};
    return Error::FromErrno(fmt::format("rename {} to {}", temp, dir), err);
  }
  return FsyncDirectory(parent.empty() ? "." : parent);
}

// Leftovers of a creation that crashed before its rename.
void RemoveStaleTemporaries(const std::string& dir) {
  std::filesystem::path path(dir);
  std::error_code ec;
  std::string prefix = path.filename().string() + ".new-";
  for (const auto& entry : std::filesystem::directory_iterator(
           path.parent_path().empty() ? "." : path.parent_path(), ec)) {
    if (entry.path().filename().string().starts_with(prefix)) {
      std::filesystem::remove_all(entry.path(), ec);
    }
  }
}

Result<void> CheckValidity(X509* cert, const std::string& path, system_clock::time_point now) {
  auto not_before = TRY_CTX(ossl::NotBefore(cert), path);
  auto not_after = TRY_CTX(ossl::NotAfter(cert), path);
  if (now >= not_after) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("{}: the certificate expired at {:%F %T} UTC", path,
                                   fmt::gmtime(system_clock::to_time_t(not_after))));
  }
  if (now + kBackdate < not_before) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("{}: the certificate is not valid before {:%F %T} UTC "
                                   "(is the clock right?)",
                                   path, fmt::gmtime(system_clock::to_time_t(not_before))));
  }
  return {};
}

Result<std::string> ReadPrivateFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Error::FromErrno(fmt::format("stat {}", path), errno)
        .WithContext("the device identity is incomplete");
  }
  if ((st.st_mode & 077) != 0) {
    return Error::Make(ErrorCode::kPermissionDenied,
                       fmt::format("{} is readable by others (mode {:o}); it must be 0600", path,
                                   st.st_mode & 07777));
  }
  return ReadWholeFile(path);
}

}  // namespace

DeviceIdentity::~DeviceIdentity() {
  EVP_PKEY_free(device_key_);
  X509_free(device_cert_);
  EVP_PKEY_free(ca_key_);
  X509_free(ca_cert_);
}

system_clock::time_point DeviceIdentity::Now() const {
  return options_.clock ? options_.clock() : system_clock::now();
}

Result<std::unique_ptr<DeviceIdentity>> DeviceIdentity::LoadOrCreate(const std::string& dir,
                                                                     IdentityOptions options) {
  std::unique_ptr<DeviceIdentity> identity(new DeviceIdentity());
  identity->dir_ = dir;
  identity->options_ = std::move(options);
  system_clock::time_point now = identity->Now();
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return Error::FromErrno(fmt::format("stat {}", dir), errno);
    RemoveStaleTemporaries(dir);
    TRY(Create(dir, identity->options_, now));
  }
  std::string text[4];
  for (int i = 0; i < 4; ++i) text[i] = TRY(ReadPrivateFile(dir + "/" + kFiles[i]));
  std::string paths[4];
  for (int i = 0; i < 4; ++i) paths[i] = dir + "/" + kFiles[i];

  ossl::PkeyPtr device_key = TRY(ossl::PrivateKeyFromPem(text[0], paths[0]));
  ossl::X509Ptr device_cert = TRY(ossl::CertFromPem(text[1], paths[1]));
  ossl::PkeyPtr ca_key = TRY(ossl::PrivateKeyFromPem(text[2], paths[2]));
  ossl::X509Ptr ca_cert = TRY(ossl::CertFromPem(text[3], paths[3]));
  if (X509_check_private_key(device_cert.get(), device_key.get()) != 1) {
    return ossl::OpenSslError(ErrorCode::kCorrupt,
                              fmt::format("{} does not match {}", paths[0], paths[1]));
  }
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    return ossl::OpenSslError(ErrorCode::kCorrupt,
                              fmt::format("{} does not match {}", paths[2], paths[3]));
  }
  if (X509_check_ca(ca_cert.get()) != 1) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{} is not a CA certificate (basicConstraints)", paths[3]));
  }
  TRY(CheckValidity(device_cert.get(), paths[1], now));
  TRY(CheckValidity(ca_cert.get(), paths[3], now));

  identity->device_cert_pem_ = text[1];
  identity->ca_cert_pem_ = text[3];
  identity->spki_sha256_ = TRY(ossl::SpkiSha256(device_key.get()));
  identity->device_key_ = device_key.release();
  identity->device_cert_ = device_cert.release();
  identity->ca_key_ = ca_key.release();
  identity->ca_cert_ = ca_cert.release();
  return identity;
}

Result<IssuedCertificate> DeviceIdentity::SignClientCsr(std::string_view csr_pem,
                                                        std::string_view name,
                                                        std::chrono::seconds validity) const {
  ossl::ReqPtr req = TRY(ossl::ReqFromPem(csr_pem, "the CSR"));
  EVP_PKEY* public_key = X509_REQ_get0_pubkey(req.get());
  if (!public_key) return ossl::OpenSslError(ErrorCode::kInvalidArgument, "the CSR has no key");
  if (X509_REQ_verify(req.get(), public_key) != 1) {
    return ossl::OpenSslError(ErrorCode::kInvalidArgument,
                              "the CSR's signature does not verify with its own key");
  }
  int id = EVP_PKEY_get_base_id(public_key);
  int bits = EVP_PKEY_get_bits(public_key);
  bool acceptable = (id == EVP_PKEY_EC && bits >= 256) || id == EVP_PKEY_ED25519 ||
                    (id == EVP_PKEY_RSA && bits >= 2048);
  if (!acceptable) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("the CSR's key ({} bits of type {}) is not EC P-256 or "
                                   "stronger, Ed25519, or RSA of at least 2048 bits",
                                   bits, OBJ_nid2sn(id)));
  }
  ossl::X509Ptr cert(X509_new());
  if (!cert) return ossl::OpenSslError(ErrorCode::kInternal, "X509_new");
  X509_set_version(cert.get(), 2);
  std::string serial = TRY(ossl::RandomSerialHex());
  BIGNUM* bn = nullptr;
  BN_hex2bn(&bn, serial.c_str());
  std::unique_ptr<BIGNUM, ossl::Free> owned(bn);
  if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()))) {
    return ossl::OpenSslError(ErrorCode::kInternal, "setting a serial");
  }
  system_clock::time_point now = Now();
  system_clock::time_point not_after = now + validity;
  TRY(ossl::SetValidity(cert.get(), now - kBackdate, not_after));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  std::string common_name(name.substr(0, 64));
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert_));
  X509_set_pubkey(cert.get(), public_key);
  const std::pair<const char*, const char*> extensions[] = {
      {"basicConstraints", "critical,CA:FALSE"},
      {"keyUsage", "critical,digitalSignature"},
      {"extendedKeyUsage", "clientAuth"},
      {"authorityKeyIdentifier", "keyid:always"}};
  TRY(ossl::AddExtensionsAndSign(cert.get(), ca_cert_, extensions, ca_key_));
  IssuedCertificate issued;
  issued.pem = TRY(ossl::CertToPem(cert.get()));
  issued.serial_hex = ossl::SerialHex(cert.get());
  issued.not_after = system_clock::from_time_t(system_clock::to_time_t(not_after));
  return issued;
}

}  // namespace ralph::ralphd::api
