#include "test_pki.h"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace ralph::ota::testing {
namespace {

// Test helper: any OpenSSL failure is a broken test environment.
void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "test_pki: %s failed\n", what);
    std::abort();
  }
}

EVP_PKEY* NewKey() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  Check(key != nullptr, "EVP_EC_gen");
  return key;
}

void WritePem(const std::string& path, EVP_PKEY* key, X509* cert) {
  FILE* f = std::fopen(path.c_str(), "w");
  Check(f != nullptr, "fopen");
  if (key) Check(PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1, "key");
  if (cert) Check(PEM_write_X509(f, cert) == 1, "cert");
  std::fclose(f);
}

EVP_PKEY* ReadKey(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  Check(f != nullptr, "fopen key");
  EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  Check(key != nullptr, "PEM_read_PrivateKey");
  return key;
}

X509* ReadCert(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  Check(f != nullptr, "fopen cert");
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  Check(cert != nullptr, "PEM_read_X509");
  return cert;
}

void AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  Check(ext != nullptr, "X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

long g_serial = 1000;

X509* NewCert(EVP_PKEY* key, const std::string& cn, long not_before_days, long not_after_days) {
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), ++g_serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), not_before_days * 86400L);
  X509_gmtime_adj(X509_getm_notAfter(cert), not_after_days * 86400L);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("RalphOS tests"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  return cert;
}

}  // namespace

KeyPair MakeCa(const std::string& dir, const std::string& name) {
  EVP_PKEY* key = NewKey();
  X509* cert = NewCert(key, name, -1, 3650);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  AddExtension(cert, cert, NID_basic_constraints, "critical,CA:TRUE");
  AddExtension(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExtension(cert, cert, NID_subject_key_identifier, "hash");
  Check(X509_sign(cert, key, EVP_sha256()) > 0, "X509_sign");
  KeyPair pair{dir + "/" + name + ".crt", dir + "/" + name + ".key"};
  WritePem(pair.cert_path, nullptr, cert);
  WritePem(pair.key_path, key, nullptr);
  X509_free(cert);
  EVP_PKEY_free(key);
  return pair;
}

static KeyPair Issue(const std::string& dir, const std::string& name, const KeyPair& issuer,
                     const CertOptions& options, const char* eku, const char* san) {
  EVP_PKEY* issuer_key = ReadKey(issuer.key_path);
  X509* issuer_cert = ReadCert(issuer.cert_path);
  EVP_PKEY* key = NewKey();
  X509* cert = NewCert(key, options.common_name, options.not_before_days, options.not_after_days);
  X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  AddExtension(cert, issuer_cert, NID_basic_constraints, "CA:FALSE");
  AddExtension(
      cert, issuer_cert, NID_key_usage,
      options.digital_signature_ku ? "critical,digitalSignature" : "critical,keyEncipherment");
  if (eku) AddExtension(cert, issuer_cert, NID_ext_key_usage, eku);
  if (san) AddExtension(cert, issuer_cert, NID_subject_alt_name, san);
  AddExtension(cert, issuer_cert, NID_authority_key_identifier, "keyid");
  Check(X509_sign(cert, issuer_key, EVP_sha256()) > 0, "X509_sign");
  KeyPair pair{dir + "/" + name + ".crt", dir + "/" + name + ".key"};
  WritePem(pair.cert_path, nullptr, cert);
  WritePem(pair.key_path, key, nullptr);
  X509_free(cert);
  X509_free(issuer_cert);
  EVP_PKEY_free(key);
  EVP_PKEY_free(issuer_key);
  return pair;
}

KeyPair MakeSigner(const std::string& dir, const std::string& name, const KeyPair& issuer,
                   const CertOptions& options) {
  return Issue(dir, name, issuer, options,
               options.code_signing_eku ? "codeSigning" : "emailProtection", nullptr);
}

KeyPair MakeServerCert(const std::string& dir, const std::string& name, const KeyPair& issuer) {
  CertOptions options;
  options.common_name = "localhost";
  return Issue(dir, name, issuer, options, "serverAuth", "IP:127.0.0.1,DNS:localhost");
}

std::string MakeCrl(const std::string& dir, const std::string& name, const KeyPair& issuer,
                    const std::string& revoked_cert_path) {
  EVP_PKEY* issuer_key = ReadKey(issuer.key_path);
  X509* issuer_cert = ReadCert(issuer.cert_path);
  X509* revoked = ReadCert(revoked_cert_path);
  X509_CRL* crl = X509_CRL_new();
  X509_CRL_set_version(crl, 1);
  X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer_cert));
  ASN1_TIME* now = X509_gmtime_adj(nullptr, -3600);
  ASN1_TIME* next = X509_gmtime_adj(nullptr, 30L * 86400);
  X509_CRL_set1_lastUpdate(crl, now);
  X509_CRL_set1_nextUpdate(crl, next);
  X509_REVOKED* entry = X509_REVOKED_new();
  X509_REVOKED_set_serialNumber(entry, X509_get_serialNumber(revoked));
  X509_REVOKED_set_revocationDate(entry, now);
  X509_CRL_add0_revoked(crl, entry);
  X509_CRL_sort(crl);
  Check(X509_CRL_sign(crl, issuer_key, EVP_sha256()) > 0, "X509_CRL_sign");
  std::string path = dir + "/" + name + ".crl";
  FILE* f = std::fopen(path.c_str(), "w");
  Check(f != nullptr, "fopen crl");
  PEM_write_X509_CRL(f, crl);
  std::fclose(f);
  ASN1_TIME_free(now);
  ASN1_TIME_free(next);
  X509_CRL_free(crl);
  X509_free(revoked);
  X509_free(issuer_cert);
  EVP_PKEY_free(issuer_key);
  return path;
}

}  // namespace ralph::ota::testing
