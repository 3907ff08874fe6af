// The API client: POSIX socket + OpenSSL, with Boost.Beast's HTTP parser
// fed the bytes (no hand-written response parsing).
#include "services/ralphd/api/client.h"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <limits>
#include <span>

#include <fmt/format.h>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <nlohmann/json.hpp>

#include "files.h"
#include "ossl.h"
#include "platform/file_io.h"

namespace ralph::ralphd::api {
namespace http = boost::beast::http;

namespace {

// Index of the SSL ex_data slot holding the pin for the verify callback.
int PinIndex() {
  static int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

struct PinState {
  Sha256Digest expected{};
  bool mismatch = false;
};

// The device certificate is self-signed and named for no host: the pin is
// the whole check, at the leaf.
int VerifyPin(int, X509_STORE_CTX* store) {
  if (X509_STORE_CTX_get_error_depth(store) != 0) return 1;
  SSL* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* pin = static_cast<PinState*>(SSL_get_ex_data(ssl, PinIndex()));
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  if (!pin || !cert) return 0;
  auto digest = ossl::SpkiSha256(X509_get0_pubkey(cert));
  if (digest && *digest == pin->expected) {
    X509_STORE_CTX_set_error(store, X509_V_OK);
    return 1;
  }
  pin->mismatch = true;
  return 0;
}

Result<std::pair<std::string, std::string>> SplitAddress(std::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == address.size()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("address \"{}\" is not HOST:PORT", address));
  }
  std::string host(address.substr(0, colon));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::pair{host, std::string(address.substr(colon + 1))};
}

}  // namespace

Error ErrorFromReply(const HttpReply& reply) {
  nlohmann::json json = nlohmann::json::parse(reply.body, nullptr, false);
  std::string code_name, message = reply.body.substr(0, 200);
  if (json.is_object() && json.contains("error") && json["error"].is_object()) {
    const auto& error = json["error"];
    if (error.contains("code") && error["code"].is_string()) code_name = error["code"];
    if (error.contains("message") && error["message"].is_string()) message = error["message"];
  }
  ErrorCode code = ErrorCode::kRefused;
  for (uint16_t i = 1; i <= 64 && code_name != "unknown"; ++i) {
    if (ErrorCodeName(static_cast<ErrorCode>(i)) == code_name) code = static_cast<ErrorCode>(i);
  }
  return Error::Make(code, fmt::format("HTTP {} {}: {}", reply.status, code_name, message));
}

ApiConnection::~ApiConnection() {
  if (ssl_) {
    SSL_shutdown(ssl_);
    SSL_free(ssl_);
  }
  if (context_) SSL_CTX_free(context_);
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<ApiConnection>> ApiConnection::Connect(const ClientOptions& options) {
  std::unique_ptr<ApiConnection> connection(new ApiConnection());
  connection->address_ = options.address;
  auto [host, port] = TRY(SplitAddress(options.address));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return Error::Make(ErrorCode::kNetwork,
                       fmt::format("resolving {}: {}", options.address, gai_strerror(rc)));
  }
  int err = 0;
  for (addrinfo* ai = found; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      connection->fd_ = fd;
      break;
    }
    err = errno;
    ::close(fd);
  }
  ::freeaddrinfo(found);
  if (connection->fd_ < 0) {
    return Error::FromErrno(ErrorCode::kNetwork, fmt::format("connect {}", options.address), err);
  }
  timeval timeout{};
  timeout.tv_sec = options.io_timeout.count() / 1000;
  timeout.tv_usec = (options.io_timeout.count() % 1000) * 1000;
  ::setsockopt(connection->fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(connection->fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));

  connection->context_ = SSL_CTX_new(TLS_client_method());
  if (!connection->context_) return ossl::OpenSslError(ErrorCode::kInternal, "SSL_CTX_new");
  SSL_CTX* context = connection->context_;
  SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION);
  SSL_CTX_set_verify(context, SSL_VERIFY_PEER, VerifyPin);
  if (options.credentials) {
    auto key = TRY(ossl::PrivateKeyFromPem(options.credentials->key_pem, "the client key"));
    auto cert = TRY(ossl::CertFromPem(options.credentials->cert_pem, "the client certificate"));
    if (SSL_CTX_use_certificate(context, cert.get()) != 1 ||
        SSL_CTX_use_PrivateKey(context, key.get()) != 1) {
      return ossl::OpenSslError(ErrorCode::kInvalidArgument,
                                "the client key does not match its certificate");
    }
  }
  connection->ssl_ = SSL_new(context);
  if (!connection->ssl_) return ossl::OpenSslError(ErrorCode::kInternal, "SSL_new");
  PinState pin{options.device_spki, false};
  SSL_set_ex_data(connection->ssl_, PinIndex(), &pin);
  SSL_set_fd(connection->ssl_, connection->fd_);
  int rc = SSL_connect(connection->ssl_);
  SSL_set_ex_data(connection->ssl_, PinIndex(), nullptr);
  if (rc != 1) {
    if (pin.mismatch) {
      ERR_clear_error();
      return Error::Make(ErrorCode::kVerificationFailed,
                         fmt::format("the device at {} does not have the pinned key (SHA-256 of "
                                     "its public key is not {})",
                                     options.address, DigestToHex(options.device_spki)));
    }
    return ossl::OpenSslError(ErrorCode::kNetwork,
                              fmt::format("TLS handshake with {}", options.address));
  }
  return connection;
}

Result<std::array<uint8_t, kPairingExporterSize>> ApiConnection::PairingExporter() const {
  std::array<uint8_t, kPairingExporterSize> out{};
  if (SSL_export_keying_material(ssl_, out.data(), out.size(), kPairingExporterLabel.data(),
                                 kPairingExporterLabel.size(), nullptr, 0, 0) != 1) {
    return ossl::OpenSslError(ErrorCode::kInternal, "SSL_export_keying_material");
  }
  return out;
}

Result<void> ApiConnection::WriteRaw(std::string_view bytes) {
  while (!bytes.empty()) {
    size_t written = 0;
    if (SSL_write_ex(ssl_, bytes.data(), bytes.size(), &written) != 1) {
      return ossl::OpenSslError(ErrorCode::kNetwork, fmt::format("writing to {}", address_));
    }
    bytes.remove_prefix(written);
  }
  return {};
}

bool ApiConnection::HasBufferedInput() const {
  return !pending_.empty() || (ssl_ != nullptr && SSL_pending(ssl_) > 0);
}

Result<size_t> ApiConnection::ReadSome(char* data, size_t size) {
  size_t read = 0;
  int rc = SSL_read_ex(ssl_, data, size, &read);
  if (rc == 1) return read;
  int error = SSL_get_error(ssl_, rc);
  if (error == SSL_ERROR_ZERO_RETURN) return size_t{0};
  if (error == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    ERR_clear_error();
    return Error::Make(ErrorCode::kTimeout, fmt::format("reading from {} timed out", address_));
  }
  if (error == SSL_ERROR_SYSCALL) {
    ERR_clear_error();
    return size_t{0};  // the peer closed without close_notify
  }
  return ossl::OpenSslError(ErrorCode::kNetwork, fmt::format("reading from {}", address_));
}

Result<HttpReply> ApiConnection::ReadReply() {
  http::response_parser<http::string_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  parser.eager(true);
  boost::beast::error_code ec;
  char buffer[16384];
  while (!parser.is_done()) {
    if (!pending_.empty()) {
      size_t used = parser.put(boost::asio::buffer(pending_), ec);
      pending_.erase(0, used);
      if (ec == http::error::need_more) {
        ec = {};
      } else if (ec) {
        return Error::Make(ErrorCode::kNetwork,
                           fmt::format("reply from {}: {}", address_, ec.message()));
      }
      if (parser.is_done()) break;
      if (used > 0 && !pending_.empty()) continue;
    }
    size_t n = TRY(ReadSome(buffer, sizeof(buffer)));
    if (n == 0) {
      parser.put_eof(ec);
      if (ec || !parser.is_done()) {
        return Error::Make(ErrorCode::kNetwork,
                           fmt::format("{} closed the connection before a whole reply", address_));
      }
      break;
    }
    pending_.append(buffer, n);
  }
  auto message = parser.release();
  HttpReply reply;
  reply.status = static_cast<int>(message.result_int());
  reply.content_type = std::string(message[http::field::content_type]);
  reply.body = std::move(message.body());
  return reply;
}

Result<HttpReply> ApiConnection::Request(std::string_view method, std::string_view target,
                                         std::string_view body) {
  std::string request = fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\n", method, target, address_);
  if (!body.empty() || method == "POST" || method == "PUT") {
    request += fmt::format("Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
  }
  request += "\r\n";
  request += body;
  if (Result<void> written = WriteRaw(request); !written) {
    // The server may have refused the request from its header (a body over
    // the route's limit) and closed: its reply says why, when it arrived.
    Result<HttpReply> refusal = ReadReply();
    if (refusal) return refusal;
    return std::move(written).error();
  }
  return ReadReply();
}

Result<size_t> ApiConnection::ReadUntilHeaderEnd(std::string_view what) {
  char buffer[4096];
  size_t end;
  while ((end = pending_.find("\r\n\r\n")) == std::string::npos) {
    if (pending_.size() > 64 * 1024) {
      return Error::Make(ErrorCode::kNetwork, fmt::format("{}: reply header over 64 KiB", what));
    }
    size_t n = TRY(ReadSome(buffer, sizeof(buffer)));
    if (n == 0) {
      return Error::Make(ErrorCode::kNetwork, fmt::format("{} closed before its reply", what));
    }
    pending_.append(buffer, n);
  }
  return end;
}

Result<void> ApiConnection::OpenEvents(uint64_t after, std::optional<uint64_t> job) {
  std::string query = fmt::format("after={}", after);
  if (job) query += fmt::format("&job={}", *job);
  TRY(
      WriteRaw(fmt::format("GET /v1/events?{} HTTP/1.1\r\nHost: {}\r\nAccept: "
                           "text/event-stream\r\n\r\n",
                           query, address_)));
  // The header, by hand only as far as its end: the body runs to the close.
  size_t end = TRY(ReadUntilHeaderEnd("the event stream"));
  std::string header = pending_.substr(0, end + 4);
  if (!header.starts_with("HTTP/1.1 200")) {
    // An error reply is an ordinary HTTP message: parse it properly.
    auto reply = TRY(ReadReply());
    return ErrorFromReply(reply);
  }
  events_ = pending_.substr(end + 4);
  pending_.clear();
  streaming_ = true;
  return {};
}

Result<StreamEvent> ApiConnection::NextEvent() {
  if (!streaming_) return Error::Make(ErrorCode::kInvalidState, "no event stream is open");
  char buffer[16384];
  for (;;) {
    size_t end = events_.find("\n\n");
    if (end != std::string::npos) {
      std::string_view block(events_.data(), end);
      StreamEvent event;
      bool has_id = false;
      std::string data;
      bool first_data = true;
      while (!block.empty()) {
        size_t newline = block.find('\n');
        std::string_view line = block.substr(0, newline);
        block.remove_prefix(newline == std::string_view::npos ? block.size() : newline + 1);
        if (line.starts_with("id: ")) {
          std::string_view value = line.substr(4);
          has_id = std::from_chars(value.data(), value.data() + value.size(), event.seq).ec ==
                   std::errc();
        } else if (line.starts_with("event: ")) {
          event.type = std::string(line.substr(7));
        } else if (line.starts_with("data: ")) {
          if (!first_data) data += '\n';
          data += line.substr(6);
          first_data = false;
        }
      }
      events_.erase(0, end + 2);
      if (!has_id) continue;  // a heartbeat
      event.data = std::move(data);
      return event;
    }
    size_t n = TRY(ReadSome(buffer, sizeof(buffer)));
    if (n == 0) return Error::Make(ErrorCode::kNetwork, "the event stream ended");
    events_.append(buffer, n);
  }
}

namespace {

std::string Base64(std::span<const uint8_t> bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int size = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes.data(),
                             static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(size));
  return out;
}

// The value of header `name` (case-insensitive) in a raw response header.
std::string HeaderValue(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    size_t end = header.find("\r\n");
    std::string_view line = header.substr(0, end);
    header.remove_prefix(end == std::string_view::npos ? header.size() : end + 2);
    size_t colon = line.find(':');
    if (colon != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size(); ++i) {
      same = same && std::tolower(static_cast<unsigned char>(line[i])) ==
                         std::tolower(static_cast<unsigned char>(name[i]));
    }
    if (!same) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    return std::string(value);
  }
  return {};
}

}  // namespace

Result<void> ApiConnection::OpenTerminal(std::string_view job_id) {
  std::array<uint8_t, 16> nonce{};
  TRY(ossl::RandomBytes(nonce));
  std::string key = Base64(nonce);
  TRY(
      WriteRaw(fmt::format("GET /v1/jobs/{}/terminal HTTP/1.1\r\nHost: {}\r\nUpgrade: "
                           "websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n",
                           job_id, address_, key)));
  size_t end = TRY(ReadUntilHeaderEnd("the terminal"));
  std::string header = pending_.substr(0, end + 4);
  if (!header.starts_with("HTTP/1.1 101")) {
    auto reply = TRY(ReadReply());
    return ErrorFromReply(reply);
  }
  pending_.erase(0, end + 4);
  // RFC 6455 4.2.2: base64(SHA-1(key + the protocol's GUID)).
  std::string expected_input = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char sha1[20];
  unsigned int size = 0;
  EVP_Digest(expected_input.data(), expected_input.size(), sha1, &size, EVP_sha1(), nullptr);
  if (HeaderValue(header, "Sec-WebSocket-Accept") != Base64({sha1, size})) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       "the terminal's Sec-WebSocket-Accept does not match the key sent");
  }
  return {};
}

Result<void> ApiConnection::SendFrame(uint8_t opcode, std::string_view payload) {
  std::string frame;
  frame += static_cast<char>(0x80 | opcode);
  if (payload.size() < 126) {
    frame += static_cast<char>(0x80 | payload.size());
  } else if (payload.size() < 65536) {
    frame += static_cast<char>(0x80 | 126);
    frame += static_cast<char>(payload.size() >> 8);
    frame += static_cast<char>(payload.size() & 0xff);
  } else {
    frame += static_cast<char>(0x80 | 127);
    for (int shift = 56; shift >= 0; shift -= 8) {
      frame += static_cast<char>((static_cast<uint64_t>(payload.size()) >> shift) & 0xff);
    }
  }
  std::array<uint8_t, 4> mask{};
  TRY(ossl::RandomBytes(mask));
  frame.append(reinterpret_cast<const char*>(mask.data()), mask.size());
  for (size_t i = 0; i < payload.size(); ++i) {
    frame += static_cast<char>(payload[i] ^ static_cast<char>(mask[i % 4]));
  }
  return WriteRaw(frame);
}

Result<void> ApiConnection::SendTerminalInput(std::string_view bytes) {
  return SendFrame(2, bytes);
}

Result<void> ApiConnection::SendTerminalControl(std::string_view json) {
  return SendFrame(1, json);
}

Result<ApiConnection::TerminalMessage> ApiConnection::ReceiveTerminal() {
  char buffer[16384];
  TerminalMessage message;
  bool started = false;
  for (;;) {
    // A whole frame in pending_?
    if (pending_.size() >= 2) {
      auto byte = [&](size_t i) { return static_cast<uint8_t>(pending_[i]); };
      bool fin = byte(0) & 0x80;
      uint8_t opcode = byte(0) & 0x0f;
      bool masked = byte(1) & 0x80;
      uint64_t length = byte(1) & 0x7f;
      size_t offset = 2;
      if (length == 126 && pending_.size() >= 4) {
        length = static_cast<uint64_t>(byte(2)) << 8 | byte(3);
        offset = 4;
      } else if (length == 127 && pending_.size() >= 10) {
        length = 0;
        for (size_t i = 2; i < 10; ++i) length = length << 8 | byte(i);
        offset = 10;
      }
      if (masked) {
        return Error::Make(ErrorCode::kNetwork, "the server sent a masked WebSocket frame");
      }
      bool header_complete =
          !((byte(1) & 0x7f) == 126 && offset == 2) && !((byte(1) & 0x7f) == 127 && offset == 2);
      if (header_complete && pending_.size() >= offset + length) {
        std::string payload = pending_.substr(offset, length);
        pending_.erase(0, offset + length);
        if (opcode == 9) {  // ping
          TRY(SendFrame(10, payload));
          continue;
        }
        if (opcode == 10) continue;  // pong
        if (opcode == 8) {           // close: answer it, then it is over
          IgnoreError(SendFrame(8, payload.substr(0, 2)));
          message.closed = true;
          message.data = payload.size() > 2 ? payload.substr(2) : "";
          return message;
        }
        if (opcode == 1 || opcode == 2) {
          message.binary = opcode == 2;
          message.data = payload;
          started = true;
        } else if (opcode == 0 && started) {
          message.data += payload;
        } else {
          return Error::Make(ErrorCode::kNetwork,
                             fmt::format("unexpected WebSocket opcode {}", opcode));
        }
        if (fin) return message;
        continue;
      }
    }
    size_t n = TRY(ReadSome(buffer, sizeof(buffer)));
    if (n == 0) {
      message.closed = true;
      return message;
    }
    pending_.append(buffer, n);
  }
}

Result<ClientCredentials> PairWithDevice(std::string_view pairing_string, std::string_view name,
                                         std::string_view dial_address,
                                         std::chrono::milliseconds io_timeout) {
  PairingString offer = TRY(PairingString::Parse(pairing_string));
  std::string address(dial_address.empty() ? std::string_view(offer.address) : dial_address);
  auto connection = TRY(ApiConnection::Connect(
      {.address = address, .device_spki = offer.spki_sha256, .io_timeout = io_timeout}));
  ClientKeyAndCsr made = TRY(MakeClientKeyAndCsr(name));
  auto exporter = TRY(connection->PairingExporter());
  PairRequest request;
  request.id = offer.id;
  request.name = std::string(name);
  request.csr_pem = made.csr_pem;
  request.proof =
      ComputePairingProof(offer.secret, offer.id, exporter, TRY(CsrSpkiSha256(made.csr_pem)));
  HttpReply reply = TRY(connection->Request("POST", "/v1/pair", PairRequestToJson(request)));
  if (reply.status != 200) return ErrorFromReply(reply).WithContext("pairing");
  nlohmann::json json = nlohmann::json::parse(reply.body, nullptr, false);
  if (!json.is_object() || !json.contains("certificate") || !json["certificate"].is_string() ||
      !json.contains("ca") || !json["ca"].is_string() || !json.contains("client_id") ||
      !json["client_id"].is_string()) {
    return Error::Make(ErrorCode::kCorrupt, "the pairing reply lacks certificate, ca or client_id");
  }
  ClientCredentials credentials;
  credentials.client_id = json["client_id"];
  credentials.key_pem = made.key_pem;
  credentials.cert_pem = json["certificate"];
  credentials.ca_pem = json["ca"];
  credentials.device_address = address;
  credentials.device_spki = offer.spki_sha256;
  return credentials;
}

Result<void> SaveCredentials(const std::string& dir, const ClientCredentials& credentials) {
  TRY(MakeDirectories(dir, 0700));
  // Also when it existed: it holds a private key.
  if (::chmod(dir.c_str(), 0700) != 0) return Error::FromErrno(fmt::format("chmod {}", dir), errno);
  std::string device = nlohmann::json{{"address", credentials.device_address},
                                      {"spki_sha256", DigestToHex(credentials.device_spki)},
                                      {"client_id", credentials.client_id}}
                           .dump();
  std::pair<const char*, const std::string*> files[] = {{"client.key", &credentials.key_pem},
                                                        {"client.crt", &credentials.cert_pem},
                                                        {"ca.crt", &credentials.ca_pem},
                                                        {"device.json", &device}};
  for (const auto& [name, content] : files) {
    TRY(WriteFileAtomically(dir + "/" + name, *content, 0600, Durability::kFileAndDirectorySynced));
  }
  return {};
}

Result<ClientCredentials> LoadCredentials(const std::string& dir) {
  ClientCredentials credentials;
  credentials.key_pem = TRY(ReadWholeFile(dir + "/client.key"));
  credentials.cert_pem = TRY(ReadWholeFile(dir + "/client.crt"));
  credentials.ca_pem = TRY(ReadWholeFile(dir + "/ca.crt"));
  std::string device_text = TRY(ReadWholeFile(dir + "/device.json"));
  nlohmann::json device = nlohmann::json::parse(device_text, nullptr, false);
  if (!device.is_object() || !device.contains("address") || !device["address"].is_string() ||
      !device.contains("spki_sha256") || !device["spki_sha256"].is_string() ||
      !device.contains("client_id") || !device["client_id"].is_string()) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{}/device.json lacks address, spki_sha256 or client_id", dir));
  }
  credentials.device_address = device["address"];
  credentials.client_id = device["client_id"];
  credentials.device_spki = TRY_CTX(ParseSha256Hex(device["spki_sha256"].get<std::string>()),
                                    fmt::format("{}/device.json", dir));
  return credentials;
}

}  // namespace ralph::ralphd::api
