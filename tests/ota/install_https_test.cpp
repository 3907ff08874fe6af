// Integration: the whole install from an https:// URL on loop-device slots:
// a connection dropped mid-stream is resumed (each byte served once), and an
// adaptive update downloads only the chunks the slot does not hold.
//
// Built with -fexceptions for cpp-httplib (test_https_server.h).
#include <gtest/gtest.h>

#include <algorithm>

#include "install_fixture.h"
#include "platform/sha256.h"
#include "test_https_server.h"

namespace ralph::ota::testing {
namespace {

class InstallHttpsTest : public ApplianceFixture {
 protected:
  void SetUp() override {
    ApplianceFixture::SetUp();
    server_cert_ = MakeServerCert(dir_.path(), "server", ca_);
    server_ = std::make_unique<TestServer>(server_cert_);
  }
  InstallOptions HttpsOptionsFor(const std::string& name) {
    InstallOptions o = Options(server_->Url(name));
    o.https.ca_file = ca_.cert_path;
    o.https.initial_backoff = std::chrono::milliseconds(10);
    return o;
  }
  KeyPair server_cert_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(InstallHttpsTest, ResumesDroppedDownloadAndFetchesOnlyChangedChunks) {
  BundleSpec v2 = DefaultSpec(31);
  std::string bundle = MakeBundle("v2.rbundle", v2);
  auto bytes = ReadFileBytes(bundle);
  server_->Add("v2.rbundle", bytes);
  server_->DropOnceAfter(2 * kMiB);
  InstallOptions options = HttpsOptionsFor("v2.rbundle");
  auto report = InstallAs(options.source, 'a', &options);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  ExpectSafe(v2.rootfs, v2.uki);
  // Resumed, not restarted: a second request started where the first one
  // was cut, and no byte was sent twice (the 1 MiB staging window aside).
  auto starts = server_->range_starts();
  EXPECT_NE(std::find(starts.begin(), starts.end(), static_cast<long long>(2 * kMiB)),
            starts.end());
  EXPECT_EQ(std::count(starts.begin(), starts.end(), 0), 1) << "restarted from byte 0";
  EXPECT_LE(server_->bytes_served(), bytes.size());

  // v3 changes 2 of the ~97 chunks: the install downloads about that much.
  BundleSpec v3 = v2;
  v3.version = {3, 0, 0};
  v3.rootfs[10 * kTestChunk + 3] ^= 0xff;
  v3.rootfs[50 * kTestChunk + 3] ^= 0xff;
  std::string bundle3 = MakeBundle("v3.rbundle", v3);
  server_->Add("v3.rbundle", ReadFileBytes(bundle3));
  uint64_t served_before = server_->bytes_served();
  InstallOptions options3 = HttpsOptionsFor("v3.rbundle");
  auto report3 = InstallAs(options3.source, 'a', &options3);
  ASSERT_TRUE(report3.has_value()) << report3.error().ToString();
  EXPECT_EQ(report3->stats.chunks_written, 2u);
  uint64_t served = server_->bytes_served() - served_before;
  // Header + manifest + signature, the 2 chunks, the UKI, and read-ahead of
  // at most one staging window (1 MiB) per request.
  EXPECT_LT(served, 3 * kMiB + v3.uki.size()) << "downloaded " << served << " bytes";
  EXPECT_LT(served, v3.rootfs.size() / 2);
  ExpectSafe(v3.rootfs, v3.uki);
  EXPECT_EQ(Record().b.version.ToString(), "3.0.0");
}

TEST_F(InstallHttpsTest, RefusesUntrustedServerBeforeTouchingTheSlot) {
  std::string bundle = MakeBundle("v2.rbundle", DefaultSpec(32));
  server_->Add("v2.rbundle", ReadFileBytes(bundle));
  InstallOptions options = HttpsOptionsFor("v2.rbundle");
  options.https.ca_file = MakeCa(dir_.path(), "stranger").cert_path;
  auto report = InstallAs(options.source, 'a', &options);
  ASSERT_FALSE(report.has_value());
  EXPECT_EQ(report.error().code(), ErrorCode::kNetwork);
  EXPECT_NE(report.error().message().find("server certificate not trusted"), std::string::npos)
      << report.error().message();
  EXPECT_EQ(Record().b.status, boot::SlotStatus::kEmpty);
  EXPECT_EQ(server_->bytes_served(), 0u);
}

}  // namespace
}  // namespace ralph::ota::testing

int main(int argc, char** argv) {
  return ralph::ota::testing::RunWithEfivarDirectory(argc, argv);
}
