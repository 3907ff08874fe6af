// The client side of the API: what the companion app does, as a library the
// tests (and `ralphctl --remote`) use, so the server is exercised by a real
// TLS client.
//
//   ClientCredentials credentials = TRY(PairWithDevice(pairing_string, "laptop"));
//   TRY(SaveCredentials(dir, credentials));
//   auto connection = TRY(ApiConnection::Connect({.address = offer.address,
//                                                 .device_spki = offer.spki_sha256,
//                                                 .credentials = credentials}));
//   HttpReply reply = TRY(connection->Request("GET", "/v1/status"));
//
// Every connection pins the device key (the SHA-256 of the certificate's
// SubjectPublicKeyInfo from the pairing string): no CA, no host name — a
// server with another key fails the handshake (kVerificationFailed).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "platform/result.h"
#include "platform/sha256.h"
#include "services/ralphd/api/server.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace ralph::ralphd::api {

struct ClientCredentials {
  std::string client_id;
  std::string key_pem;
  std::string cert_pem;
  std::string ca_pem;
  std::string device_address;
  Sha256Digest device_spki{};
};

// dir/client.key, client.crt, ca.crt, device.json (address, pin, id), 0600;
// dir itself 0700.
Result<void> SaveCredentials(const std::string& dir, const ClientCredentials& credentials);
Result<ClientCredentials> LoadCredentials(const std::string& dir);

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string body;
};

// The Error a non-2xx reply stands for: its JSON error message, with the
// HTTP status; the code from the body's code name when it is an ErrorCode's.
Error ErrorFromReply(const HttpReply& reply);

struct ClientOptions {
  std::string address;  // HOST:PORT
  Sha256Digest device_spki{};
  // Absent: no client certificate (only /v1/pair will answer).
  std::optional<ClientCredentials> credentials;
  // Per socket read or write.
  std::chrono::milliseconds io_timeout{30000};
};

// One TLS 1.3 connection, kept alive across requests. Not thread-safe.
class ApiConnection {
 public:
  // kNetwork (cannot connect), kVerificationFailed (the device key is not
  // the pinned one), kInvalidArgument (address, credentials).
  static Result<std::unique_ptr<ApiConnection>> Connect(const ClientOptions& options);
  ~ApiConnection();
  ApiConnection(const ApiConnection&) = delete;
  ApiConnection& operator=(const ApiConnection&) = delete;

  // This session's pairing exporter (what the proof binds).
  Result<std::array<uint8_t, kPairingExporterSize>> PairingExporter() const;

  // Sends one request and reads its reply (any status).
  Result<HttpReply> Request(std::string_view method, std::string_view target,
                            std::string_view body = {});
  // Raw bytes on the TLS stream, and reading one reply: for tests that send
  // what a well-behaved client would not.
  Result<void> WriteRaw(std::string_view bytes);
  Result<HttpReply> ReadReply();

  // GET /v1/events?after=SEQ[&job=ID]; kept open for NextEvent.
  Result<void> OpenEvents(uint64_t after, std::optional<uint64_t> job = std::nullopt);
  // The next event of the stream (heartbeats skipped). kNetwork when the
  // stream ends.
  Result<StreamEvent> NextEvent();

  // GET /v1/jobs/{id}/terminal as a WebSocket (RFC 6455, checked
  // Sec-WebSocket-Accept); the server's refusal as its Error.
  Result<void> OpenTerminal(std::string_view job_id);
  // Pty input (a binary frame) and control messages (a JSON text frame).
  Result<void> SendTerminalInput(std::string_view bytes);
  Result<void> SendTerminalControl(std::string_view json);
  struct TerminalMessage {
    bool binary = false;  // pty output; otherwise a JSON control message
    std::string data;
    bool closed = false;  // the server closed the WebSocket
  };
  // The next message (pings are answered, pongs skipped).
  Result<TerminalMessage> ReceiveTerminal();

  // For poll(): the socket, and whether bytes already read (by this object
  // or by TLS) wait to be parsed, which poll() on the socket cannot see.
  int fd() const { return fd_; }
  bool HasBufferedInput() const;

 private:
  ApiConnection() = default;
  Result<size_t> ReadSome(char* data, size_t size);
  // Reads into pending_ until a reply header ends; the offset of its "\r\n\r\n".
  Result<size_t> ReadUntilHeaderEnd(std::string_view what);
  Result<void> SendFrame(uint8_t opcode, std::string_view payload);

  std::string address_;
  int fd_ = -1;
  SSL_CTX* context_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string pending_;  // bytes read past the last reply
  std::string events_;   // event-stream bytes not yet parsed
  bool streaming_ = false;
};

// Pairs with the device the pairing string names: pins its key, makes a
// P-256 key and CSR, proves the secret on that TLS session and returns the
// signed credentials. Errors carry the server's reason. `dial_address`
// (HOST:PORT), when given, is dialled instead of the string's address (a
// forwarded port); the pin is the string's either way, and the credentials
// keep the address dialled.
Result<ClientCredentials> PairWithDevice(
    std::string_view pairing_string, std::string_view name, std::string_view dial_address = {},
    std::chrono::milliseconds io_timeout = std::chrono::seconds(30));

}  // namespace ralph::ralphd::api
