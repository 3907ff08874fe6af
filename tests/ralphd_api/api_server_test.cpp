// The HTTPS server on a loopback port, driven by the real client library
// (OpenSSL, pinned device key, mutual TLS) and by raw sockets for what a
// well-behaved client would not send.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fake_audit_sink.h"
#include "platform/unique_fd.h"
#include "services/ralphd/api/client.h"
#include "services/ralphd/api/server.h"
#include "tests/support/temp_dir.h"

namespace ralph::ralphd::api {
namespace {

using std::chrono::system_clock;
using ::testing::HasSubstr;

// Answers GET /v1/status, as the core will; PUT /v1/upload has its own
// body limit (as a workspace upload does) and answers the size it got.
class FakeHandler : public RequestHandlerInterface {
 public:
  static constexpr size_t kUploadLimit = 4 << 20;

  std::optional<size_t> BodyLimit(std::string_view method, std::string_view path) override {
    if (method == "PUT" && path == "/v1/upload") return kUploadLimit;
    return std::nullopt;
  }

  ApiReply Handle(const Caller& caller, const ApiRequest& request) override {
    if (request.method == "PUT" && request.path == "/v1/upload") {
      return {200, nlohmann::json{{"size", request.body.size()}}.dump()};
    }
    if (request.method == "GET" && request.path == "/v1/status") {
      return {200, nlohmann::json{{"state", "ok"}, {"caller", caller.client_name}}.dump()};
    }
    if (request.method == "POST" && request.path == "/v1/echo") return {200, request.body};
    return {404, ErrorBody("not-found", "no such route: " + request.path)};
  }

  void SessionOpened(const Caller& caller, std::string_view remote) override {
    std::lock_guard lock(mutex_);
    sessions_.push_back(fmt::format("{} from {}", caller.client_id, remote));
  }
  std::vector<std::string> Sessions() {
    std::lock_guard lock(mutex_);
    return sessions_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> sessions_;
};

// An in-memory event log with a retention window.
class FakeEvents : public EventSourceInterface {
 public:
  void Append(std::string type, std::string data, uint64_t job = 0) {
    std::vector<std::function<void()>> wakes;
    {
      std::lock_guard lock(mutex_);
      events_.push_back({next_seq_++, std::move(type), std::move(data), job});
      for (auto& [id, wake] : subscribers_) wakes.push_back(wake);
    }
    for (auto& wake : wakes) wake();
  }
  // Forgets every event before `seq`.
  void DropBefore(uint64_t seq) {
    std::lock_guard lock(mutex_);
    std::erase_if(events_, [&](const StreamEvent& e) { return e.seq < seq; });
  }
  EventBatch Read(uint64_t after, size_t max) override {
    std::lock_guard lock(mutex_);
    EventBatch batch;
    batch.first_retained = events_.empty() ? 0 : events_.front().seq;
    for (const StreamEvent& event : events_) {
      if (event.seq > after && batch.events.size() < max) batch.events.push_back(event);
    }
    return batch;
  }
  uint64_t Subscribe(std::function<void()> wake) override {
    std::lock_guard lock(mutex_);
    subscribers_[next_id_] = std::move(wake);
    return next_id_++;
  }
  void Unsubscribe(uint64_t id) override {
    std::lock_guard lock(mutex_);
    subscribers_.erase(id);
  }

 private:
  std::mutex mutex_;
  std::vector<StreamEvent> events_;
  uint64_t next_seq_ = 1;
  std::map<uint64_t, std::function<void()>> subscribers_;
  uint64_t next_id_ = 1;
};

// Terminals of one fake job "7": input is echoed, resizes are reported, and
// the test can end the job.
class FakeTerminals : public TerminalProviderInterface {
 public:
  class Session : public TerminalSessionInterface {
   public:
    explicit Session(FakeTerminals& owner) : owner_(owner) {}
    Result<void> Write(std::string_view input) override {
      Output("echo:" + std::string(input));
      return {};
    }
    Result<void> Resize(uint16_t columns, uint16_t rows) override {
      Output(fmt::format("resized {}x{}", columns, rows));
      return {};
    }
    void Detach() override {
      std::lock_guard lock(owner_.mutex_);
      owner_.callbacks_ = {};
      owner_.detaches_++;
    }

   private:
    void Output(std::string text) {
      std::lock_guard lock(owner_.mutex_);
      if (owner_.callbacks_.output) owner_.callbacks_.output(text);
    }
    FakeTerminals& owner_;
  };

  Result<std::unique_ptr<TerminalSessionInterface>> Attach(const Caller&, std::string_view job,
                                                           TerminalCallbacks callbacks) override {
    if (job != "7")
      return Error::Make(ErrorCode::kNotFound, fmt::format("job {}: no such job", job));
    std::lock_guard lock(mutex_);
    callbacks_ = std::move(callbacks);
    attaches_++;
    return std::unique_ptr<TerminalSessionInterface>(new Session(*this));
  }
  void Exit(int status) {
    std::lock_guard lock(mutex_);
    if (callbacks_.closed) callbacks_.closed(status);
  }
  int attaches() {
    std::lock_guard lock(mutex_);
    return attaches_;
  }
  int detaches() {
    std::lock_guard lock(mutex_);
    return detaches_;
  }

 private:
  std::mutex mutex_;
  TerminalCallbacks callbacks_;
  int attaches_ = 0;
  int detaches_ = 0;
};

// A self-signed client certificate from no device CA.
ClientCredentials ForeignCredentials(const ClientCredentials& like) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("intruder"), -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  X509_sign(cert, key, EVP_sha256());
  auto pem = [](auto write) {
    BIO* bio = BIO_new(BIO_s_mem());
    write(bio);
    char* data = nullptr;
    long size = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(size));
    BIO_free(bio);
    return out;
  };
  ClientCredentials foreign = like;
  foreign.key_pem = pem(
      [&](BIO* bio) { PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr); });
  foreign.cert_pem = pem([&](BIO* bio) { PEM_write_bio_X509(bio, cert); });
  X509_free(cert);
  EVP_PKEY_free(key);
  return foreign;
}

// Polls a condition on the server's state; the ctest timeout bounds it.
template <typename Condition>
void WaitFor(Condition condition) {
  while (!condition()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

class ApiServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A client whose request is refused from its header writes into a
    // closed connection: EPIPE, not a signal.
    std::signal(SIGPIPE, SIG_IGN);
    IdentityOptions identity_options;
    identity_options.clock = [this] {
      std::lock_guard lock(clock_mutex_);
      return now_;
    };
    auto identity = DeviceIdentity::LoadOrCreate(temp_.path() + "/identity", identity_options);
    ASSERT_TRUE(identity) << identity.error().ToString();
    identity_ = std::move(*identity);
    auto registry = PairingRegistry::Open(temp_.path() + "/pairings.db", *identity_, audit_);
    ASSERT_TRUE(registry) << registry.error().ToString();
    registry_ = std::move(*registry);
    StartServer({});
  }

  void StartServer(ServerLimits limits) {
    server_.reset();
    ServerOptions options;
    options.bind_address = "127.0.0.1";
    options.port = 0;
    options.limits = limits;
    auto server = ApiServer::Start(options, {.identity = *identity_,
                                             .registry = *registry_,
                                             .handler = handler_,
                                             .events = &events_,
                                             .terminals = &terminals_});
    ASSERT_TRUE(server) << server.error().ToString();
    server_ = std::move(*server);
    address_ = "127.0.0.1:" + std::to_string(server_->port());
  }

  void Advance(std::chrono::seconds by) {
    std::lock_guard lock(clock_mutex_);
    now_ += by;
  }

  std::string Offer() {
    auto offer = registry_->CreateOffer(address_);
    EXPECT_TRUE(offer) << offer.error().ToString();
    return offer ? offer->Format() : "";
  }

  ClientCredentials Pair() {
    auto credentials = PairWithDevice(Offer(), "test laptop");
    EXPECT_TRUE(credentials) << credentials.error().ToString();
    return credentials ? *credentials : ClientCredentials{};
  }

  std::unique_ptr<ApiConnection> Connect(std::optional<ClientCredentials> credentials) {
    auto connection = ApiConnection::Connect({.address = address_,
                                              .device_spki = identity_->spki_sha256(),
                                              .credentials = std::move(credentials)});
    EXPECT_TRUE(connection) << connection.error().ToString();
    return connection ? std::move(*connection) : nullptr;
  }

  // GET /v1/status on a fresh connection with `credentials`.
  HttpReply Status(const ClientCredentials& credentials) {
    auto connection = Connect(credentials);
    if (!connection) return {};
    auto reply = connection->Request("GET", "/v1/status");
    EXPECT_TRUE(reply) << reply.error().ToString();
    return reply ? *reply : HttpReply{};
  }

  static std::string ErrorCodeOf(const HttpReply& reply) {
    auto json = nlohmann::json::parse(reply.body, nullptr, false);
    if (!json.is_object() || !json.contains("error"))
      return "(not an error body: " + reply.body + ")";
    return json["error"]["code"];
  }

  ralph::testing::TempDir temp_{"ralphd-api"};
  std::mutex clock_mutex_;
  system_clock::time_point now_ = system_clock::now();
  audit::testing::FakeAuditSink audit_;
  FakeHandler handler_;
  FakeEvents events_;
  FakeTerminals terminals_;
  std::unique_ptr<DeviceIdentity> identity_;
  std::unique_ptr<PairingRegistry> registry_;
  std::unique_ptr<ApiServer> server_;
  std::string address_;
};

TEST_F(ApiServerTest, PairsAndThenServesThePairedClientOverMutualTls) {
  ClientCredentials credentials = Pair();
  ASSERT_FALSE(credentials.cert_pem.empty());
  ralph::testing::TempDir client_dir{"ralphd-client"};
  ASSERT_TRUE(SaveCredentials(client_dir.path() + "/creds", credentials));
  auto loaded = LoadCredentials(client_dir.path() + "/creds");
  ASSERT_TRUE(loaded) << loaded.error().ToString();
  EXPECT_EQ(loaded->device_spki, identity_->spki_sha256());

  auto connection = Connect(*loaded);
  ASSERT_TRUE(connection);
  for (int i = 0; i < 3; ++i) {  // keep-alive
    auto reply = connection->Request("GET", "/v1/status");
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 200) << reply->body;
    EXPECT_EQ(nlohmann::json::parse(reply->body)["caller"], "test laptop");
  }
  auto pairings = connection->Request("GET", "/v1/pairings");
  ASSERT_TRUE(pairings);
  auto list = nlohmann::json::parse(pairings->body)["pairings"];
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], credentials.client_id);
  auto document = connection->Request("GET", "/v1/openapi.json");
  ASSERT_TRUE(document);
  EXPECT_EQ(document->status, 200);
  EXPECT_EQ(document->body, OpenApiDocument());
  auto missing = connection->Request("GET", "/v1/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_THAT(audit_.Types(), ::testing::Contains("pairing.paired"));
}

TEST_F(ApiServerTest, AWrongSecretIsRefused) {
  auto offer = PairingString::Parse(Offer());
  ASSERT_TRUE(offer);
  offer->secret[3] ^= 0x40;
  auto paired = PairWithDevice(offer->Format(), "x");
  ASSERT_FALSE(paired);
  EXPECT_EQ(paired.error().code(), ErrorCode::kVerificationFailed) << paired.error().ToString();
  EXPECT_THAT(paired.error().message(), HasSubstr("HTTP 403"));
}

TEST_F(ApiServerTest, AnExpiredPairingStringIsRefused) {
  std::string offer = Offer();
  Advance(std::chrono::seconds(601));
  auto paired = PairWithDevice(offer, "x");
  ASSERT_FALSE(paired);
  EXPECT_EQ(paired.error().code(), ErrorCode::kInvalidState) << paired.error().ToString();
  EXPECT_THAT(paired.error().message(), HasSubstr("expired"));
}

TEST_F(ApiServerTest, AUsedSecretIsRefused) {
  std::string offer = Offer();
  ASSERT_TRUE(PairWithDevice(offer, "first"));
  auto again = PairWithDevice(offer, "second");
  ASSERT_FALSE(again);
  EXPECT_THAT(again.error().message(), HasSubstr("already used"));
}

TEST_F(ApiServerTest, AProofReplayedOnAnotherTlsSessionIsRefused) {
  auto offer = PairingString::Parse(Offer());
  ASSERT_TRUE(offer);
  auto captured = Connect(std::nullopt);
  auto replay = Connect(std::nullopt);
  ASSERT_TRUE(captured && replay);
  auto made = MakeClientKeyAndCsr("x");
  ASSERT_TRUE(made);
  PairRequest request;
  request.id = offer->id;
  request.name = "x";
  request.csr_pem = made->csr_pem;
  request.proof = ComputePairingProof(offer->secret, offer->id, *captured->PairingExporter(),
                                      *CsrSpkiSha256(made->csr_pem));
  auto replayed = replay->Request("POST", "/v1/pair", PairRequestToJson(request));
  ASSERT_TRUE(replayed) << replayed.error().ToString();
  EXPECT_EQ(replayed->status, 403) << replayed->body;
  EXPECT_THAT(replayed->body, HasSubstr("another TLS connection"));
  // The same proof on its own session is good (the offer is not yet burnt).
  auto genuine = captured->Request("POST", "/v1/pair", PairRequestToJson(request));
  ASSERT_TRUE(genuine);
  EXPECT_EQ(genuine->status, 200) << genuine->body;
}

TEST_F(ApiServerTest, TheClientRefusesADeviceWithAnotherKey) {
  auto offer = PairingString::Parse(Offer());
  ASSERT_TRUE(offer);
  offer->spki_sha256[0] ^= 1;
  auto paired = PairWithDevice(offer->Format(), "x");
  ASSERT_FALSE(paired);
  EXPECT_EQ(paired.error().code(), ErrorCode::kVerificationFailed) << paired.error().ToString();
  EXPECT_THAT(paired.error().message(), HasSubstr("pinned key"));
}

TEST_F(ApiServerTest, UnpairedRevokedAndExpiredCertificatesAreRefused) {
  ClientCredentials credentials = Pair();
  HttpReply anonymous = [&] {
    auto connection = Connect(std::nullopt);
    return *connection->Request("GET", "/v1/status");
  }();
  EXPECT_EQ(anonymous.status, 401);
  EXPECT_EQ(ErrorCodeOf(anonymous), "unauthenticated");

  HttpReply foreign = Status(ForeignCredentials(credentials));
  EXPECT_EQ(foreign.status, 403);
  EXPECT_THAT(foreign.body, HasSubstr("not issued by this device"));

  // Revoked from a second paired client, while the first keeps a connection open.
  ClientCredentials admin = Pair();
  auto open = Connect(credentials);
  ASSERT_EQ(open->Request("GET", "/v1/status")->status, 200);
  auto revoked = Connect(admin)->Request("DELETE", "/v1/pairings/" + credentials.client_id);
  ASSERT_TRUE(revoked);
  EXPECT_EQ(revoked->status, 200) << revoked->body;
  auto after = open->Request("GET", "/v1/status");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 403);
  EXPECT_THAT(after->body, HasSubstr("revoked"));
  EXPECT_THAT(audit_.Types(), ::testing::Contains("pairing.revoked"));

  EXPECT_EQ(Status(admin).status, 200);
  Advance(std::chrono::hours(24 * 366));
  HttpReply expired = Status(admin);
  EXPECT_EQ(expired.status, 403);
  EXPECT_THAT(expired.body, HasSubstr("expired"));
}

// The certificate's signature is checked at a session's first request; its
// later requests are checked again for what can change, expiry included.
TEST_F(ApiServerTest, ASessionOpensOnceAndItsEveryRequestIsRechecked) {
  ClientCredentials credentials = Pair();
  auto refused = Connect(ForeignCredentials(credentials));
  EXPECT_EQ(refused->Request("GET", "/v1/status")->status, 403);
  EXPECT_EQ(refused->Request("GET", "/v1/status")->status, 403);
  auto open = Connect(credentials);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(open->Request("GET", "/v1/status")->status, 200);
  ASSERT_EQ(open->Request("GET", "/v1/openapi.json")->status, 200);
  EXPECT_EQ(handler_.Sessions(),
            std::vector<std::string>{credentials.client_id + " from 127.0.0.1"});
  EXPECT_EQ(Connect(credentials)->Request("GET", "/v1/openapi.json")->status, 200);
  EXPECT_EQ(handler_.Sessions().size(), 2u);

  Advance(std::chrono::hours(24 * 366));
  auto expired = open->Request("GET", "/v1/status");
  ASSERT_TRUE(expired);
  EXPECT_EQ(expired->status, 403);
  EXPECT_THAT(expired->body, HasSubstr("expired"));
  EXPECT_EQ(handler_.Sessions().size(), 2u);
}

UniqueFd RawConnect(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ADD_FAILURE() << "connect: " << strerror(errno);
  }
  return fd;
}

TEST_F(ApiServerTest, PlainHttpOnTheTlsPortIsRefused) {
  UniqueFd fd = RawConnect(server_->port());
  std::string request = "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::write(fd.get(), request.data(), request.size()),
            static_cast<ssize_t>(request.size()));
  std::string reply;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fd.get(), buffer, sizeof(buffer))) > 0) reply.append(buffer, n);
  EXPECT_THAT(reply, HasSubstr("HTTP/1.1 400"));
  EXPECT_THAT(reply, HasSubstr("tls-required"));
  EXPECT_THAT(reply, ::testing::Not(HasSubstr("\"state\"")));
  EXPECT_EQ(server_->stats().plain_http_refused, 1u);
}

TEST_F(ApiServerTest, OversizedAndMalformedRequestsGetJsonErrorsAndTheServerKeepsServing) {
  ClientCredentials credentials = Pair();
  {
    auto connection = Connect(credentials);
    ASSERT_TRUE(connection->WriteRaw(
        "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n{}"));
    auto reply = connection->ReadReply();
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 413);
    EXPECT_EQ(ErrorCodeOf(*reply), "body-too-large");
  }
  {
    auto connection = Connect(credentials);
    ASSERT_TRUE(connection->WriteRaw(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n"));
    auto reply = connection->ReadReply();
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 431);
    EXPECT_EQ(ErrorCodeOf(*reply), "header-too-large");
  }
  {
    auto connection = Connect(credentials);
    ASSERT_TRUE(connection->WriteRaw("NOT HTTP AT ALL\r\n\r\n"));
    auto reply = connection->ReadReply();
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 400);
    EXPECT_EQ(ErrorCodeOf(*reply), "bad-request");
  }
  {
    auto connection = Connect(std::nullopt);
    auto reply = connection->Request("POST", "/v1/pair", R"({"id":"0123456789abcdef","x":1})");
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 400);
    EXPECT_THAT(reply->body, HasSubstr("\\\"x\\\" is unknown"));
  }
  EXPECT_EQ(Status(credentials).status, 200);
}

// The body limit is the route's: a workspace-upload-like route takes more
// than 1 MiB, every other route keeps 1 MiB; a declared length over the
// route's limit is refused before the body is sent, a chunked body at the
// limit.
TEST_F(ApiServerTest, TheBodyLimitIsTheRoutesAndRefusedEarly) {
  ClientCredentials credentials = Pair();
  {
    auto connection = Connect(credentials);
    std::string two_mib(2 << 20, 'x');
    auto reply = connection->Request("PUT", "/v1/upload", two_mib);
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 200) << reply->body;
    EXPECT_EQ(nlohmann::json::parse(reply->body)["size"], two_mib.size());
  }
  {
    // Another route: 1 MiB. The refusal comes from the header, whatever of
    // the body was sent (the client reads it when its write fails).
    auto connection = Connect(credentials);
    std::string two_mib(2 << 20, 'x');
    auto refused = connection->Request("PUT", "/v1/echo", two_mib);
    ASSERT_TRUE(refused) << refused.error().ToString();
    EXPECT_EQ(refused->status, 413);
    EXPECT_EQ(ErrorCodeOf(*refused), "body-too-large");
    EXPECT_THAT(refused->body, HasSubstr("the limit of PUT /v1/echo"));
  }
  {
    // Only the header: the refusal comes without the body being sent.
    auto connection = Connect(credentials);
    ASSERT_TRUE(connection->WriteRaw(
        fmt::format("PUT /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    FakeHandler::kUploadLimit + 1)));
    auto reply = connection->ReadReply();
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 413);
    EXPECT_THAT(reply->body, HasSubstr(fmt::format("over {} bytes", FakeHandler::kUploadLimit)));
  }
  {
    // Chunked, so no length up front: stopped at the route's limit.
    auto connection = Connect(credentials);
    std::string chunk(1 << 20, 'y');
    std::string request = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 2; ++i) request += fmt::format("{:x}\r\n{}\r\n", chunk.size(), chunk);
    ASSERT_TRUE(connection->WriteRaw(request));
    auto reply = connection->ReadReply();
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 413);
    EXPECT_EQ(ErrorCodeOf(*reply), "body-too-large");
  }
  EXPECT_EQ(Status(credentials).status, 200);
}

TEST_F(ApiServerTest, ASlowLorisClientIsDroppedByTheHeaderTimeout) {
  ServerLimits limits;
  limits.header_timeout = std::chrono::milliseconds(300);
  StartServer(limits);
  ClientCredentials credentials = Pair();
  auto connection = Connect(credentials);
  ASSERT_TRUE(connection->WriteRaw("GET /v1/status HTTP/1.1\r\nHost: x\r\n"));
  // The header never ends; the server closes the connection.
  auto reply = connection->ReadReply();
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().code(), ErrorCode::kNetwork) << reply.error().ToString();
  // Counted by the handler that runs once the timer closed the socket.
  WaitFor([&] { return server_->stats().timeouts >= 1; });
  EXPECT_EQ(Status(credentials).status, 200);
}

TEST_F(ApiServerTest, AThousandIdleConnectionsDoNotStopAPairedClient) {
  constexpr size_t kIdle = 1000;
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  // Both ends live in this process: two fds per connection, and headroom.
  if (limit.rlim_cur < 2 * kIdle + 256) {
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_max, 4 * kIdle);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &limit), 0) << strerror(errno);
  }
  ASSERT_GE(limit.rlim_cur, 2 * kIdle + 256) << "RLIMIT_NOFILE hard limit is too low";
  // Idle connections wait in the TLS-detection phase; a slow machine must
  // not time them out before they are counted.
  ServerLimits limits;
  limits.handshake_timeout = std::chrono::minutes(10);
  StartServer(limits);
  ClientCredentials credentials = Pair();
  uint64_t accepted_before = server_->stats().accepted;
  std::vector<UniqueFd> idle;
  for (size_t i = 0; i < kIdle; ++i) idle.push_back(RawConnect(server_->port()));
  WaitFor([&] { return server_->stats().accepted >= accepted_before + kIdle; });
  EXPECT_GE(server_->stats().open_connections, kIdle);
  auto connection = Connect(credentials);
  ASSERT_TRUE(connection);
  for (int i = 0; i < 5; ++i) {
    auto reply = connection->Request("GET", "/v1/status");
    ASSERT_TRUE(reply) << reply.error().ToString();
    EXPECT_EQ(reply->status, 200);
  }
}

TEST_F(ApiServerTest, TheConnectionLimitRefusesTheExcessAndRecovers) {
  ServerLimits limits;
  limits.max_connections = 4;
  StartServer(limits);
  ClientCredentials credentials = Pair();
  WaitFor([&] { return server_->stats().open_connections == 0; });
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(RawConnect(server_->port()));
  WaitFor([&] { return server_->stats().open_connections == 4; });
  UniqueFd excess = RawConnect(server_->port());
  char byte;
  EXPECT_EQ(::read(excess.get(), &byte, 1), 0);  // closed at accept
  EXPECT_EQ(server_->stats().refused_over_limit, 1u);
  idle.clear();
  WaitFor([&] { return server_->stats().open_connections == 0; });
  EXPECT_EQ(Status(credentials).status, 200);
}

TEST_F(ApiServerTest, EventStreamReconnectWithAfterLosesNothing) {
  ClientCredentials credentials = Pair();
  for (int i = 1; i <= 5; ++i) events_.Append("job.output", fmt::format("{{\"n\":{}}}", i));
  uint64_t last = 0;
  {
    auto connection = Connect(credentials);
    ASSERT_TRUE(connection->OpenEvents(0));
    for (int i = 1; i <= 3; ++i) {
      auto event = connection->NextEvent();
      ASSERT_TRUE(event) << event.error().ToString();
      EXPECT_EQ(event->seq, static_cast<uint64_t>(i));
      EXPECT_EQ(event->type, "job.output");
      EXPECT_EQ(event->data, fmt::format("{{\"n\":{}}}", i));
      last = event->seq;
    }
  }  // the client goes away mid-stream
  WaitFor([&] { return server_->stats().open_streams == 0; });
  for (int i = 6; i <= 8; ++i) events_.Append("job.state", fmt::format("{{\"n\":{}}}", i));
  auto connection = Connect(credentials);
  ASSERT_TRUE(connection->OpenEvents(last));
  for (uint64_t seq = 4; seq <= 8; ++seq) {
    auto event = connection->NextEvent();
    ASSERT_TRUE(event) << event.error().ToString();
    EXPECT_EQ(event->seq, seq);
  }
  // Live: appended while the stream waits.
  std::thread appender([&] { events_.Append("audit", "{\"n\":9}"); });
  auto live = connection->NextEvent();
  appender.join();
  ASSERT_TRUE(live) << live.error().ToString();
  EXPECT_EQ(live->seq, 9u);
  EXPECT_EQ(live->type, "audit");
}

TEST_F(ApiServerTest, EventsNoLongerRetainedAreAnnouncedAsAGap) {
  ClientCredentials credentials = Pair();
  for (int i = 1; i <= 10; ++i) events_.Append("job.output", "{}");
  events_.DropBefore(8);
  auto connection = Connect(credentials);
  ASSERT_TRUE(connection->OpenEvents(3));
  auto gap = connection->NextEvent();
  ASSERT_TRUE(gap);
  EXPECT_EQ(gap->type, "gap");
  auto range = nlohmann::json::parse(gap->data);
  EXPECT_EQ(range["first_missing"], 4);
  EXPECT_EQ(range["last_missing"], 7);
  auto next = connection->NextEvent();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->seq, 8u);
  auto bad = Connect(credentials);
  auto refused = bad->OpenEvents(0);
  ASSERT_TRUE(refused);  // after=0 is fine
  auto malformed = Connect(credentials)->Request("GET", "/v1/events?after=x1");
  ASSERT_TRUE(malformed);
  EXPECT_EQ(malformed->status, 400);
  EXPECT_THAT(malformed->body, HasSubstr("after=\\\"x1\\\""));
}

// ?job=ID: only that job's events, the cursor moving past the others'
// (more than a batch of them); parameters are strict.
TEST_F(ApiServerTest, AJobsEventStreamCarriesOnlyItsEvents) {
  ClientCredentials credentials = Pair();
  events_.Append("job.state", R"({"n":1})", 7);
  for (int i = 0; i < 600; ++i) events_.Append("job.output", "{}", 8);
  events_.Append("job.output", R"({"n":2})", 7);
  events_.Append("audit", "{}");
  auto connection = Connect(credentials);
  ASSERT_TRUE(connection->OpenEvents(0, 7));
  auto first = connection->NextEvent();
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_EQ(first->seq, 1u);
  auto second = connection->NextEvent();
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(second->seq, 602u);
  EXPECT_EQ(second->data, R"({"n":2})");
  std::thread appender([&] {
    events_.Append("job.output", "{}", 8);
    events_.Append("job.state", R"({"n":3})", 7);
  });
  auto live = connection->NextEvent();
  appender.join();
  ASSERT_TRUE(live) << live.error().ToString();
  EXPECT_EQ(live->seq, 605u);
  for (const char* query : {"job=0", "job=x", "after=1&colour=red"}) {
    auto refused = Connect(credentials)->Request("GET", std::string("/v1/events?") + query);
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 400) << query << ": " << refused->body;
  }
}

TEST_F(ApiServerTest, TheTerminalCarriesInputOutputResizeAndDetachLeavesTheJob) {
  ClientCredentials credentials = Pair();
  auto connection = Connect(credentials);
  auto opened = connection->OpenTerminal("7");
  ASSERT_TRUE(opened) << opened.error().ToString();
  ASSERT_TRUE(connection->SendTerminalInput("ls -l\n"));
  auto echoed = connection->ReceiveTerminal();
  ASSERT_TRUE(echoed) << echoed.error().ToString();
  EXPECT_TRUE(echoed->binary);
  EXPECT_EQ(echoed->data, "echo:ls -l\n");
  ASSERT_TRUE(connection->SendTerminalControl(R"({"type":"resize","columns":120,"rows":40})"));
  auto resized = connection->ReceiveTerminal();
  ASSERT_TRUE(resized);
  EXPECT_EQ(resized->data, "resized 120x40");
  ASSERT_TRUE(connection->SendTerminalControl(R"({"type":"resize","columns":"wide"})"));
  auto refused = connection->ReceiveTerminal();
  ASSERT_TRUE(refused);
  EXPECT_FALSE(refused->binary);
  auto error = nlohmann::json::parse(refused->data);
  EXPECT_EQ(error["type"], "error");
  EXPECT_THAT(error["message"].get<std::string>(), HasSubstr(R"("columns" and "rows")"));
  ASSERT_TRUE(connection->SendTerminalControl(R"({"type":"detach"})"));
  auto closed = connection->ReceiveTerminal();
  ASSERT_TRUE(closed);
  EXPECT_TRUE(closed->closed);
  EXPECT_EQ(terminals_.detaches(), 1);

  // The job ran on: attach again, and see it exit.
  auto again = Connect(credentials);
  ASSERT_TRUE(again->OpenTerminal("7"));
  ASSERT_TRUE(again->SendTerminalInput("x"));
  ASSERT_EQ(again->ReceiveTerminal()->data, "echo:x");
  terminals_.Exit(3);
  auto exit = again->ReceiveTerminal();
  ASSERT_TRUE(exit);
  EXPECT_EQ(nlohmann::json::parse(exit->data)["status"], 3);
  EXPECT_TRUE(again->ReceiveTerminal()->closed);
  EXPECT_EQ(terminals_.attaches(), 2);
}

TEST_F(ApiServerTest, ATerminalClientThatDisconnectsIsDetachedAndAnUnknownJobRefused) {
  ClientCredentials credentials = Pair();
  {
    auto connection = Connect(credentials);
    ASSERT_TRUE(connection->OpenTerminal("7"));
    ASSERT_TRUE(connection->SendTerminalInput("y"));
    ASSERT_EQ(connection->ReceiveTerminal()->data, "echo:y");
  }
  WaitFor([&] { return terminals_.detaches() == 1; });
  WaitFor([&] { return server_->stats().open_streams == 0; });
  auto unknown = Connect(credentials)->OpenTerminal("8");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code(), ErrorCode::kNotFound) << unknown.error().ToString();
  auto anonymous = Connect(std::nullopt)->OpenTerminal("7");
  ASSERT_FALSE(anonymous);
  EXPECT_THAT(anonymous.error().message(), HasSubstr("HTTP 401"));
}

}  // namespace
}  // namespace ralph::ralphd::api
