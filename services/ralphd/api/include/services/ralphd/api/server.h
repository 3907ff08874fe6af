// ralphd's northbound HTTPS server: JSON over /v1/..., TLS 1.3 only, mutual
// TLS for everything but POST /v1/pair, Server-Sent Events for the event
// stream and a WebSocket per interactive terminal (docs/api.md).
//
// The server owns the transport and the routes that are about the transport
// (pairing, pairings, the OpenAPI document, the event stream, the terminal);
// every other /v1 request of a paired client goes to the
// RequestHandlerInterface, which turns it into a typed command — the core
// never sees HTTP, only (method, path, query, body) and the Caller.
//
//   ApiServer::Dependencies deps{.identity = *identity, .registry = *registry,
//                                .handler = handler, .events = &events};
//   auto server = TRY(ApiServer::Start({.port = 8443}, deps));
//   ...
//   server->Stop();
//
// Bounded everything (ServerLimits): connections, header and body size,
// handshake, header-read (slow clients), idle and body timeouts, concurrent
// event streams and terminals. A malformed or oversized request gets a JSON
// error (and the connection closes when the stream cannot be resynced); the
// server keeps serving everyone else.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "services/ralphd/api/identity.h"
#include "services/ralphd/api/pairing.h"

namespace ralph::ralphd::api {

// Who sent a request: a paired client, by its certificate.
struct Caller {
  std::string client_id;  // certificate serial, lower-case hex
  std::string client_name;
};

struct ApiRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // "/v1/status" (no query)
  std::string query;   // "after=5&limit=10" (no '?'), percent-encoding kept
  std::string body;
};

struct ApiReply {
  int status = 200;
  std::string body;  // JSON unless content_type says otherwise
  std::string content_type = "application/json";
};

// The JSON error body every refusal uses: {"error":{"code":..,"message":..}}.
std::string ErrorBody(std::string_view code, std::string_view message);
// An Error as a reply: its code picks the status (kInvalidArgument 400,
// kNotFound 404, kPermissionDenied/kRefused/kVerificationFailed 403,
// kInvalidState/kAlreadyExists 409, kBusy 429, kNoSpace 413, others 500).
ApiReply ReplyForError(const Error& error);

class RequestHandlerInterface {
 public:
  virtual ~RequestHandlerInterface() = default;
  // A /v1 request from an authorized client that the server does not serve
  // itself. Runs on a server thread; may block (briefly).
  virtual ApiReply Handle(const Caller& caller, const ApiRequest& request) = 0;
  // The same request answered through `done` (exactly once, on any
  // thread) rather than by blocking the server's thread: the server calls
  // this one. A handler whose work runs on another thread (the core's
  // loop) overrides it, so a request waiting there holds no server thread.
  using Done = std::function<void(ApiReply reply)>;
  virtual void HandleAsync(const Caller& caller, ApiRequest request, Done done) {
    done(Handle(caller, request));
  }
  // The body limit of a route the handler serves, asked once the request's
  // header is in (before any of the body is read); nullopt for
  // ServerLimits::max_body_bytes. Called on a server thread, without
  // blocking: a workspace upload may be far larger than a JSON body.
  virtual std::optional<size_t> BodyLimit(std::string_view method, std::string_view path) {
    (void)method;
    (void)path;
    return std::nullopt;
  }
  // A connection's (TLS session's) first authorized request, whatever its
  // route, before it is served; `remote` is the peer's address. Called on a
  // server thread, without blocking.
  virtual void SessionOpened(const Caller& caller, std::string_view remote) {
    (void)caller;
    (void)remote;
  }
};

// One event of the stream. `data` is a JSON text (one line).
struct StreamEvent {
  uint64_t seq = 0;  // 1, 2, ... increasing without gaps at the source
  std::string type;  // "job.output", "job.state", "update.progress", "audit"
  std::string data;
  uint64_t job = 0;  // the job it is about (0: none); GET /v1/events?job=ID filters on it
};

struct EventBatch {
  std::vector<StreamEvent> events;  // seq > after, oldest first
  uint64_t first_retained = 0;      // the oldest seq still kept (0: none yet)
};

class EventSourceInterface {
 public:
  virtual ~EventSourceInterface() = default;
  // At most `max` retained events after `after`, oldest first. Thread-safe.
  virtual EventBatch Read(uint64_t after, size_t max) = 0;
  // `wake` is called (on any thread, without the source's locks held)
  // after events are appended. Returns an id for Unsubscribe.
  virtual uint64_t Subscribe(std::function<void()> wake) = 0;
  // After it returns, `wake` is not called again.
  virtual void Unsubscribe(uint64_t id) = 0;
};

// One attachment of a client to a job's pty.
class TerminalSessionInterface {
 public:
  virtual ~TerminalSessionInterface() = default;
  virtual Result<void> Write(std::string_view input) = 0;
  virtual Result<void> Resize(uint16_t columns, uint16_t rows) = 0;
  // Leaves the job running. No output callback runs after it returns.
  virtual void Detach() = 0;
};

struct TerminalCallbacks {
  // The pty's output (any thread, in order).
  std::function<void(std::string_view output)> output;
  // The job's terminal ended (the job exited); no more output follows.
  std::function<void(int exit_status)> closed;
};

class TerminalProviderInterface {
 public:
  virtual ~TerminalProviderInterface() = default;
  // kNotFound for an unknown job, kInvalidState for one with no pty.
  virtual Result<std::unique_ptr<TerminalSessionInterface>> Attach(const Caller& caller,
                                                                   std::string_view job_id,
                                                                   TerminalCallbacks callbacks) = 0;
};

struct ServerLimits {
  size_t max_connections = 4096;
  size_t max_header_bytes = 16 * 1024;
  // Every route's but those the handler gives their own (BodyLimit).
  size_t max_body_bytes = 1024 * 1024;
  // TLS handshake (and the plain-HTTP check before it).
  std::chrono::milliseconds handshake_timeout{10000};
  // From the first byte awaited to the end of the first request's header:
  // what a slow-loris client gets.
  std::chrono::milliseconds header_timeout{10000};
  // Between requests on a kept-alive connection (and that request's header).
  std::chrono::milliseconds idle_timeout{60000};
  // A request body, once its header is in: this, plus its size (declared,
  // else the route's limit) at min_body_bytes_per_second.
  std::chrono::milliseconds body_timeout{30000};
  uint64_t min_body_bytes_per_second = 1024 * 1024;
  // A write that makes no progress (a reader that stopped reading).
  std::chrono::milliseconds write_timeout{30000};
  // Event streams and terminals open at once.
  size_t max_streams = 64;
  // Output queued for one terminal client before it is dropped as too slow.
  size_t max_terminal_backlog_bytes = 1024 * 1024;
  // A comment line on an idle event stream, so dead clients are noticed.
  std::chrono::milliseconds event_heartbeat{15000};
};

struct ServerOptions {
  std::string bind_address = "0.0.0.0";
  uint16_t port = 8443;  // 0: any free port (see ApiServer::port())
  int threads = 2;
  ServerLimits limits;
};

// Counters for tests and the status page; read without locks.
struct ServerStats {
  uint64_t accepted = 0;
  uint64_t refused_over_limit = 0;  // closed at accept: max_connections
  uint64_t open_connections = 0;
  uint64_t plain_http_refused = 0;
  uint64_t handshake_failures = 0;
  uint64_t timeouts = 0;  // connections closed by any timeout
  uint64_t open_streams = 0;
  uint64_t requests = 0;
};

// A route the server serves itself (the OpenAPI document lists them).
struct RouteInfo {
  std::string_view method;
  std::string_view path;  // with {parameters}
};
std::span<const RouteInfo> ServerRoutes();
// The OpenAPI 3 document served at /v1/openapi.json (the repo's
// services/ralphd/api/openapi.json, compiled in).
std::string_view OpenApiDocument();

class ApiServer {
 public:
  struct Dependencies {
    const DeviceIdentity& identity;
    PairingRegistry& registry;
    RequestHandlerInterface& handler;
    EventSourceInterface* events = nullptr;          // null: /v1/events answers 503
    TerminalProviderInterface* terminals = nullptr;  // null: terminal answers 503
  };

  // Binds, listens and starts the threads. kAlreadyExists for a port in
  // use, kInvalidArgument for a bad bind address. The dependencies are
  // borrowed and must outlive the server.
  static Result<std::unique_ptr<ApiServer>> Start(const ServerOptions& options,
                                                  const Dependencies& dependencies);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  uint16_t port() const;
  ServerStats stats() const;
  // Closes the listener and every connection and joins the threads.
  void Stop();

  struct Impl;

 private:
  explicit ApiServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ralph::ralphd::api
