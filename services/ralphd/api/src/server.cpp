// The HTTPS server on Boost.Beast over Boost.Asio (docs/api.md "Server").
//
// Each connection is a chain of async operations on its own strand:
// detect TLS (plain HTTP gets a 400 and a close) -> TLS 1.3 handshake (a
// client certificate is asked for but optional, so /v1/pair works) ->
// read header (timeout: header_timeout for the first request,
// idle_timeout after) -> read body (body_timeout) -> route -> write
// (write_timeout) -> next request. An event stream or a terminal takes the
// connection over. Every timeout is the tcp_stream's, so a stalled peer
// costs one socket and one timer, never a thread.
#include <openssl/ssl.h>

#include <algorithm>
#include <charconv>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <nlohmann/json.hpp>

#include "services/ralphd/api/server.h"

namespace ralph::ralphd::api {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

namespace {

constexpr RouteInfo kRoutes[] = {
    {"POST", "/v1/pair"},    {"GET", "/v1/openapi.json"},
    {"GET", "/v1/pairings"}, {"DELETE", "/v1/pairings/{id}"},
    {"GET", "/v1/events"},   {"GET", "/v1/jobs/{id}/terminal"},
};

constexpr size_t kEventBatch = 256;

}  // namespace

std::span<const RouteInfo> ServerRoutes() {
  return kRoutes;
}

std::string ErrorBody(std::string_view code, std::string_view message) {
  return nlohmann::json{{"error", {{"code", code}, {"message", message}}}}.dump();
}

ApiReply ReplyForError(const Error& error) {
  int status = 500;
  switch (error.code()) {
    case ErrorCode::kInvalidArgument: status = 400; break;
    case ErrorCode::kNotFound: status = 404; break;
    case ErrorCode::kPermissionDenied:
    case ErrorCode::kRefused:
    case ErrorCode::kVerificationFailed: status = 403; break;
    case ErrorCode::kInvalidState:
    case ErrorCode::kAlreadyExists: status = 409; break;
    case ErrorCode::kBusy: status = 429; break;
    case ErrorCode::kNoSpace: status = 413; break;
    case ErrorCode::kUnsupported: status = 501; break;
    default: break;
  }
  return {status, ErrorBody(ErrorCodeName(error.code()), error.message())};
}

struct ApiServer::Impl {
  ServerOptions options;
  Dependencies deps;
  std::unique_ptr<net::io_context> ioc;
  ssl::context ssl_context{ssl::context::tls_server};
  std::optional<tcp::acceptor> acceptor;
  std::optional<net::steady_timer> accept_backoff;
  std::vector<std::thread> threads;
  uint16_t port = 0;
  bool stopped = false;

  std::atomic<uint64_t> accepted{0}, refused_over_limit{0}, open_connections{0},
      plain_http_refused{0}, handshake_failures{0}, timeouts{0}, open_streams{0}, requests{0};

  Impl(const ServerOptions& o, const Dependencies& d) : options(o), deps(d) {}
  void Accept();
};

namespace {

using Impl = ApiServer::Impl;
using TlsStream = ssl::stream<beast::tcp_stream>;

// Holds one of max_connections for as long as a connection lives, moved
// from the HTTP session to a terminal session.
class ConnectionSlot {
 public:
  explicit ConnectionSlot(Impl& server) : server_(&server) { server.open_connections++; }
  ConnectionSlot(ConnectionSlot&& other) noexcept
      : server_(std::exchange(other.server_, nullptr)) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (server_) server_->open_connections--;
  }

 private:
  Impl* server_;
};

// One of max_streams, or nothing when all are taken.
class StreamSlot {
 public:
  static std::optional<StreamSlot> Take(Impl& server) {
    uint64_t open = server.open_streams.load();
    do {
      if (open >= server.options.limits.max_streams) return std::nullopt;
    } while (!server.open_streams.compare_exchange_weak(open, open + 1));
    return StreamSlot(server);
  }
  StreamSlot(StreamSlot&& other) noexcept : server_(std::exchange(other.server_, nullptr)) {}
  StreamSlot& operator=(StreamSlot&& other) noexcept {
    if (this != &other) {
      if (server_) server_->open_streams--;
      server_ = std::exchange(other.server_, nullptr);
    }
    return *this;
  }
  ~StreamSlot() {
    if (server_) server_->open_streams--;
  }

 private:
  explicit StreamSlot(Impl& server) : server_(&server) {}
  Impl* server_;
};

bool IsTimeout(beast::error_code ec) {
  return ec == beast::error::timeout;
}

// "/v1/jobs/{id}/terminal" -> id, or empty.
std::string_view TerminalJobId(std::string_view path) {
  constexpr std::string_view kPrefix = "/v1/jobs/", kSuffix = "/terminal";
  if (!path.starts_with(kPrefix) || !path.ends_with(kSuffix)) return {};
  std::string_view id = path.substr(kPrefix.size(), path.size() - kPrefix.size() - kSuffix.size());
  if (id.empty() || id.find('/') != std::string_view::npos) return {};
  return id;
}

// The value of `key` in a query string, when present.
std::optional<std::string_view> QueryValue(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key) {
      return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::string PairedClientJson(const PairedClient& client) {
  nlohmann::json json{{"id", client.id},
                      {"name", client.name},
                      {"spki_sha256", client.spki_sha256_hex},
                      {"paired", client.paired_unix},
                      {"expires", client.expires_unix}};
  json["revoked"] =
      client.revoked_unix == 0 ? nlohmann::json() : nlohmann::json(client.revoked_unix);
  return json.dump();
}

std::string FormatEvent(const StreamEvent& event) {
  std::string out = fmt::format("id: {}\nevent: {}\n", event.seq, event.type);
  std::string_view data = event.data;
  // SSE data is line-based: a newline inside the payload starts a new data line.
  while (true) {
    size_t newline = data.find('\n');
    out += "data: ";
    out += data.substr(0, newline);
    out += '\n';
    if (newline == std::string_view::npos) break;
    data.remove_prefix(newline + 1);
  }
  out += '\n';
  return out;
}

class TerminalSession;

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Impl& server, tcp::socket&& socket)
      : server_(server), slot_(server), stream_(std::move(socket), server.ssl_context) {
    beast::error_code ec;
    auto endpoint = beast::get_lowest_layer(stream_).socket().remote_endpoint(ec);
    remote_ = ec ? "unknown" : endpoint.address().to_string();
  }
  ~HttpSession() {
    if (subscription_) server_.deps.events->Unsubscribe(*subscription_);
  }

  void Run() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->DetectTls(); });
  }

 private:
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }
  const ServerLimits& limits() const { return server_.options.limits; }

  void DetectTls() {
    lowest().expires_after(limits().handshake_timeout);
    beast::async_detect_ssl(lowest(), buffer_,
                            [self = shared_from_this()](beast::error_code ec, bool is_tls) {
                              self->OnDetected(ec, is_tls);
                            });
  }

  void OnDetected(beast::error_code ec, bool is_tls) {
    if (ec) {
      if (IsTimeout(ec)) server_.timeouts++;
      return;
    }
    if (!is_tls) return RefusePlainHttp();
    stream_.async_handshake(ssl::stream_base::server, buffer_.data(),
                            [self = shared_from_this()](beast::error_code ec, size_t used) {
                              self->OnHandshake(ec, used);
                            });
  }

  void RefusePlainHttp() {
    server_.plain_http_refused++;
    std::string body = ErrorBody("tls-required", "this port speaks HTTPS (TLS 1.3) only");
    auto message = std::make_shared<std::string>(
        fmt::format("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: "
                    "{}\r\nConnection: close\r\n\r\n{}",
                    body.size(), body));
    lowest().expires_after(limits().write_timeout);
    net::async_write(lowest(), net::buffer(*message),
                     [self = shared_from_this(), message](beast::error_code, size_t) {
                       beast::error_code ignored;
                       self->lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
                     });
  }

  void OnHandshake(beast::error_code ec, size_t used) {
    if (ec) {
      if (IsTimeout(ec)) {
        server_.timeouts++;
      } else {
        server_.handshake_failures++;
      }
      return;
    }
    buffer_.consume(used);
    ReadHeader();
  }

  void ReadHeader() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(limits().max_header_bytes));
    // The limit is the route's, known once the header is in (OnHeader).
    parser_->body_limit(boost::none);
    lowest().expires_after(first_request_ ? limits().header_timeout : limits().idle_timeout);
    first_request_ = false;
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  // Errors that leave the stream unusable get an error reply when one can
  // still be sent, then the connection closes.
  bool HandleReadError(beast::error_code ec) {
    if (!ec) return false;
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == ssl::error::stream_truncated || ec == net::error::connection_reset ||
        ec == net::error::operation_aborted) {
      return true;
    }
    if (IsTimeout(ec)) {
      server_.timeouts++;
      return true;
    }
    if (ec == http::error::header_limit) {
      Send({431, ErrorBody("header-too-large", fmt::format("the request header is over {} bytes",
                                                           limits().max_header_bytes))},
           false);
    } else if (ec == http::error::body_limit) {
      SendBodyTooLarge();
    } else {
      Send({400, ErrorBody("bad-request", fmt::format("malformed HTTP request: {}", ec.message()))},
           false);
    }
    return true;
  }

  // The body's limit is the route's: ServerLimits::max_body_bytes unless
  // the handler gives the route its own (a workspace upload). A declared
  // length over it is refused before any of the body is read; a chunked
  // body stops at the limit.
  void SendBodyTooLarge() {
    Send({413, ErrorBody("body-too-large",
                         fmt::format("the request body is over {} bytes, the limit of {} {}",
                                     body_limit_, method_, path_))},
         false);
  }

  void OnHeader(beast::error_code ec) {
    if (HandleReadError(ec)) return;
    const auto& header = parser_->get();
    std::string_view target(header.target().data(), header.target().size());
    path_ = std::string(target.substr(0, target.find('?')));
    method_ = std::string(header.method_string());
    body_limit_ = limits().max_body_bytes;
    if (path_.starts_with("/v1/") && path_ != "/v1/pair") {
      body_limit_ = server_.deps.handler.BodyLimit(method_, path_).value_or(body_limit_);
    }
    if (auto length = parser_->content_length(); length && *length > body_limit_) {
      return SendBodyTooLarge();
    }
    parser_->body_limit(body_limit_);
    // A large body gets time for its size at the slowest rate allowed: a
    // workspace upload is not held to a JSON body's timeout.
    uint64_t size = parser_->content_length().value_or(body_limit_);
    uint64_t rate = std::max<uint64_t>(1, limits().min_body_bytes_per_second);
    lowest().expires_after(limits().body_timeout + std::chrono::seconds(size / rate));
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRequest(ec); });
  }

  void OnRequest(beast::error_code ec) {
    if (HandleReadError(ec)) return;
    server_.requests++;
    lowest().expires_never();
    Route(parser_->release());
  }

  void Route(http::request<http::string_body> request) {
    std::string_view target(request.target().data(), request.target().size());
    size_t question = target.find('?');
    std::string path(target.substr(0, question));
    std::string query(question == std::string_view::npos ? std::string_view()
                                                         : target.substr(question + 1));
    std::string method(request.method_string());
    bool keep_alive = request.keep_alive();

    if (path == "/v1/pair") {
      if (method != "POST") return Send(MethodNotAllowed("POST"), keep_alive);
      return Send(Pair(request.body()), keep_alive);
    }
    X509* peer = SSL_get0_peer_certificate(stream_.native_handle());
    // The certificate's signature is verified once per TLS session; its
    // later requests check only what can change (paired, revoked, expired).
    auto client = authorized_ ? server_.deps.registry.Recheck(caller_.client_id)
                              : server_.deps.registry.Authorize(peer);
    if (!client) {
      return Send({peer ? 403 : 401,
                   ErrorBody(peer ? "forbidden" : "unauthenticated", client.error().message())},
                  keep_alive);
    }
    caller_ = Caller{client->id, client->name};
    if (!std::exchange(authorized_, true)) server_.deps.handler.SessionOpened(caller_, remote_);
    if (path == "/v1/openapi.json") {
      if (method != "GET") return Send(MethodNotAllowed("GET"), keep_alive);
      return Send({200, std::string(OpenApiDocument())}, keep_alive);
    }
    if (path == "/v1/pairings") {
      if (method != "GET") return Send(MethodNotAllowed("GET"), keep_alive);
      auto list = server_.deps.registry.List();
      if (!list) return Send(ReplyForError(list.error()), keep_alive);
      std::string body = "{\"pairings\":[";
      for (size_t i = 0; i < list->size(); ++i) {
        if (i) body += ',';
        body += PairedClientJson((*list)[i]);
      }
      return Send({200, body + "]}"}, keep_alive);
    }
    if (path.starts_with("/v1/pairings/")) {
      if (method != "DELETE") return Send(MethodNotAllowed("DELETE"), keep_alive);
      std::string id = path.substr(std::string_view("/v1/pairings/").size());
      auto revoked = server_.deps.registry.Revoke(id, fmt::format("client {}", caller_.client_id));
      if (!revoked) return Send(ReplyForError(revoked.error()), keep_alive);
      return Send({200, nlohmann::json{{"revoked", id}}.dump()}, keep_alive);
    }
    if (path == "/v1/events") {
      if (method != "GET") return Send(MethodNotAllowed("GET"), keep_alive);
      return StartEvents(query, request);
    }
    if (std::string_view job = TerminalJobId(path); !job.empty()) {
      if (method != "GET") return Send(MethodNotAllowed("GET"), keep_alive);
      if (!websocket::is_upgrade(request)) {
        return Send({426, ErrorBody("upgrade-required",
                                    "the terminal is a WebSocket: send Upgrade: websocket")},
                    keep_alive);
      }
      return StartTerminal(std::string(job), std::move(request));
    }
    if (!path.starts_with("/v1/")) {
      return Send(
          {404, ErrorBody("not-found", fmt::format("no route {}; the API is under /v1/", path))},
          keep_alive);
    }
    ApiRequest api_request{std::move(method), std::move(path), std::move(query),
                           std::move(request.body())};
    // The reply comes back on the connection's strand, from whichever
    // thread answered; this thread serves other connections meanwhile.
    server_.deps.handler.HandleAsync(
        caller_, std::move(api_request), [self = shared_from_this(), keep_alive](ApiReply reply) {
          net::post(self->stream_.get_executor(),
                    [self, keep_alive, reply = std::move(reply)]() mutable {
                      self->Send(std::move(reply), keep_alive);
                    });
        });
  }

  static ApiReply MethodNotAllowed(std::string_view allowed) {
    return {405, ErrorBody("method-not-allowed", fmt::format("this route allows {}", allowed))};
  }

  ApiReply Pair(const std::string& body) {
    auto request = ParsePairRequest(body);
    if (!request) return ReplyForError(request.error());
    std::array<uint8_t, kPairingExporterSize> exporter{};
    if (SSL_export_keying_material(stream_.native_handle(), exporter.data(), exporter.size(),
                                   kPairingExporterLabel.data(), kPairingExporterLabel.size(),
                                   nullptr, 0, 0) != 1) {
      return {500, ErrorBody("internal", "exporting the TLS session's keying material failed")};
    }
    auto paired = server_.deps.registry.Pair(*request, exporter, remote_);
    if (!paired) return ReplyForError(paired.error());
    return {200, nlohmann::json{{"client_id", paired->client.id},
                                {"name", paired->client.name},
                                {"expires", paired->client.expires_unix},
                                {"certificate", paired->certificate_pem},
                                {"ca", paired->ca_pem}}
                     .dump()};
  }

  void Send(ApiReply reply, bool keep_alive) {
    auto response = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(reply.status), 11);
    response->set(http::field::server, "ralphd");
    response->set(http::field::content_type, reply.content_type);
    response->set(http::field::cache_control, "no-store");
    response->body() = std::move(reply.body);
    response->keep_alive(keep_alive);
    response->prepare_payload();
    lowest().expires_after(limits().write_timeout);
    http::async_write(stream_, *response,
                      [self = shared_from_this(), response](beast::error_code ec, size_t) {
                        if (ec) {
                          if (IsTimeout(ec)) self->server_.timeouts++;
                          return;
                        }
                        if (response->keep_alive()) return self->ReadHeader();
                        self->Close();
                      });
  }

  // TLS close_notify, bounded by the handshake timeout, then the socket goes.
  void Close() {
    lowest().expires_after(limits().handshake_timeout);
    stream_.async_shutdown([self = shared_from_this()](beast::error_code) {
      beast::error_code ignored;
      self->lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    });
  }

  // --- Server-Sent Events ---------------------------------------------------

  void StartEvents(std::string_view query, const http::request<http::string_body>& request) {
    if (!server_.deps.events) {
      return Send({503, ErrorBody("unavailable", "this server has no event source")}, false);
    }
    // Strict, as the core's decoder: after=SEQ, job=ID and nothing else.
    for (std::string_view rest = query; !rest.empty();) {
      std::string_view pair = rest.substr(0, rest.find('&'));
      rest.remove_prefix(std::min(rest.size(), pair.size() + 1));
      std::string_view key = pair.substr(0, pair.find('='));
      if (!pair.empty() && key != "after" && key != "job") {
        return Send({400, ErrorBody("invalid-argument",
                                    fmt::format("query.{}: unknown parameter (the event stream "
                                                "takes after and job)",
                                                key))},
                    false);
      }
    }
    std::optional<std::string_view> after = QueryValue(query, "after");
    // The SSE reconnect header stands in for ?after= when a browser-style
    // client sends it.
    std::string last_event_id(request["Last-Event-ID"]);
    if (!after && !last_event_id.empty()) after = last_event_id;
    if (after) {
      auto [end, ec] = std::from_chars(after->data(), after->data() + after->size(), cursor_);
      if (after->empty() || ec != std::errc() || end != after->data() + after->size()) {
        return Send({400, ErrorBody("invalid-argument",
                                    fmt::format("query parameter after=\"{}\" is not a sequence "
                                                "number (a non-negative integer)",
                                                *after))},
                    false);
      }
    }
    if (std::optional<std::string_view> job = QueryValue(query, "job")) {
      auto [end, ec] = std::from_chars(job->data(), job->data() + job->size(), job_);
      if (job->empty() || ec != std::errc() || end != job->data() + job->size() || job_ == 0) {
        return Send({400, ErrorBody("invalid-argument",
                                    fmt::format("query parameter job=\"{}\" is not a job id (a "
                                                "positive integer)",
                                                *job))},
                    false);
      }
    }
    stream_slot_ = StreamSlot::Take(server_);
    if (!stream_slot_) {
      return Send({503, ErrorBody("too-many-streams",
                                  fmt::format("{} event streams and terminals are open; the "
                                              "limit is {}",
                                              server_.open_streams.load(), limits().max_streams))},
                  false);
    }
    timer_.emplace(stream_.get_executor());
    std::weak_ptr<HttpSession> weak = shared_from_this();
    subscription_ = server_.deps.events->Subscribe([weak] {
      if (auto self = weak.lock()) {
        net::post(self->stream_.get_executor(), [self] {
          self->events_pending_ = true;
          if (self->timer_) self->timer_->cancel();
        });
      }
    });
    auto header = std::make_shared<std::string>(
        "HTTP/1.1 200 OK\r\nServer: ralphd\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    WriteStream(header);
  }

  void WriteStream(std::shared_ptr<std::string> text) {
    lowest().expires_after(limits().write_timeout);
    net::async_write(stream_, net::buffer(*text),
                     [self = shared_from_this(), text](beast::error_code ec, size_t) {
                       if (ec) {
                         if (IsTimeout(ec)) self->server_.timeouts++;
                         return;
                       }
                       self->lowest().expires_never();
                       if (!self->watching_peer_) self->WatchPeer();
                       self->PumpEvents();
                     });
  }

  // An event-stream client sends nothing after its request, so any read
  // completing (end of stream, reset, stray bytes) means it is gone: the
  // stream and its slot end now, not at the next failed heartbeat.
  void WatchPeer() {
    watching_peer_ = true;
    stream_.async_read_some(net::buffer(watch_byte_),
                            [self = shared_from_this()](beast::error_code, size_t) {
                              self->peer_gone_ = true;
                              if (self->timer_) self->timer_->cancel();
                              beast::error_code ignored;
                              self->lowest().socket().close(ignored);
                            });
  }

  void PumpEvents() {
    if (peer_gone_) return;
    events_pending_ = false;
    EventBatch batch = server_.deps.events->Read(cursor_, kEventBatch);
    auto text = std::make_shared<std::string>();
    if (batch.first_retained > cursor_ + 1) {
      // Said, never silent: these events are gone from the source.
      *text += FormatEvent({batch.first_retained - 1, "gap",
                            nlohmann::json{{"first_missing", cursor_ + 1},
                                           {"last_missing", batch.first_retained - 1}}
                                .dump()});
      cursor_ = batch.first_retained - 1;
    }
    for (const StreamEvent& event : batch.events) {
      if (event.seq <= cursor_) continue;
      // A job's stream skips the others' events (and moves past them).
      if (job_ == 0 || event.job == job_) *text += FormatEvent(event);
      cursor_ = event.seq;
    }
    if (!text->empty()) return WriteStream(text);
    if (batch.events.size() >= kEventBatch) {
      // A full batch of other jobs' events: read on (through the executor,
      // so a long filtered backlog is no deep recursion).
      return net::post(stream_.get_executor(), [self = shared_from_this()] { self->PumpEvents(); });
    }
    if (events_pending_) return PumpEvents();
    timer_->expires_after(limits().event_heartbeat);
    timer_->async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) return self->WriteStream(std::make_shared<std::string>(": heartbeat\n\n"));
      if (ec == net::error::operation_aborted) self->PumpEvents();
    });
  }

  // --- Terminal --------------------------------------------------------------

  void StartTerminal(std::string job, http::request<http::string_body> request);

  Impl& server_;
  ConnectionSlot slot_;
  TlsStream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  // The request being read: its route and body limit (OnHeader).
  std::string method_, path_;
  uint64_t body_limit_ = 0;
  bool first_request_ = true;
  std::string remote_;
  Caller caller_;
  bool authorized_ = false;  // Authorize accepted this session's certificate
  // Event streaming state.
  std::optional<StreamSlot> stream_slot_;
  std::optional<net::steady_timer> timer_;
  std::optional<uint64_t> subscription_;
  uint64_t cursor_ = 0;
  uint64_t job_ = 0;  // ?job=ID: only that job's events
  bool events_pending_ = false;
  bool watching_peer_ = false;
  bool peer_gone_ = false;
  char watch_byte_[1];
};

// One client attached to one job's pty over a WebSocket: binary frames are
// pty bytes both ways; text frames are JSON control messages.
class TerminalSession : public std::enable_shared_from_this<TerminalSession> {
 public:
  TerminalSession(Impl& server, ConnectionSlot slot, StreamSlot stream_slot, TlsStream&& stream,
                  Caller caller)
      : server_(server),
        slot_(std::move(slot)),
        stream_slot_(std::move(stream_slot)),
        ws_(std::move(stream)),
        caller_(std::move(caller)) {}
  ~TerminalSession() { DetachTerminal(); }

  void Start(std::string job, http::request<http::string_body> request) {
    std::weak_ptr<TerminalSession> weak = shared_from_this();
    TerminalCallbacks callbacks;
    callbacks.output = [weak](std::string_view output) {
      if (auto self = weak.lock()) {
        net::post(self->ws_.get_executor(), [self, data = std::string(output)]() mutable {
          self->Queue(std::move(data), true);
        });
      }
    };
    callbacks.closed = [weak](int exit_status) {
      if (auto self = weak.lock()) {
        net::post(self->ws_.get_executor(), [self, exit_status] {
          self->Queue(nlohmann::json{{"type", "exit"}, {"status", exit_status}}.dump(), false);
          self->close_after_flush_ = true;
          self->Flush();
        });
      }
    };
    auto attached = server_.deps.terminals->Attach(caller_, job, std::move(callbacks));
    if (!attached) {
      ApiReply reply = ReplyForError(attached.error());
      auto response = std::make_shared<http::response<http::string_body>>(
          static_cast<http::status>(reply.status), 11);
      response->set(http::field::content_type, reply.content_type);
      response->body() = std::move(reply.body);
      response->keep_alive(false);
      response->prepare_payload();
      beast::get_lowest_layer(ws_).expires_after(server_.options.limits.write_timeout);
      http::async_write(ws_.next_layer(), *response,
                        [self = shared_from_this(), response](beast::error_code, size_t) {});
      return;
    }
    terminal_ = std::move(*attached);
    // The WebSocket keeps its own timeouts (and pings an idle peer).
    beast::get_lowest_layer(ws_).expires_never();
    websocket::stream_base::timeout timeout{};
    timeout.handshake_timeout = server_.options.limits.handshake_timeout;
    timeout.idle_timeout = server_.options.limits.idle_timeout;
    timeout.keep_alive_pings = true;
    ws_.set_option(timeout);
    ws_.read_message_max(64 * 1024);
    ws_.async_accept(request, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->DetachTerminal();
      self->accepted_ = true;
      self->Read();
      self->Flush();
    });
  }

 private:
  void DetachTerminal() {
    if (terminal_) {
      terminal_->Detach();
      terminal_.reset();
    }
  }

  void Read() {
    ws_.async_read(read_buffer_,
                   [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec) {
      if (IsTimeout(ec)) server_.timeouts++;
      return DetachTerminal();
    }
    std::string message = beast::buffers_to_string(read_buffer_.data());
    read_buffer_.consume(read_buffer_.size());
    if (ws_.got_binary()) {
      if (terminal_) {
        if (auto written = terminal_->Write(message); !written) {
          SendControlError(written.error().ToString());
        }
      }
      return Read();
    }
    nlohmann::json control = nlohmann::json::parse(message, nullptr, false);
    std::string type =
        control.is_object() && control.contains("type") && control["type"].is_string()
            ? control["type"].get<std::string>()
            : "";
    if (type == "detach") {
      DetachTerminal();
      closing_ = true;
      return ws_.async_close(websocket::close_code::normal,
                             [self = shared_from_this()](beast::error_code) {});
    }
    if (type == "resize") {
      auto dimension = [&](const char* key) -> std::optional<uint16_t> {
        auto it = control.find(key);
        if (it == control.end() || !it->is_number_unsigned() || *it == 0 || *it > 10000) {
          return std::nullopt;
        }
        return it->get<uint16_t>();
      };
      auto columns = dimension("columns"), rows = dimension("rows");
      if (!columns || !rows || control.size() != 3) {
        SendControlError("resize needs exactly \"columns\" and \"rows\", integers in 1..10000");
      } else if (terminal_) {
        if (auto resized = terminal_->Resize(*columns, *rows); !resized) {
          SendControlError(resized.error().ToString());
        }
      }
      return Read();
    }
    SendControlError("a text frame must be a JSON object with \"type\" \"resize\" or \"detach\"");
    Read();
  }

  void SendControlError(std::string message) {
    Queue(nlohmann::json{{"type", "error"}, {"message", message}}.dump(), false);
  }

  void Queue(std::string data, bool binary) {
    if (closing_) return;
    backlog_ += data.size();
    if (backlog_ > server_.options.limits.max_terminal_backlog_bytes) {
      // A client that does not read its output is detached; the job runs on.
      DetachTerminal();
      closing_ = true;
      out_.clear();
      if (!writing_ && accepted_) {
        ws_.async_close({websocket::close_code::policy_error, "terminal output backlog exceeded"},
                        [self = shared_from_this()](beast::error_code) {});
      }
      return;
    }
    out_.push_back({std::move(data), binary});
    Flush();
  }

  void Flush() {
    if (writing_ || !accepted_) return;
    if (out_.empty()) {
      if (close_after_flush_ && !closing_) {
        closing_ = true;
        DetachTerminal();
        ws_.async_close(websocket::close_code::normal,
                        [self = shared_from_this()](beast::error_code) {});
      }
      return;
    }
    writing_ = true;
    ws_.binary(out_.front().binary);
    ws_.async_write(net::buffer(out_.front().data),
                    [self = shared_from_this()](beast::error_code ec, size_t) {
                      self->writing_ = false;
                      if (ec) return self->DetachTerminal();
                      if (self->out_.empty()) return;  // cleared by an overflow
                      self->backlog_ -= self->out_.front().data.size();
                      self->out_.pop_front();
                      self->Flush();
                    });
  }

  struct Frame {
    std::string data;
    bool binary;
  };

  Impl& server_;
  ConnectionSlot slot_;
  StreamSlot stream_slot_;
  websocket::stream<TlsStream> ws_;
  Caller caller_;
  std::unique_ptr<TerminalSessionInterface> terminal_;
  beast::flat_buffer read_buffer_;
  std::deque<Frame> out_;
  size_t backlog_ = 0;
  bool writing_ = false;
  bool accepted_ = false;
  bool closing_ = false;
  bool close_after_flush_ = false;
};

void HttpSession::StartTerminal(std::string job, http::request<http::string_body> request) {
  if (!server_.deps.terminals) {
    return Send({503, ErrorBody("unavailable", "this server has no terminals")}, false);
  }
  std::optional<StreamSlot> stream_slot = StreamSlot::Take(server_);
  if (!stream_slot) {
    return Send({503, ErrorBody("too-many-streams",
                                fmt::format("the limit of {} event streams and terminals is "
                                            "reached",
                                            limits().max_streams))},
                false);
  }
  auto session = std::make_shared<TerminalSession>(
      server_, std::move(slot_), std::move(*stream_slot), std::move(stream_), caller_);
  session->Start(std::move(job), std::move(request));
}

}  // namespace

void ApiServer::Impl::Accept() {
  acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
    if (ec) {
      // Out of fds (or similar): back off briefly rather than spin.
      accept_backoff->expires_after(std::chrono::milliseconds(50));
      accept_backoff->async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec) Accept();
      });
      return;
    }
    accepted++;
    if (open_connections.load() >= options.limits.max_connections) {
      refused_over_limit++;
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      std::make_shared<HttpSession>(*this, std::move(socket))->Run();
    }
    Accept();
  });
}

ApiServer::ApiServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ApiServer::~ApiServer() {
  Stop();
}

Result<std::unique_ptr<ApiServer>> ApiServer::Start(const ServerOptions& options,
                                                    const Dependencies& dependencies) {
  auto impl = std::make_unique<Impl>(options, dependencies);
  SSL_CTX* context = impl->ssl_context.native_handle();
  SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION);
  // No tickets: every connection is a full handshake, so every session has
  // its own exporter and its peer certificate checked now, not remembered.
  SSL_CTX_set_options(context, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(context, 0);
  if (SSL_CTX_use_certificate(context, dependencies.identity.device_cert()) != 1 ||
      SSL_CTX_use_PrivateKey(context, dependencies.identity.device_key()) != 1 ||
      SSL_CTX_add_client_CA(context, dependencies.identity.ca_cert()) != 1) {
    return Error::Make(ErrorCode::kInternal, "loading the device identity into the TLS context");
  }
  // A certificate is asked for, never required, and any certificate
  // completes the handshake (its signature over the handshake proves the
  // key): whether it was issued by the device CA is the registry's answer
  // at the session's first request (Authorize), whether it is still paired,
  // not revoked and not expired at every request (Recheck), so refusals are
  // JSON errors rather than TLS alerts.
  SSL_CTX_set_verify(context, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });

  impl->ioc = std::make_unique<net::io_context>(std::max(1, options.threads));
  beast::error_code ec;
  auto address = net::ip::make_address(options.bind_address, ec);
  if (ec) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("bind address \"{}\": {}", options.bind_address, ec.message()));
  }
  tcp::endpoint endpoint(address, options.port);
  impl->acceptor.emplace(*impl->ioc);
  impl->accept_backoff.emplace(*impl->ioc);
  tcp::acceptor& acceptor = *impl->acceptor;
  auto fail = [&](std::string_view what) {
    return Error::FromErrno(fmt::format("{} {}:{}", what, options.bind_address, options.port),
                            ec.value());
  };
  acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("socket");
  acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (ec) return fail("SO_REUSEADDR");
  acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen");
  impl->port = acceptor.local_endpoint(ec).port();
  impl->Accept();
  for (int i = 0; i < std::max(1, options.threads); ++i) {
    impl->threads.emplace_back([ioc = impl->ioc.get()] { ioc->run(); });
  }
  return std::unique_ptr<ApiServer>(new ApiServer(std::move(impl)));
}

uint16_t ApiServer::port() const {
  return impl_->port;
}

ServerStats ApiServer::stats() const {
  ServerStats stats;
  stats.accepted = impl_->accepted.load();
  stats.refused_over_limit = impl_->refused_over_limit.load();
  stats.open_connections = impl_->open_connections.load();
  stats.plain_http_refused = impl_->plain_http_refused.load();
  stats.handshake_failures = impl_->handshake_failures.load();
  stats.timeouts = impl_->timeouts.load();
  stats.open_streams = impl_->open_streams.load();
  stats.requests = impl_->requests.load();
  return stats;
}

void ApiServer::Stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  net::post(*impl_->ioc, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor->close(ignored);
  });
  impl_->ioc->stop();
  for (std::thread& thread : impl_->threads) thread.join();
  impl_->threads.clear();
  impl_->accept_backoff.reset();
  impl_->acceptor.reset();
  // Destroys the handlers still queued, and with them every session (which
  // unsubscribes from events and detaches terminals) while the rest of
  // Impl is alive.
  impl_->ioc.reset();
}

}  // namespace ralph::ralphd::api
