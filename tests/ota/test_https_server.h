// A local HTTPS server for the OTA tests (cpp-httplib + OpenSSL, in the test
// process, on 127.0.0.1 with a certificate from the test CA): serves files
// from memory with Range support, counts the bytes it sends and the Range
// starts it was asked for, and can drop the first response mid-body.
// Files including this must be compiled with -fexceptions (cpp-httplib 0.11
// has no exception-free mode).
#pragma once

// CPPHTTPLIB_OPENSSL_SUPPORT comes from cpp-httplib.pc (the shared library is
// built with it).
#include <httplib.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_pki.h"

namespace ralph::ota::testing {

// Serves files from memory with Range support; can drop the first response
// after a number of bytes.
class TestServer {
 public:
  explicit TestServer(const KeyPair& cert)
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

}  // namespace ralph::ota::testing
