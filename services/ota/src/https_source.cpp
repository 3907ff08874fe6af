// HTTPS bundle source on libcurl (OpenSSL backend).
//
// Pull model over curl's multi interface: the write callback fills a fixed
// 1 MiB staging buffer and pauses the transfer when it is full
// (CURL_WRITEFUNC_PAUSE, https://curl.se/libcurl/c/CURLOPT_WRITEFUNCTION.html),
// so memory stays bounded however large the bundle and however slow the disk.
// Every request is a Range request; after a failure the next one starts at
// the first byte not yet received, so a dropped connection resumes rather
// than restarts.
#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "services/ota/source.h"

namespace ralph::ota {
namespace {

constexpr size_t kStagingSize = 1u << 20;
// Each request asks for a bounded window: an unread open-ended response
// would keep arriving into socket buffers (megabytes) after the reader moved
// on, which wastes the bandwidth adaptive updates are meant to save. The
// window doubles while reads stay sequential and resets on a reposition.
constexpr uint64_t kInitialWindow = 256u << 10;
constexpr uint64_t kMaxWindow = 8u << 20;

struct CurlEasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct CurlMultiDeleter {
  void operator()(CURLM* m) const { curl_multi_cleanup(m); }
};
using CurlEasyPtr = std::unique_ptr<CURL, CurlEasyDeleter>;
using CurlMultiPtr = std::unique_ptr<CURLM, CurlMultiDeleter>;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Errors that a retry cannot fix.
bool IsPermanent(CURLcode code) {
  switch (code) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OUT_OF_MEMORY: return true;
    default: return false;
  }
}

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  }
  return true;
}

}  // namespace

struct HttpsSource::Impl {
  std::string url;
  HttpsOptions options;
  CurlMultiPtr multi;
  CurlEasyPtr easy;
  bool attached = false;  // easy is in multi
  bool paused = false;
  bool done = false;           // the current transfer finished
  CURLcode result = CURLE_OK;  // its result
  char error_buffer[CURL_ERROR_SIZE] = {};

  // The response being received.
  uint64_t request_offset = 0;
  uint64_t request_end = 0;  // exclusive; clipped to the size once known
  uint64_t window = kInitialWindow;
  long status = 0;
  bool headers_checked = false;
  std::optional<uint64_t> range_start;
  std::optional<uint64_t> range_total;
  std::string header_error;  // set when the response is unusable; aborts it

  std::optional<uint64_t> total_size;
  // Staging: bytes [begin, end) of `staging` are the bundle bytes starting at
  // `staged_offset`.
  std::vector<uint8_t> staging = std::vector<uint8_t>(kStagingSize);
  size_t begin = 0, end = 0;
  uint64_t staged_offset = 0;
  HttpsStats stats;

  bool Cancelled() const { return options.cancel && options.cancel->load(); }

  static size_t OnHeader(char* data, size_t size, size_t count, void* user) {
    auto* self = static_cast<Impl*>(user);
    std::string_view line(data, size * count);
    if (line.starts_with("HTTP/")) {  // a new response (e.g. after 100 Continue)
      self->range_start.reset();
      self->range_total.reset();
      self->status = 0;
    } else if (StartsWithNoCase(line, "content-range:")) {
      // "Content-Range: bytes START-END/TOTAL"
      unsigned long long start = 0, last = 0, total = 0;
      std::string copy(line.substr(14));
      if (std::sscanf(copy.c_str(), " bytes %llu-%llu/%llu", &start, &last, &total) == 3) {
        self->range_start = start;
        self->range_total = total;
      }
    }
    return size * count;
  }

  // Checks the response once its headers are complete; false aborts it.
  bool CheckResponse() {
    headers_checked = true;
    curl_easy_getinfo(easy.get(), CURLINFO_RESPONSE_CODE, &status);
    if (status == 200) {
      header_error =
          "the server ignores Range requests (answered 200, not 206); resuming "
          "downloads needs them";
      return false;
    }
    if (status != 206 || !range_start || !range_total) {
      header_error = fmt::format("unexpected HTTP status {} for a Range request", status);
      return false;
    }
    if (*range_start != request_offset) {
      header_error = fmt::format("server sent bytes from {} for a request from {}", *range_start,
                                 request_offset);
      return false;
    }
    if (total_size && *total_size != *range_total) {
      header_error =
          fmt::format("bundle changed on the server (size {} -> {})", *total_size, *range_total);
      return false;
    }
    total_size = *range_total;
    request_end = std::min(request_end, *total_size);
    return true;
  }

  static size_t OnData(char* data, size_t size, size_t count, void* user) {
    auto* self = static_cast<Impl*>(user);
    size_t length = size * count;
    if (!self->headers_checked && !self->CheckResponse()) return 0;  // CURLE_WRITE_ERROR
    if (self->staging.size() - self->end < length) self->Compact();
    if (self->staging.size() - self->end < length) {
      self->paused = true;
      return CURL_WRITEFUNC_PAUSE;
    }
    std::memcpy(self->staging.data() + self->end, data, length);
    self->end += length;
    self->stats.bytes_received += length;
    return length;
  }

  void Detach() {
    if (attached) curl_multi_remove_handle(multi.get(), easy.get());
    attached = false;
  }

  // Starts a request for bytes [offset, offset + window), clipped to the
  // size. New easy handles on the same multi handle reuse its connection.
  Result<void> Start(uint64_t offset) {
    Detach();
    easy.reset(curl_easy_init());
    if (!easy) return Error::Make(ErrorCode::kInternal, "curl_easy_init failed");
    CURL* e = easy.get();
    request_end = offset + window;
    if (total_size) request_end = std::min(request_end, *total_size);
    std::string range = fmt::format("{}-{}", offset, request_end - 1);
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!options.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options.ca_file.c_str());
    curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());  // copied by libcurl
    curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(options.connect_timeout.count() * 1000));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(options.stall_timeout.count()));
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Impl::OnHeader);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, this);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Impl::OnData);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, error_buffer);
    error_buffer[0] = '\0';
    request_offset = offset;
    status = 0;
    headers_checked = false;
    header_error.clear();
    range_start.reset();
    range_total.reset();
    paused = false;
    done = false;
    result = CURLE_OK;
    if (curl_multi_add_handle(multi.get(), e) != CURLM_OK) {
      return Error::Make(ErrorCode::kInternal, "curl_multi_add_handle failed");
    }
    attached = true;
    ++stats.requests;
    return {};
  }

  std::string FailureText() const {
    if (!header_error.empty()) return header_error;
    std::string text = curl_easy_strerror(result);
    if (error_buffer[0]) text = fmt::format("{} ({})", text, error_buffer);
    return text;
  }

  void Compact() {
    if (begin == 0) return;
    std::memmove(staging.data(), staging.data() + begin, end - begin);
    end -= begin;
    staged_offset += begin;
    begin = 0;
  }

  // Drives the transfer for up to ~100 ms.
  Result<void> Pump() {
    if (paused) Compact();
    if (paused && end < staging.size()) {
      paused = false;
      curl_easy_pause(easy.get(), CURLPAUSE_CONT);  // may call OnData right away
    }
    int running = 0;
    if (curl_multi_perform(multi.get(), &running) != CURLM_OK) {
      return Error::Make(ErrorCode::kInternal, "curl_multi_perform failed");
    }
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi.get(), &queued)) {
      if (msg->msg == CURLMSG_DONE) {
        done = true;
        result = msg->data.result;
      }
    }
    if (!done && !paused) curl_multi_poll(multi.get(), nullptr, 0, 100, nullptr);
    return {};
  }

  Result<void> Backoff(int attempt) {
    auto delay = options.initial_backoff * (1 << std::min(attempt, 16));
    delay = std::min(delay, options.max_backoff);
    auto until = std::chrono::steady_clock::now() + delay;
    while (std::chrono::steady_clock::now() < until) {
      if (Cancelled()) return Error::Make(ErrorCode::kCancelled, "download cancelled");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return {};
  }

  // Makes at least one more byte available in staging at staged_offset+end,
  // restarting the transfer (with backoff) when it failed.
  Result<void> Fill() {
    int failures = 0;
    uint64_t received_before = stats.bytes_received;
    while (true) {
      if (Cancelled()) return Error::Make(ErrorCode::kCancelled, "download cancelled");
      size_t had = end - begin;
      if (!done) TRY(Pump());
      if (end - begin > had) return {};
      if (!done) continue;
      if (result == CURLE_OK && header_error.empty() && staged_offset + end >= request_end &&
          total_size && request_end < *total_size) {
        // The window is complete: ask for the next, larger one.
        window = std::min(window * 2, kMaxWindow);
        TRY(Start(request_end));
        continue;
      }
      // The transfer ended without giving us the bytes we need.
      bool permanent = !header_error.empty() || IsPermanent(result) ||
                       (result == CURLE_HTTP_RETURNED_ERROR && status >= 400 && status < 500);
      std::string why = result == CURLE_OK ? "connection closed early" : FailureText();
      if (permanent) {
        ErrorCode code = header_error.empty() ? ErrorCode::kNetwork : ErrorCode::kUnsupported;
        if (result == CURLE_PEER_FAILED_VERIFICATION) {
          why = fmt::format("server certificate not trusted: {}", why);
        }
        return Error::Make(code, fmt::format("downloading {}: {}", url, why));
      }
      if (stats.bytes_received > received_before) failures = 0;  // progress resets the budget
      received_before = stats.bytes_received;
      if (++failures > options.max_retries) {
        return Error::Make(ErrorCode::kNetwork,
                           fmt::format("downloading {}: giving up after {} attempts at byte {}: {}",
                                       url, failures, staged_offset + end, why));
      }
      TRY(Backoff(failures - 1));
      ++stats.retries;
      TRY(Start(staged_offset + end));
    }
  }
};

HttpsSource::HttpsSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpsSource::~HttpsSource() {
  if (impl_) impl_->Detach();
}

Result<std::unique_ptr<HttpsSource>> HttpsSource::Open(const std::string& url,
                                                       const HttpsOptions& options) {
  if (!url.starts_with("https://")) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} is not an https:// URL", url));
  }
  GlobalInit();
  auto impl = std::make_unique<Impl>();
  impl->url = url;
  impl->options = options;
  impl->multi.reset(curl_multi_init());
  if (!impl->multi) return Error::Make(ErrorCode::kInternal, "curl_multi_init failed");
  TRY(impl->Start(0));
  // Learn the size: receive the first bytes of the body.
  TRY(impl->Fill());
  if (!impl->total_size) {
    return Error::Make(ErrorCode::kInternal, fmt::format("downloading {}: no size known", url));
  }
  return std::unique_ptr<HttpsSource>(new HttpsSource(std::move(impl)));
}

uint64_t HttpsSource::Size() const {
  return impl_->total_size.value_or(0);
}
std::string HttpsSource::Describe() const {
  return impl_->url;
}
HttpsStats HttpsSource::stats() const {
  return impl_->stats;
}

Result<void> HttpsSource::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  Impl& s = *impl_;
  uint64_t size = Size();
  if (offset > size || out.size() > size - offset) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("reading {} bytes at {} from {}: past its end ({} bytes)",
                                   out.size(), offset, s.url, size));
  }
  uint64_t staged_end = s.staged_offset + s.end;
  uint64_t staged_begin = s.staged_offset + s.begin;
  // Gaps up to this size (padding between payloads) are read through; longer
  // ones (chunks the slot already holds) are skipped with a new request.
  constexpr uint64_t kReadThrough = 64u << 10;
  if (offset < staged_begin || offset > staged_end + kReadThrough) {
    // Far from what we hold: reposition with a new Range request.
    s.begin = s.end = 0;
    s.staged_offset = offset;
    s.window = kInitialWindow;
    TRY(s.Start(offset));
  } else {
    while (s.staged_offset + s.end < offset) {
      s.begin = s.end;
      TRY(s.Fill());
    }
    s.begin = static_cast<size_t>(offset - s.staged_offset);
  }
  size_t copied = 0;
  while (copied < out.size()) {
    if (s.begin == s.end) TRY(s.Fill());
    size_t n = std::min(out.size() - copied, s.end - s.begin);
    std::memcpy(out.data() + copied, s.staging.data() + s.begin, n);
    s.begin += n;
    copied += n;
  }
  return {};
}

}  // namespace ralph::ota
