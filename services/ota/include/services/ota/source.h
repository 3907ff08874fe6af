// Where bundle bytes come from: a local file (services/ota/bundle/byte_source.h) or
// an HTTPS URL (libcurl, here).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "platform/result.h"
#include "services/ota/bundle/byte_source.h"

namespace ralph::ota {

struct HttpsOptions {
  // PEM CA bundle that must have issued the server's certificate. Empty:
  // the system trust store (/etc/ssl/certs).
  std::string ca_file;
  // Attempts per stretch of data after a failure (connection refused, reset,
  // dropped mid-stream): each retry resumes with a Range request at the first
  // byte not yet received.
  int max_retries = 5;
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{5000};
  std::chrono::seconds connect_timeout{15};
  // A transfer slower than 1 byte/s for this long counts as dropped.
  std::chrono::seconds stall_timeout{30};
  // Set by another thread (or a signal handler) to stop: the current ReadAt
  // returns kCancelled within ~100 ms.
  const std::atomic<bool>* cancel = nullptr;
};

// Statistics for tests and the progress display.
struct HttpsStats {
  uint64_t requests = 0;        // HTTP requests made (each Range request counts)
  uint64_t retries = 0;         // requests made because a previous one failed
  uint64_t bytes_received = 0;  // body bytes received over all requests
};

class HttpsSource final : public ByteSourceInterface {
 public:
  // Connects and learns the size (a first Range request for bytes 0-). Only
  // https:// URLs are accepted. kNetwork when the server cannot be reached or
  // its certificate is not trusted (the message says which), kUnsupported
  // when the server ignores Range requests.
  static Result<std::unique_ptr<HttpsSource>> Open(const std::string& url,
                                                   const HttpsOptions& options);
  ~HttpsSource() override;

  uint64_t Size() const override;
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  std::string Describe() const override;
  HttpsStats stats() const;

  struct Impl;

 private:
  explicit HttpsSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A file path or an https:// URL. http:// and other schemes are refused
// (kInvalidArgument).
Result<std::unique_ptr<ByteSourceInterface>> OpenSource(const std::string& file_or_url,
                                                        const HttpsOptions& options);

}  // namespace ralph::ota
