// Integration: HttpsSource against a real HTTPS server on 127.0.0.1 with its
// own CA (cpp-httplib + OpenSSL in this process): Range resume after a
// dropped connection, refusal of an untrusted server, a whole bundle opened
// and verified over HTTPS.
//
// Built with -fexceptions: cpp-httplib 0.11 has no exception-free mode. The
// product code under test is still built without exceptions.
// CPPHTTPLIB_OPENSSL_SUPPORT comes from cpp-httplib.pc (the shared library is
// built with it).
#include <httplib.h>

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "services/ota/bundle.h"
#include "services/ota/source.h"
#include "test_pki.h"
#include "test_util.h"

namespace ralph::ota {
namespace {

using testing::TempDir;

// Serves files from memory with Range support; can drop the first response
// after a number of bytes.
class TestServer {
 public:
  TestServer(const testing::KeyPair& cert)
      : server_(cert.cert_path.c_str(), cert.key_path.c_str()) {
    server_.Get(R"(/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      std::string name = req.matches[1];
      std::lock_guard lock(mutex_);
      auto it = files_.find(name);
      if (it == files_.end()) {
        res.status = 404;
        return;
      }
      const std::vector<uint8_t>* data = &it->second;
      range_starts_.push_back(req.ranges.empty() ? -1 : req.ranges[0].first);
      res.set_content_provider(data->size(), "application/octet-stream",
                               [this, data](size_t offset, size_t length, httplib::DataSink& sink) {
                                 size_t n = std::min<size_t>(length, 64 * 1024);
                                 if (drop_after_ > 0) {
                                   if (served_in_drop_window_ >= drop_after_) {
                                     drop_after_ = 0;  // drop once
                                     served_in_drop_window_ = 0;
                                     return false;  // httplib closes the connection mid-body
                                   }
                                   n = std::min(n, drop_after_ - served_in_drop_window_);
                                   served_in_drop_window_ += n;
                                 }
                                 sink.write(reinterpret_cast<const char*>(data->data() + offset),
                                            n);
                                 bytes_served_ += n;
                                 return true;
                               });
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~TestServer() {
    server_.stop();
    thread_.join();
  }
  void Add(const std::string& name, std::vector<uint8_t> data) {
    std::lock_guard lock(mutex_);
    files_[name] = std::move(data);
  }
  std::string Url(const std::string& name) const {
    return "https://127.0.0.1:" + std::to_string(port_) + "/" + name;
  }
  void DropOnceAfter(size_t bytes) { drop_after_ = bytes; }
  uint64_t bytes_served() const { return bytes_served_; }
  std::vector<long long> range_starts() {
    std::lock_guard lock(mutex_);
    return range_starts_;
  }

 private:
  httplib::SSLServer server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mutex_;
  std::map<std::string, std::vector<uint8_t>> files_;
  std::vector<long long> range_starts_;
  std::atomic<size_t> drop_after_{0};
  size_t served_in_drop_window_ = 0;
  std::atomic<uint64_t> bytes_served_{0};
};

class HttpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = testing::MakeCa(dir_.path(), "ca");
    server_cert_ = testing::MakeServerCert(dir_.path(), "server", ca_);
    server_ = std::make_unique<TestServer>(server_cert_);
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
  std::unique_ptr<TestServer> server_;
  HttpsOptions options_;
};

TEST_F(HttpsTest, DownloadsWithRangeRequests) {
  auto blob = testing::RandomBytes(8 << 20, 7);
  server_->Add("blob", blob);
  auto source = HttpsSource::Open(server_->Url("blob"), options_);
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  EXPECT_EQ((*source)->Size(), blob.size());
  EXPECT_EQ(ReadAll(**source), blob);
  EXPECT_EQ((*source)->stats().requests, 1u);
  EXPECT_EQ(server_->bytes_served(), blob.size());
  EXPECT_EQ(server_->range_starts(), std::vector<long long>{0});
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
  EXPECT_EQ(stats.requests, 2u);
  // Resumed, not restarted: the second request starts where the first
  // stopped, and the server sent each byte once.
  auto starts = server_->range_starts();
  ASSERT_EQ(starts.size(), 2u);
  EXPECT_EQ(starts[0], 0);
  EXPECT_EQ(starts[1], 3 << 20);
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
