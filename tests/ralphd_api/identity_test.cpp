#include "services/ralphd/api/identity.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <filesystem>

#include "platform/file_io.h"
#include "tests/support/temp_dir.h"

namespace ralph::ralphd::api {
namespace {

using std::chrono::system_clock;

std::string MakeCsr(const char* curve_or_rsa) {
  EVP_PKEY* key =
      std::string(curve_or_rsa) == "rsa1024" ? EVP_RSA_gen(1024) : EVP_EC_gen(curve_or_rsa);
  X509_REQ* req = X509_REQ_new();
  X509_REQ_set_pubkey(req, key);
  X509_REQ_sign(req, key, EVP_sha256());
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_REQ(bio, req);
  char* data = nullptr;
  long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(bio);
  X509_REQ_free(req);
  EVP_PKEY_free(key);
  return pem;
}

class IdentityTest : public ::testing::Test {
 protected:
  testing::TempDir temp_{"ralphd-identity"};
  std::string dir_ = temp_.path() + "/state/identity";
};

TEST_F(IdentityTest, FirstStartMakesPrivateFilesAndLaterStartsReloadThem) {
  auto made = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_TRUE(made) << made.error().ToString();
  for (const char* name : {"device.key", "device.crt", "ca.key", "ca.crt"}) {
    struct stat st {};
    ASSERT_EQ(::stat((dir_ + "/" + name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 07777, 0600u) << name;
  }
  auto again = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ((*again)->spki_sha256_hex(), (*made)->spki_sha256_hex());
  EXPECT_EQ((*again)->ca_cert_pem(), (*made)->ca_cert_pem());
  EXPECT_EQ(X509_check_ca((*again)->ca_cert()), 1);
  // The device key is not the CA key.
  EXPECT_NE(X509_check_private_key((*again)->ca_cert(), (*again)->device_key()), 1);
}

TEST_F(IdentityTest, ADamagedFileIsAnErrorNamingItAndIsNotReplaced) {
  ASSERT_TRUE(DeviceIdentity::LoadOrCreate(dir_));
  std::string path = dir_ + "/device.crt";
  ASSERT_TRUE(WriteWholeFile(path, "-----BEGIN CERTIFICATE-----\nAAAA\n", 0600));
  auto loaded = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code(), ErrorCode::kCorrupt) << loaded.error().ToString();
  EXPECT_NE(loaded.error().message().find(path), std::string::npos) << loaded.error().ToString();
  EXPECT_EQ(*ReadWholeFile(path), "-----BEGIN CERTIFICATE-----\nAAAA\n");
}

TEST_F(IdentityTest, AKeyThatDoesNotMatchItsCertificateIsRefused) {
  ASSERT_TRUE(DeviceIdentity::LoadOrCreate(dir_));
  std::filesystem::copy_file(dir_ + "/ca.key", dir_ + "/device.key",
                             std::filesystem::copy_options::overwrite_existing);
  auto loaded = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(loaded.error().message().find("does not match"), std::string::npos)
      << loaded.error().ToString();
}

TEST_F(IdentityTest, AMissingFileOrLooseModeIsAnError) {
  ASSERT_TRUE(DeviceIdentity::LoadOrCreate(dir_));
  ASSERT_EQ(::chmod((dir_ + "/ca.key").c_str(), 0644), 0);
  auto loose = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_FALSE(loose);
  EXPECT_EQ(loose.error().code(), ErrorCode::kPermissionDenied) << loose.error().ToString();
  ASSERT_EQ(::unlink((dir_ + "/ca.key").c_str()), 0);
  auto missing = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound) << missing.error().ToString();
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ca.key"));
}

TEST_F(IdentityTest, AnExpiredCertificateIsRefused) {
  ASSERT_TRUE(DeviceIdentity::LoadOrCreate(dir_, {.validity = std::chrono::hours(24)}));
  auto later = DeviceIdentity::LoadOrCreate(
      dir_, {.clock = [] { return system_clock::now() + std::chrono::hours(48); }});
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().code(), ErrorCode::kInvalidState);
  EXPECT_NE(later.error().message().find("expired"), std::string::npos) << later.error().ToString();
}

TEST_F(IdentityTest, SignsAClientCertificateThatChainsToTheDeviceCa) {
  auto identity = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_TRUE(identity);
  auto issued = (*identity)->SignClientCsr(MakeCsr("P-256"), "laptop", std::chrono::hours(24));
  ASSERT_TRUE(issued) << issued.error().ToString();
  EXPECT_EQ(issued->serial_hex.size(), 32u);
  BIO* bio = BIO_new_mem_buf(issued->pem.data(), static_cast<int>(issued->pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_verify(cert, X509_get0_pubkey((*identity)->ca_cert())), 1);
  EXPECT_NE(X509_verify(cert, (*identity)->device_key()), 1);
  X509_free(cert);
}

TEST_F(IdentityTest, RefusesMalformedCsrsAndWeakKeys) {
  auto identity = DeviceIdentity::LoadOrCreate(dir_);
  ASSERT_TRUE(identity);
  auto garbage = (*identity)->SignClientCsr("not a csr", "x", std::chrono::hours(1));
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message().find("CSR"), std::string::npos);
  auto weak = (*identity)->SignClientCsr(MakeCsr("rsa1024"), "x", std::chrono::hours(1));
  ASSERT_FALSE(weak);
  EXPECT_EQ(weak.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(weak.error().message().find("1024"), std::string::npos) << weak.error().ToString();
}

}  // namespace
}  // namespace ralph::ralphd::api
