#include "https_load.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Log-linear buckets over nanoseconds: exact below 128 ns, then 64 per
// power of two, so a percentile is within ~1% of the measured value.
class Histogram {
 public:
  void Add(double us) {
    uint64_t v = static_cast<uint64_t>(us * 1000.0);
    size_t index = v;
    if (v >= 128) {
      int exp = 63 - __builtin_clzll(v);  // 7 and up
      index = 128 + static_cast<size_t>(exp - 7) * 64 + ((v >> (exp - 6)) - 64);
    }
    index = std::min(index, counts_.size() - 1);
    ++counts_[index];
    ++total_;
    max_ = std::max(max_, us);
  }
  void Merge(const Histogram& other) {
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    total_ += other.total_;
    max_ = std::max(max_, other.max_);
  }
  // In µs: the middle of the bucket that holds the p-th percentile.
  double Percentile(double p) const {
    uint64_t want = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(total_))));
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= want) return std::min(max_, Value(i) / 1000.0);
    }
    return max_;
  }
  double max() const { return max_; }

 private:
  static double Value(size_t index) {
    if (index < 128) return static_cast<double>(index);
    int exp = static_cast<int>((index - 128) / 64) + 7;
    uint64_t sub = (index - 128) % 64;
    uint64_t width = uint64_t{1} << (exp - 6);
    return static_cast<double>(((64 + sub) * width) + width / 2);
  }
  std::array<uint64_t, 128 + 64 * 34> counts_{};  // up to 2^40 ns (18 min)
  uint64_t total_ = 0;
  double max_ = 0;
};

struct SslCtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslDeleter {
  void operator()(SSL* s) const { SSL_free(s); }
};

std::string SslError(std::string_view what) {
  unsigned long e = ERR_get_error();
  char text[256] = "unknown";
  if (e != 0) ERR_error_string_n(e, text, sizeof text);
  return fmt::format("{}: {}", what, text);
}

struct Connection {
  UniqueFd fd;
  std::unique_ptr<SSL, SslDeleter> ssl;
  std::string in;          // reply bytes read so far
  size_t written = 0;      // of the request
  bool writing = true;     // else reading the reply
  Clock::time_point sent;  // when the request's first byte went out
};

Result<Connection> Connect(const LoadOptions& options, SSL_CTX* context) {
  Connection c;
  c.fd = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!c.fd) return Error::FromErrno("socket", errno);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(options.port);
  if (::inet_pton(AF_INET, options.host.c_str(), &address.sin_addr) != 1) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("host {}", options.host));
  }
  if (::connect(c.fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return Error::FromErrno(fmt::format("connect {}:{}", options.host, options.port), errno);
  }
  int one = 1;
  ::setsockopt(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c.ssl.reset(SSL_new(context));
  SSL_set_fd(c.ssl.get(), c.fd.get());
  if (SSL_connect(c.ssl.get()) != 1) return Error::Make(ErrorCode::kNetwork, SslError("handshake"));
  ::fcntl(c.fd.get(), F_SETFL, ::fcntl(c.fd.get(), F_GETFL) | O_NONBLOCK);
  return c;
}

// The length of a complete reply at the start of `in` (0: not complete
// yet), its status and body size; -1 in status for a reply we cannot frame.
size_t CompleteReply(const std::string& in, int& status, size_t& body) {
  size_t end = in.find("\r\n\r\n");
  if (end == std::string::npos) return 0;
  status = -1;
  if (in.compare(0, 9, "HTTP/1.1 ") == 0) status = std::atoi(in.c_str() + 9);
  std::string head = in.substr(0, end);
  for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t at = head.find("\r\ncontent-length:");
  if (at == std::string::npos) {
    status = -1;
    return end + 4;
  }
  body = std::strtoull(head.c_str() + at + 17, nullptr, 10);
  if (in.size() < end + 4 + body) return 0;
  return end + 4 + body;
}

struct ThreadResult {
  Histogram histogram;
  uint64_t ok = 0, failed = 0;
  size_t reply_bytes = 0;
  std::string error;
};

void RunThread(std::vector<Connection>& connections, const std::string& request,
               std::atomic<int64_t>& budget, ThreadResult& out) {
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  size_t active = connections.size();
  auto take = [&] { return budget.fetch_sub(1) > 0; };
  for (size_t i = 0; i < connections.size(); ++i) {
    epoll_event event{.events = EPOLLIN | EPOLLOUT, .data = {.u64 = i}};
    ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, connections[i].fd.get(), &event);
    if (!take()) {
      connections[i].writing = false;
      connections[i].fd.reset();
      --active;
      continue;
    }
    connections[i].sent = Clock::now();
  }
  std::array<epoll_event, 64> events;
  char buffer[16384];
  while (active > 0) {
    int n = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), 10000);
    if (n <= 0) {
      out.error = n == 0 ? "no reply for 10 s" : std::strerror(errno);
      return;
    }
    for (int e = 0; e < n; ++e) {
      Connection& c = connections[events[static_cast<size_t>(e)].data.u64];
      if (!c.fd) continue;
      // Drive the connection as far as it goes without blocking.
      while (true) {
        if (c.writing) {
          int wrote = SSL_write(c.ssl.get(), request.data() + c.written,
                                static_cast<int>(request.size() - c.written));
          if (wrote <= 0) {
            int err = SSL_get_error(c.ssl.get(), wrote);
            if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) break;
            out.error = SslError("write");
            return;
          }
          c.written += static_cast<size_t>(wrote);
          if (c.written == request.size()) c.writing = false;
          continue;
        }
        int got = SSL_read(c.ssl.get(), buffer, sizeof buffer);
        if (got <= 0) {
          int err = SSL_get_error(c.ssl.get(), got);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
          out.error = SslError("read (the server closed the connection?)");
          return;
        }
        c.in.append(buffer, static_cast<size_t>(got));
        int status = 0;
        size_t body = 0;
        size_t length = CompleteReply(c.in, status, body);
        if (length == 0) continue;
        if (status < 0) {
          out.error = "a reply without Content-Length: " + c.in.substr(0, 200);
          return;
        }
        out.histogram.Add(std::chrono::duration<double, std::micro>(Clock::now() - c.sent).count());
        if (status == 200) {
          ++out.ok;
          if (out.reply_bytes == 0) out.reply_bytes = body;
        } else {
          ++out.failed;
        }
        c.in.erase(0, length);
        if (!take()) {
          ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
          c.fd.reset();
          --active;
          break;
        }
        c.writing = true;
        c.written = 0;
        c.sent = Clock::now();
      }
    }
  }
}

}  // namespace

Result<LoadResult> RunLoad(const LoadOptions& options) {
  std::unique_ptr<SSL_CTX, SslCtxDeleter> context(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(context.get(), TLS1_3_VERSION);
  // The benchmark measures the servers, not a pin check: no server verification.
  SSL_CTX_set_verify(context.get(), SSL_VERIFY_NONE, nullptr);
  if (SSL_CTX_use_certificate_file(context.get(), options.cert_file.c_str(), SSL_FILETYPE_PEM) !=
          1 ||
      SSL_CTX_use_PrivateKey_file(context.get(), options.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return Error::Make(ErrorCode::kInvalidArgument, SslError("loading the client certificate"));
  }
  int threads = std::max(1, std::min(options.threads, options.connections));
  std::vector<std::vector<Connection>> shards(static_cast<size_t>(threads));
  for (int i = 0; i < options.connections; ++i) {
    Connection c = TRY(Connect(options, context.get()));
    shards[static_cast<size_t>(i % threads)].push_back(std::move(c));
  }
  std::string request = fmt::format(
      "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: ralph-loadgen\r\nAccept: "
      "application/json\r\n\r\n",
      options.path, options.host, options.port);
  std::atomic<int64_t> budget(static_cast<int64_t>(options.requests));
  std::vector<ThreadResult> results(static_cast<size_t>(threads));
  auto start = Clock::now();
  {
    std::vector<std::thread> workers;
    for (size_t t = 0; t < shards.size(); ++t) {
      workers.emplace_back([&, t] { RunThread(shards[t], request, budget, results[t]); });
    }
    for (std::thread& worker : workers) worker.join();
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Histogram all;
  LoadResult out;
  for (const ThreadResult& r : results) {
    if (!r.error.empty()) return Error::Make(ErrorCode::kNetwork, r.error);
    all.Merge(r.histogram);
    out.requests += r.ok;
    out.failures += r.failed;
    if (out.reply_bytes == 0) out.reply_bytes = r.reply_bytes;
  }
  out.seconds = seconds;
  out.rps = static_cast<double>(out.requests + out.failures) / seconds;
  out.p50_us = all.Percentile(50);
  out.p90_us = all.Percentile(90);
  out.p99_us = all.Percentile(99);
  out.max_us = all.max();
  return out;
}

}  // namespace ralph::bench
