// Integration: HttpsSource against a real HTTPS server on 127.0.0.1 with its
// own CA (cpp-httplib + OpenSSL in this process): Range resume after a
// dropped connection, refusal of an untrusted server, a whole bundle opened
// and verified over HTTPS.
//
// Built with -fexceptions: cpp-httplib 0.11 has no exception-free mode. The
// product code under test is still built without exceptions.
#include <gtest/gtest.h>

#include "services/ota/bundle/bundle.h"
#include "services/ota/source.h"
#include "test_https_server.h"
#include "test_pki.h"
#include "test_util.h"

namespace ralph::ota {
namespace {

using testing::TempDir;

class HttpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = testing::MakeCa(dir_.path(), "ca");
    server_cert_ = testing::MakeServerCert(dir_.path(), "server", ca_);
    server_ = std::make_unique<testing::TestServer>(server_cert_);
    options_.ca_file = ca_.cert_path;
    options_.initial_backoff = std::chrono::milliseconds(10);
  }
  std::vector<uint8_t> ReadAll(HttpsSource& source) {
    std::vector<uint8_t> out(source.Size());
    // In pieces, as the slot writer reads.
    for (size_t at = 0; at < out.size(); at += 256 * 1024) {
      size_t n = std::min<size_t>(256 * 1024, out.size() - at);
      auto r = source.ReadAt(at, std::span<uint8_t>(out.data() + at, n));
      EXPECT_TRUE(r.has_value()) << r.error().ToString();
      if (!r) break;
    }
    return out;
  }
  TempDir dir_;
  testing::KeyPair ca_, server_cert_;
  std::unique_ptr<testing::TestServer> server_;
  HttpsOptions options_;
};

TEST_F(HttpsTest, DownloadsWithRangeRequests) {
  auto blob = testing::RandomBytes(8 << 20, 7);
  server_->Add("blob", blob);
  auto source = HttpsSource::Open(server_->Url("blob"), options_);
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  EXPECT_EQ((*source)->Size(), blob.size());
  EXPECT_EQ(ReadAll(**source), blob);
  // Windows of 256 KiB, doubling: 0, 256K, 768K, 1792K, 3840K, 7936K.
  EXPECT_EQ(server_->range_starts(),
            (std::vector<long long>{0, 256 << 10, 768 << 10, 1792 << 10, 3840 << 10, 7936 << 10}));
  EXPECT_EQ((*source)->stats().retries, 0u);
  EXPECT_EQ(server_->bytes_served(), blob.size());
}

TEST_F(HttpsTest, ResumesAfterDroppedConnection) {
  auto blob = testing::RandomBytes(8 << 20, 8);
  server_->Add("blob", blob);
  server_->DropOnceAfter(3 << 20);
  auto source = HttpsSource::Open(server_->Url("blob"), options_);
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  EXPECT_EQ(ReadAll(**source), blob);
  HttpsStats stats = (*source)->stats();
  EXPECT_EQ(stats.retries, 1u);
  // Resumed, not restarted: the request after the drop starts where the
  // cut one stopped (3 MiB, inside the window that began at 1792 KiB), and
  // the server sent each byte once.
  auto starts = server_->range_starts();
  ASSERT_GE(starts.size(), 5u);
  EXPECT_EQ(starts[3], 1792 << 10);
  EXPECT_EQ(starts[4], 3 << 20);
  EXPECT_EQ(server_->bytes_served(), blob.size());
  EXPECT_EQ(stats.bytes_received, blob.size());
}

TEST_F(HttpsTest, RefusesUntrustedServer) {
  server_->Add("blob", testing::RandomBytes(1000, 9));
  testing::KeyPair other = testing::MakeCa(dir_.path(), "other-ca");
  HttpsOptions untrusting = options_;
  untrusting.ca_file = other.cert_path;
  auto source = HttpsSource::Open(server_->Url("blob"), untrusting);
  ASSERT_FALSE(source.has_value());
  EXPECT_EQ(source.error().code(), ErrorCode::kNetwork);
  EXPECT_NE(source.error().message().find("server certificate not trusted"), std::string::npos)
      << source.error().message();
  EXPECT_EQ(server_->bytes_served(), 0u);
}

TEST_F(HttpsTest, GivesUpAfterBoundedRetriesAndHonoursCancel) {
  auto refused = HttpsSource::Open("https://127.0.0.1:1/none", [&] {
    HttpsOptions o = options_;
    o.max_retries = 2;
    return o;
  }());
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kNetwork);
  EXPECT_NE(refused.error().message().find("giving up after 3 attempts"), std::string::npos)
      << refused.error().message();

  std::atomic<bool> cancel{true};
  HttpsOptions cancelling = options_;
  cancelling.cancel = &cancel;
  server_->Add("blob", testing::RandomBytes(1000, 11));
  auto cancelled = HttpsSource::Open(server_->Url("blob"), cancelling);
  ASSERT_FALSE(cancelled.has_value());
  EXPECT_EQ(cancelled.error().code(), ErrorCode::kCancelled);

  auto plain = OpenSource("http://127.0.0.1/x", options_);
  ASSERT_FALSE(plain.has_value());
  EXPECT_NE(plain.error().message().find("only local files and https:// URLs"), std::string::npos);
}

TEST_F(HttpsTest, OpensAndVerifiesABundleOverHttps) {
  testing::KeyPair signer = testing::MakeSigner(dir_.path(), "signer", ca_);
  testing::WriteFile(dir_ / "rootfs.img", testing::RandomBytes(3 << 20, 12));
  testing::WriteFile(dir_ / "uki.efi", testing::RandomBytes(100000, 13));
  CreateOptions o;
  o.cert_path = signer.cert_path;
  o.key_path = signer.key_path;
  o.version = {2, 0, 0};
  o.product = "ralphos";
  o.arch = "x86_64";
  o.rootfs_path = dir_ / "rootfs.img";
  o.uki_path = dir_ / "uki.efi";
  o.output_path = dir_ / "b.rbundle";
  ASSERT_TRUE(CreateBundle(o).has_value());
  server_->Add("b.rbundle", testing::ReadFileBytes(o.output_path));
  auto source = HttpsSource::Open(server_->Url("b.rbundle"), options_);
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  auto keyring = Keyring::Load(ca_.cert_path);
  ASSERT_TRUE(keyring.has_value());
  auto bundle = OpenBundle(**source, *keyring);
  ASSERT_TRUE(bundle.has_value()) << bundle.error().ToString();
  EXPECT_EQ(bundle->manifest.version, (Version{2, 0, 0}));
}

}  // namespace
}  // namespace ralph::ota
