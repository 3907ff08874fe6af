// The pairing registry: one-time offers and paired clients in SQLite, the
// clients mirrored in memory so Authorize (every request) does not query.
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <filesystem>

#include <fmt/format.h>

#include "files.h"
#include "ossl.h"
#include "services/ralphd/api/pairing.h"
#include "services/sqlite/sqlite_util.h"

namespace ralph::ralphd::api {
namespace {

using std::chrono::system_clock;

constexpr int32_t kApplicationId = 0x524c5052;  // "RLPR"
constexpr int kSchemaVersion = 1;

constexpr const char* kSchemaSql = R"sql(
CREATE TABLE offers (
  id       TEXT PRIMARY KEY,
  secret   BLOB NOT NULL,
  created  INTEGER NOT NULL,
  expires  INTEGER NOT NULL,
  state    TEXT NOT NULL CHECK (state IN ('open', 'used', 'burnt')),
  failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE clients (
  id         TEXT PRIMARY KEY,
  name       TEXT NOT NULL,
  spki       TEXT NOT NULL,
  paired     INTEGER NOT NULL,
  expires    INTEGER NOT NULL,
  revoked    INTEGER NOT NULL DEFAULT 0
);
)sql";

using sqlite::Statement;
constexpr auto Text = sqlite::ColumnText;

int64_t Unix(system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

}  // namespace

void PairingRegistry::DbDeleter::operator()(sqlite3* db) const {
  sqlite3_close_v2(db);
}

PairingRegistry::~PairingRegistry() = default;

Error PairingRegistry::DbError(int rc, std::string_view what) const {
  const char* message = db_ ? sqlite3_errmsg(db_.get()) : sqlite3_errstr(rc);
  ErrorCode code = ErrorCode::kIo;
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = ErrorCode::kBusy; break;
    case SQLITE_READONLY: code = ErrorCode::kReadOnly; break;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: code = ErrorCode::kCorrupt; break;
    case SQLITE_FULL: code = ErrorCode::kNoSpace; break;
    default: break;
  }
  return Error::Make(
      code, fmt::format("pairing registry {}: {}: {}", path_, what, message ? message : "unknown"));
}

namespace {

// Prepares, binds (int64_t, std::string or a byte span) and is stepped by the caller.
class Query {
 public:
  Query(sqlite3* db, const char* sql) {
    sqlite3_stmt* raw = nullptr;
    rc_ = sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
    statement_.reset(raw);
  }
  int rc() const { return rc_; }
  sqlite3_stmt* get() const { return statement_.get(); }
  Query& Bind(int index, int64_t value) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(get(), index, value);
    return *this;
  }
  Query& Bind(int index, std::string_view value) {
    if (rc_ == SQLITE_OK) {
      rc_ = sqlite3_bind_text(get(), index, value.data(), static_cast<int>(value.size()),
                              SQLITE_TRANSIENT);
    }
    return *this;
  }
  Query& BindBlob(int index, std::span<const uint8_t> value) {
    if (rc_ == SQLITE_OK) {
      rc_ = sqlite3_bind_blob(get(), index, value.data(), static_cast<int>(value.size()),
                              SQLITE_TRANSIENT);
    }
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error.
  int Step() {
    if (rc_ != SQLITE_OK && rc_ != SQLITE_ROW) return rc_;
    int rc = sqlite3_step(get());
    rc_ = rc == SQLITE_ROW ? SQLITE_ROW : (rc == SQLITE_DONE ? SQLITE_OK : rc);
    return rc;
  }

 private:
  Statement statement_;
  int rc_ = SQLITE_OK;
};

}  // namespace

Result<std::unique_ptr<PairingRegistry>> PairingRegistry::Open(const std::string& path,
                                                               const DeviceIdentity& identity,
                                                               audit::AuditSinkInterface& audit,
                                                               PairingOptions options) {
  std::unique_ptr<PairingRegistry> registry(new PairingRegistry(identity, audit, options));
  registry->path_ = path;
  TRY(MakeDirectories(std::filesystem::path(path).parent_path().string(), 0700));
  // Created 0600 before SQLite sees it: the file holds open secrets.
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Error::FromErrno(fmt::format("open {}", path), errno);
  ::close(fd);
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  registry->db_.reset(raw);
  if (rc != SQLITE_OK) return registry->DbError(rc, "opening");
  sqlite3* db = raw;
  sqlite3_busy_timeout(db, 5000);
  rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", nullptr, nullptr,
                    nullptr);
  if (rc != SQLITE_OK) return registry->DbError(rc, "setting WAL mode");
  auto fail = [&](int code, std::string_view what) { return registry->DbError(code, what); };
  sqlite::Header header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
  int64_t application_id = header.application_id;
  int64_t version = header.user_version;
  if (application_id == 0 && version == 0 && header.schema_objects == 0) {
    constexpr std::string_view kWhat = "creating the schema";
    sqlite::Transaction transaction =
        TRY(sqlite::Transaction::Begin(db, sqlite::TransactionKind::kImmediate, kWhat, fail));
    std::string sql = fmt::format("{} PRAGMA application_id={}; PRAGMA user_version={};",
                                  kSchemaSql, kApplicationId, kSchemaVersion);
    TRY(sqlite::Exec(db, sql.c_str(), kWhat, fail));
    TRY(transaction.Commit(kWhat, fail));
  } else if (application_id != kApplicationId) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{} is an SQLite database but not a pairing registry", path));
  } else if (version != kSchemaVersion) {
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("pairing registry {} has schema version {}; this build reads {}",
                                   path, version, kSchemaVersion));
  }
  TRY(registry->Load());
  return registry;
}

Result<void> PairingRegistry::Load() {
  Query query(db_.get(), "SELECT id, name, spki, paired, expires, revoked FROM clients");
  int rc;
  while ((rc = query.Step()) == SQLITE_ROW) {
    PairedClient client;
    client.id = Text(query.get(), 0);
    client.name = Text(query.get(), 1);
    client.spki_sha256_hex = Text(query.get(), 2);
    client.paired_unix = sqlite3_column_int64(query.get(), 3);
    client.expires_unix = sqlite3_column_int64(query.get(), 4);
    client.revoked_unix = sqlite3_column_int64(query.get(), 5);
    clients_[client.id] = client;
  }
  if (rc != SQLITE_DONE) return DbError(rc, "reading clients");
  return {};
}

Result<void> PairingRegistry::Audit(std::string_view type, std::string_view subject,
                                    nlohmann::json details) {
  audit::AuditEvent event{.actor = "ralphd",
                          .type = std::string(type),
                          .subject = std::string(subject),
                          .details = std::move(details)};
  TRY_CTX(audit_.Append(event), fmt::format("auditing {}", type));
  return {};
}

Result<PairingString> PairingRegistry::CreateOffer(std::string_view address) {
  PairingString offer;
  offer.address = std::string(address);
  offer.spki_sha256 = identity_.spki_sha256();
  std::array<uint8_t, kPairingIdSize> id{};
  TRY(ossl::RandomBytes(id));
  offer.id = ossl::HexOf(id);
  TRY(ossl::RandomBytes(offer.secret));
  system_clock::time_point now = identity_.Now();
  offer.expires_unix = Unix(now + options_.offer_ttl);
  // The address must be one a client can parse back.
  TRY(PairingString::Parse(offer.Format()));

  std::lock_guard lock(mutex_);
  // Offers a day past expiry are kept no longer: their secrets are dead weight.
  Query prune(db_.get(), "DELETE FROM offers WHERE expires < ?");
  prune.Bind(1, Unix(now) - 86400);
  if (prune.Step() != SQLITE_DONE) return DbError(prune.rc(), "pruning old offers");
  Query insert(db_.get(),
               "INSERT INTO offers (id, secret, created, expires, state) VALUES (?, ?, ?, ?, "
               "'open')");
  insert.Bind(1, offer.id).BindBlob(2, offer.secret).Bind(3, Unix(now)).Bind(4, offer.expires_unix);
  if (insert.Step() != SQLITE_DONE) return DbError(insert.rc(), "storing an offer");
  TRY(Audit("pairing.offer", offer.id, {{"expires", offer.expires_unix}, {"address", address}}));
  return offer;
}

Result<PairResult> PairingRegistry::Pair(const PairRequest& request,
                                         std::span<const uint8_t> exporter,
                                         std::string_view remote) {
  std::lock_guard lock(mutex_);
  system_clock::time_point now = identity_.Now();
  auto refuse = [&](Error error) {
    (void)Audit("pairing.refused", request.id,
                {{"remote", remote}, {"name", request.name}, {"reason", error.message()}});
    return error;
  };
  while (!attempts_.empty() && now - attempts_.front() >= std::chrono::minutes(1)) {
    attempts_.pop_front();
  }
  if (attempts_.size() >= static_cast<size_t>(options_.max_attempts_per_minute)) {
    auto wait = std::chrono::duration_cast<std::chrono::seconds>(attempts_.front() +
                                                                 std::chrono::minutes(1) - now);
    return refuse(
        Error::Make(ErrorCode::kBusy,
                    fmt::format("too many pairing attempts; try again in {} s", wait.count() + 1)));
  }
  attempts_.push_back(now);

  Query find(db_.get(), "SELECT secret, expires, state, failures FROM offers WHERE id = ?");
  find.Bind(1, request.id);
  int rc = find.Step();
  if (rc == SQLITE_DONE) {
    return refuse(
        Error::Make(ErrorCode::kNotFound, fmt::format("no pairing offer has id {}", request.id)));
  }
  if (rc != SQLITE_ROW) return DbError(find.rc(), "reading an offer");
  PairingSecret secret{};
  if (sqlite3_column_bytes(find.get(), 0) == static_cast<int>(secret.size())) {
    std::memcpy(secret.data(), sqlite3_column_blob(find.get(), 0), secret.size());
  }
  int64_t expires = sqlite3_column_int64(find.get(), 1);
  std::string state = Text(find.get(), 2);
  int64_t failures = sqlite3_column_int64(find.get(), 3);
  find = Query(db_.get(), "SELECT 1");
  if (state == "used") {
    return refuse(Error::Make(ErrorCode::kInvalidState,
                              fmt::format("pairing offer {} was already used", request.id)));
  }
  if (state == "burnt") {
    return refuse(Error::Make(
        ErrorCode::kInvalidState,
        fmt::format("pairing offer {} was withdrawn after {} wrong proofs", request.id, failures)));
  }
  if (Unix(now) >= expires) {
    return refuse(Error::Make(
        ErrorCode::kInvalidState,
        fmt::format("pairing offer {} expired {} s ago", request.id, Unix(now) - expires)));
  }
  Sha256Digest csr_spki = TRY_CTX(CsrSpkiSha256(request.csr_pem), "pairing request field \"csr\"");
  std::array<uint8_t, 32> expected = ComputePairingProof(secret, request.id, exporter, csr_spki);
  if (exporter.size() != kPairingExporterSize ||
      CRYPTO_memcmp(expected.data(), request.proof.data(), expected.size()) != 0) {
    bool burn = failures + 1 >= options_.max_failures_per_offer;
    Query fail(db_.get(), burn ? "UPDATE offers SET failures = failures + 1, state = 'burnt', "
                                 "secret = zeroblob(16) WHERE id = ?"
                               : "UPDATE offers SET failures = failures + 1 WHERE id = ?");
    fail.Bind(1, request.id);
    if (fail.Step() != SQLITE_DONE) return DbError(fail.rc(), "counting a failed proof");
    return refuse(Error::Make(
        ErrorCode::kVerificationFailed,
        fmt::format("the pairing proof for offer {} does not match (wrong secret, or a proof "
                    "made on another TLS connection or for another key){}",
                    request.id, burn ? "; the offer is withdrawn" : "")));
  }
  IssuedCertificate issued =
      TRY_CTX(identity_.SignClientCsr(request.csr_pem, request.name, options_.client_validity),
              "pairing request field \"csr\"");

  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  // Rolled back on every return before the commit.
  sqlite::Transaction transaction = TRY(sqlite::Transaction::Begin(
      db_.get(), sqlite::TransactionKind::kImmediate, "beginning a transaction", fail));
  // Single use even against a concurrent process: only an open offer flips.
  Query use(db_.get(),
            "UPDATE offers SET state = 'used', secret = zeroblob(16) WHERE id = ? AND state = "
            "'open'");
  use.Bind(1, request.id);
  if (use.Step() != SQLITE_DONE) return DbError(use.rc(), "consuming the offer");
  if (sqlite3_changes(db_.get()) != 1) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("pairing offer {} was already used", request.id));
  }
  PairedClient client;
  client.id = issued.serial_hex;
  client.name = request.name;
  client.spki_sha256_hex = DigestToHex(csr_spki);
  client.paired_unix = Unix(now);
  client.expires_unix = Unix(issued.not_after);
  Query insert(db_.get(),
               "INSERT INTO clients (id, name, spki, paired, expires) VALUES (?, ?, ?, ?, ?)");
  insert.Bind(1, client.id)
      .Bind(2, client.name)
      .Bind(3, client.spki_sha256_hex)
      .Bind(4, client.paired_unix)
      .Bind(5, client.expires_unix);
  if (insert.Step() != SQLITE_DONE) return DbError(insert.rc(), "storing the client");
  // Not paired unless audited.
  if (auto audited = Audit("pairing.paired", client.id,
                           {{"offer", request.id},
                            {"name", client.name},
                            {"remote", remote},
                            {"spki_sha256", client.spki_sha256_hex},
                            {"expires", client.expires_unix}});
      !audited) {
    return audited.error();
  }
  TRY(transaction.Commit("committing the pairing", fail));
  clients_[client.id] = client;
  return PairResult{client, issued.pem, identity_.ca_cert_pem()};
}

Result<PairedClient> PairingRegistry::Authorize(X509* peer) const {
  if (!peer) {
    return Error::Make(ErrorCode::kPermissionDenied,
                       "this request needs a paired client certificate (mutual TLS); pair first");
  }
  EVP_PKEY* ca_key = X509_get0_pubkey(identity_.ca_cert());
  if (X509_check_issued(identity_.ca_cert(), peer) != X509_V_OK || X509_verify(peer, ca_key) != 1) {
    return Error::Make(ErrorCode::kPermissionDenied,
                       "the client certificate was not issued by this device");
  }
  system_clock::time_point now = identity_.Now();
  auto not_after = ossl::NotAfter(peer);
  auto not_before = ossl::NotBefore(peer);
  if (!not_after || !not_before || now >= *not_after || now < *not_before) {
    return Error::Make(ErrorCode::kPermissionDenied,
                       "the client certificate has expired (or is not yet valid); pair again");
  }
  return Recheck(ossl::SerialHex(peer));
}

Result<PairedClient> PairingRegistry::Recheck(std::string_view client_id) const {
  int64_t now = Unix(identity_.Now());
  std::lock_guard lock(mutex_);
  auto it = clients_.find(std::string(client_id));
  if (it == clients_.end()) {
    return Error::Make(
        ErrorCode::kPermissionDenied,
        fmt::format("client certificate {} is not paired with this device", client_id));
  }
  if (it->second.revoked_unix != 0) {
    return Error::Make(ErrorCode::kPermissionDenied,
                       fmt::format("client {} ({}) was revoked", client_id, it->second.name));
  }
  if (now >= it->second.expires_unix) {
    return Error::Make(ErrorCode::kPermissionDenied,
                       "the client certificate has expired (or is not yet valid); pair again");
  }
  return it->second;
}

Result<std::vector<PairedClient>> PairingRegistry::List() const {
  std::lock_guard lock(mutex_);
  std::vector<PairedClient> out;
  for (const auto& [id, client] : clients_) out.push_back(client);
  std::sort(out.begin(), out.end(), [](const PairedClient& a, const PairedClient& b) {
    return a.paired_unix != b.paired_unix ? a.paired_unix < b.paired_unix : a.id < b.id;
  });
  return out;
}

Result<void> PairingRegistry::Revoke(std::string_view client_id, std::string_view actor) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(std::string(client_id));
  if (it == clients_.end()) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("no paired client has id {}", client_id));
  }
  if (it->second.revoked_unix != 0) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("client {} is already revoked", client_id));
  }
  int64_t now = Unix(identity_.Now());
  Query revoke(db_.get(), "UPDATE clients SET revoked = ? WHERE id = ?");
  revoke.Bind(1, std::max<int64_t>(now, 1)).Bind(2, client_id);
  if (revoke.Step() != SQLITE_DONE) return DbError(revoke.rc(), "revoking a client");
  it->second.revoked_unix = std::max<int64_t>(now, 1);
  // Revoked whether or not the audit append works: refusing access is the
  // safe side; the caller sees the audit error.
  TRY(Audit("pairing.revoked", client_id, {{"name", it->second.name}, {"by", actor}}));
  return {};
}

}  // namespace ralph::ralphd::api
