#include "services/audit/audit_log.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include <cerrno>
#include <filesystem>

#include <fmt/format.h>

#include "platform/unique_fd.h"
#include "services/audit/redact.h"

namespace ralph::audit {
namespace {

struct StatementDeleter {
  void operator()(sqlite3_stmt* statement) const { sqlite3_finalize(statement); }
};
using Statement = std::unique_ptr<sqlite3_stmt, StatementDeleter>;

// The schema of version 1. Rows are keyed by their sequence number (assigned
// by Append, never by SQLite) and the triggers refuse UPDATE and DELETE
// through SQL, so an honest program cannot rewrite history by mistake; a
// deliberate tamperer can drop them, which the hash chain then exposes.
constexpr const char* kSchemaSql = R"sql(
CREATE TABLE audit_log (
  seq       INTEGER PRIMARY KEY,
  time      TEXT NOT NULL,
  actor     TEXT NOT NULL,
  type      TEXT NOT NULL,
  subject   TEXT NOT NULL,
  details   TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash      TEXT NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log rows are append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log rows are append-only'); END;
)sql";

constexpr const char* kRowColumns = "seq, time, actor, type, subject, details, prev_hash, hash";

ErrorCode CodeForSqlite(int rc, int sys_errno) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return ErrorCode::kBusy;
    case SQLITE_READONLY: return ErrorCode::kReadOnly;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_FORMAT:
    case SQLITE_SCHEMA: return ErrorCode::kCorrupt;
    case SQLITE_FULL: return ErrorCode::kNoSpace;
    case SQLITE_PERM:
    case SQLITE_AUTH: return ErrorCode::kPermissionDenied;
    case SQLITE_CONSTRAINT: return ErrorCode::kRefused;
    case SQLITE_NOMEM:
    case SQLITE_MISUSE:
    case SQLITE_INTERNAL: return ErrorCode::kInternal;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR: return sys_errno != 0 ? ErrorCodeFromErrno(sys_errno) : ErrorCode::kIo;
    default: return ErrorCode::kIo;
  }
}

bool IsIdentifier(std::string_view text) {
  if (text.empty() || text.size() > 64) return false;
  for (char c : text) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string ColumnText(sqlite3_stmt* statement, int column) {
  const unsigned char* text = sqlite3_column_text(statement, column);
  if (!text) return {};
  // sqlite3_column_text returns UTF-8 bytes as unsigned char.
  return std::string(reinterpret_cast<const char*>(text),
                     static_cast<size_t>(sqlite3_column_bytes(statement, column)));
}

// Percent-encodes the characters that end or escape a URI path.
std::string UriEscape(std::string_view path) {
  std::string out;
  for (char c : path) {
    if (c == '%' || c == '?' || c == '#') {
      out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out;
}

AuditRecord ReadRow(sqlite3_stmt* statement) {
  AuditRecord row;
  row.seq = sqlite3_column_int64(statement, 0);
  row.time = ColumnText(statement, 1);
  row.actor = ColumnText(statement, 2);
  row.type = ColumnText(statement, 3);
  row.subject = ColumnText(statement, 4);
  row.details = ColumnText(statement, 5);
  row.prev_hash = ColumnText(statement, 6);
  row.hash = ColumnText(statement, 7);
  return row;
}

Result<void> ValidateEvent(const AuditEvent& event) {
  if (!IsIdentifier(event.actor)) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("audit event actor \"{}\" is not 1..64 of [a-z0-9._-]", event.actor));
  }
  if (!IsIdentifier(event.type)) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("audit event type \"{}\" is not 1..64 of [a-z0-9._-]", event.type));
  }
  if (event.subject.size() > kMaxSubjectBytes) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("audit event subject is {} bytes; at most {}",
                                   event.subject.size(), kMaxSubjectBytes));
  }
  if (!event.details.is_object() && !event.details.is_null()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("audit event details must be a JSON object, not {}",
                                   event.details.type_name()));
  }
  return {};
}

}  // namespace

void AuditLog::DbDeleter::operator()(sqlite3* db) const {
  // sqlite3_close_v2 defers the close until every statement is finalized;
  // ours are all owned by Statement and gone by now.
  sqlite3_close_v2(db);
}

Error AuditLog::DbError(int rc, std::string_view what) const {
  int sys_errno = db_ ? sqlite3_system_errno(db_.get()) : 0;
  const char* message = db_ ? sqlite3_errmsg(db_.get()) : sqlite3_errstr(rc);
  std::string detail = message ? message : sqlite3_errstr(rc);
  if ((rc & 0xff) == SQLITE_BUSY) {
    detail += fmt::format(" (another process held it for more than {} ms)",
                          options_.busy_timeout.count());
  }
  return Error::Make(CodeForSqlite(rc, sys_errno),
                     fmt::format("audit log {}: {}: {}", path_, what, detail));
}

namespace {

// Runs SQL without results. `fail` turns a SQLite code into an Error.
template <typename Fail>
Result<void> Exec(sqlite3* db, const char* sql, std::string_view what, Fail&& fail) {
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return fail(rc, what);
  return {};
}

template <typename Fail>
Result<Statement> Prepare(sqlite3* db, const std::string& sql, std::string_view what, Fail&& fail) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &raw, nullptr);
  Statement statement(raw);
  if (rc != SQLITE_OK) return fail(rc, what);
  return statement;
}

struct Header {
  int64_t application_id = 0;
  int64_t user_version = 0;
  int64_t schema_objects = 0;
};

// One statement, so one snapshot: read separately, a header could be seen
// before and the schema after another process initialised the file.
template <typename Fail>
Result<Header> ReadHeader(sqlite3* db, Fail&& fail) {
  constexpr std::string_view kWhat = "reading the header";
  Statement statement = TRY(Prepare(db,
                                    "SELECT a.application_id, v.user_version, (SELECT count(*) "
                                    "FROM sqlite_master) FROM pragma_application_id AS a, "
                                    "pragma_user_version AS v",
                                    kWhat, fail));
  int rc = sqlite3_step(statement.get());
  if (rc != SQLITE_ROW) return fail(rc, kWhat);
  return Header{sqlite3_column_int64(statement.get(), 0), sqlite3_column_int64(statement.get(), 1),
                sqlite3_column_int64(statement.get(), 2)};
}

// Rolls back on every path that does not Commit().
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {}
  ~Transaction() {
    if (db_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void Committed() { db_ = nullptr; }

 private:
  sqlite3* db_;
};

}  // namespace

Result<std::unique_ptr<AuditLog>> AuditLog::Open(std::string path, OpenMode mode,
                                                 AuditLogOptions options) {
  if (path.empty()) return Error::Make(ErrorCode::kInvalidArgument, "audit log path is empty");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return Error::FromErrno(fmt::format("audit log {}: stat", path), errno);
    if (mode != OpenMode::kCreateIfMissing) {
      return Error::Make(ErrorCode::kNotFound, fmt::format("audit log {} does not exist", path));
    }
    std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) {
      return Error::FromErrno(
          fmt::format("audit log {}: creating directory {}", path, parent.string()), ec.value());
    }
    // Created here, not by SQLite, to get mode 0600 whatever the umask is
    // (rows are redacted, but who did what is still nobody else's business).
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd && errno != EEXIST) {
      return Error::FromErrno(fmt::format("audit log {}: creating", path), errno);
    }
  } else if (S_ISDIR(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("audit log {} is a directory, not a database file", path));
  }

  // SQLite's unix VFS opens its files with O_CLOEXEC (osOpen in os_unix.c).
  int flags = (mode == OpenMode::kReadOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
              SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE;
  std::string filename = path;
  struct statvfs fs {};
  if (mode == OpenMode::kReadOnly && ::statvfs(path.c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY)) {
    // A WAL database needs its -shm file even to be read, and a read-only
    // file system cannot create one ("unable to open database file"). Nothing
    // can change the file there, which is what immutable=1 tells SQLite
    // (https://www.sqlite.org/wal.html#readonly, "immutable" in
    // https://www.sqlite.org/uri.html).
    filename = "file:" + UriEscape(path) + "?immutable=1";
    flags |= SQLITE_OPEN_URI;
  }
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(filename.c_str(), &raw, flags, nullptr);
  std::unique_ptr<AuditLog> log(
      new AuditLog(path, mode, std::unique_ptr<sqlite3, DbDeleter>(raw), std::move(options)));
  if (rc != SQLITE_OK) return log->DbError(rc, "opening");
  sqlite3* db = log->db_.get();
  auto fail = [&](int code, std::string_view what) { return log->DbError(code, what); };

  // A file SQLite could open only for reading (read-only mount, immutable
  // file) is opened read-only without an error; say so now rather than at
  // the first Append.
  if (mode != OpenMode::kReadOnly && sqlite3_db_readonly(db, "main") == 1) {
    return Error::Make(ErrorCode::kReadOnly,
                       fmt::format("audit log {} is read-only (read-only file system or file); "
                                   "events cannot be appended",
                                   path));
  }
  sqlite3_busy_timeout(db, static_cast<int>(log->options_.busy_timeout.count()));
  // The first read of the header: "file is not a database" shows here.
  Header header = TRY(ReadHeader(db, fail));
  // FULL: in WAL mode the WAL is synced at every commit, so an Append that
  // returned survives a power cut (NORMAL would only keep the database
  // consistent, losing the newest rows).
  TRY(Exec(db, "PRAGMA synchronous=FULL", "setting synchronous=FULL", fail));
  if (header.application_id == 0 && header.schema_objects == 0) {
    if (mode == OpenMode::kReadOnly) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("audit log {} is empty (never initialised)", path));
    }
    // journal_mode is persistent and cannot change inside a transaction.
    TRY(Exec(db, "PRAGMA journal_mode=WAL", "switching to WAL", fail));
    // Another process may be initialising the same new file: decide inside
    // the write transaction.
    TRY(Exec(db, "BEGIN IMMEDIATE", "initialising", fail));
    Transaction transaction(db);
    header = TRY(ReadHeader(db, fail));
    if (header.application_id == 0 && header.schema_objects == 0) {
      TRY(Exec(db, kSchemaSql, "creating the schema", fail));
      std::string pragmas = fmt::format("PRAGMA application_id={}; PRAGMA user_version={};",
                                        kApplicationId, kSchemaVersion);
      TRY(Exec(db, pragmas.c_str(), "creating the schema", fail));
      header = TRY(ReadHeader(db, fail));
    }
    TRY(Exec(db, "COMMIT", "initialising", fail));
    transaction.Committed();
  }
  if (header.application_id != kApplicationId) {
    return Error::Make(
        ErrorCode::kCorrupt,
        fmt::format("{} is an SQLite database but not a RalphOS audit log (application_id "
                    "{:#010x}, {} schema objects)",
                    path, static_cast<uint32_t>(header.application_id), header.schema_objects));
  }
  if (header.user_version != kSchemaVersion) {
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("audit log {} has schema version {}; this build reads "
                                   "version {}",
                                   path, header.user_version, kSchemaVersion));
  }
  if (mode != OpenMode::kReadOnly) {
    // Normally set at creation; an older file copied from elsewhere may not be.
    TRY(Exec(db, "PRAGMA journal_mode=WAL", "switching to WAL", fail));
  }
  return log;
}

AuditLog::~AuditLog() = default;

Result<AuditRecord> AuditLog::Append(const AuditEvent& event) {
  std::vector<AuditRecord> rows = TRY(AppendBatch(std::span<const AuditEvent>(&event, 1)));
  return std::move(rows.front());
}

Result<std::vector<AuditRecord>> AuditLog::AppendBatch(std::span<const AuditEvent> events) {
  if (mode_ == OpenMode::kReadOnly) {
    return Error::Make(
        ErrorCode::kReadOnly,
        fmt::format("audit log {} was opened read-only; events cannot be appended", path_));
  }
  std::vector<AuditRecord> rows;
  if (events.empty()) return rows;
  auto now = options_.clock ? options_.clock() : std::chrono::system_clock::now();
  for (size_t i = 0; i < events.size(); ++i) {
    const AuditEvent& event = events[i];
    auto in_batch = [&](Error error) {
      return events.size() == 1 ? std::move(error)
                                : std::move(error).WithContext(fmt::format("events[{}]", i));
    };
    if (auto valid = ValidateEvent(event); !valid) return in_batch(valid.error());
    AuditRecord& row = rows.emplace_back();
    row.actor = event.actor;
    row.type = event.type;
    row.subject = RedactText(event.subject);
    nlohmann::json details =
        event.details.is_null() ? nlohmann::json::object() : RedactJson(event.details);
    // nlohmann's objects are std::maps: keys come out sorted, so the same
    // details always give the same text. Invalid UTF-8 is replaced rather
    // than aborting (exceptions are off).
    row.details = details.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (row.details.size() > kMaxDetailsBytes) {
      return in_batch(Error::Make(ErrorCode::kInvalidArgument,
                                  fmt::format("audit event details are {} bytes; at most {}",
                                              row.details.size(), kMaxDetailsBytes)));
    }
    row.time = FormatAuditTime(now);
  }
  sqlite3* db = db_.get();
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };

  // IMMEDIATE takes the write lock before the tip is read, so no other
  // appender can chain to the same tip; a second appender waits here (busy
  // timeout) and then reads our last row as its tip.
  TRY(Exec(db, "BEGIN IMMEDIATE", "appending: starting a transaction", fail));
  Transaction transaction(db);
  int64_t seq;
  std::string prev_hash;
  {
    Statement tip = TRY(Prepare(db, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                                "appending: reading the tip", fail));
    int rc = sqlite3_step(tip.get());
    if (rc == SQLITE_ROW) {
      seq = sqlite3_column_int64(tip.get(), 0) + 1;
      prev_hash = ColumnText(tip.get(), 1);
    } else if (rc == SQLITE_DONE) {
      seq = 1;
      prev_hash = std::string(kGenesisHash);
    } else {
      return DbError(rc, "appending: reading the tip");
    }
  }
  Statement insert = TRY(Prepare(db,
                                 fmt::format("INSERT INTO audit_log ({}) VALUES "
                                             "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                                             kRowColumns),
                                 "appending: preparing the insert", fail));
  for (AuditRecord& row : rows) {
    row.seq = seq++;
    row.prev_hash = std::move(prev_hash);
    row.hash = TRY_CTX(ComputeRowHash(row), fmt::format("audit log {}: appending", path_));
    prev_hash = row.hash;
    sqlite3_stmt* s = insert.get();
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, row.seq);
    const std::string* texts[] = {&row.time,    &row.actor,     &row.type, &row.subject,
                                  &row.details, &row.prev_hash, &row.hash};
    for (int i = 0; i < 7; ++i) {
      sqlite3_bind_text(s, i + 2, texts[i]->data(), static_cast<int>(texts[i]->size()),
                        SQLITE_STATIC);
    }
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) return DbError(rc, fmt::format("appending row {}", row.seq));
  }
  TRY(Exec(db, "COMMIT", "appending: committing", fail));
  transaction.Committed();
  return rows;
}

Result<VerifyReport> AuditLog::Verify(std::optional<ChainTip> anchor) {
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  // One statement reads one WAL snapshot: rows appended meanwhile by other
  // processes are not half-seen.
  Statement rows =
      TRY(Prepare(db_.get(), fmt::format("SELECT {} FROM audit_log ORDER BY seq", kRowColumns),
                  "verifying", fail));
  ChainVerifier verifier(std::move(anchor));
  while (true) {
    int rc = sqlite3_step(rows.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(rc, "verifying: reading rows");
    bool go_on = TRY_CTX(verifier.Add(ReadRow(rows.get())), "audit log " + path_);
    if (!go_on) break;
  }
  return verifier.Finish();
}

Result<std::vector<AuditRecord>> AuditLog::List(const ListQuery& query) {
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  std::string where = "seq > ?1";
  if (query.type) where += " AND type = ?2";
  if (query.subject) where += " AND subject = ?3";
  std::string sql;
  if (query.limit == 0) {
    sql = fmt::format("SELECT {} FROM audit_log WHERE {} ORDER BY seq", kRowColumns, where);
  } else if (query.from == ListFrom::kOldest) {
    sql = fmt::format("SELECT {} FROM audit_log WHERE {} ORDER BY seq LIMIT {}", kRowColumns, where,
                      query.limit);
  } else {
    sql = fmt::format(
        "SELECT {0} FROM (SELECT {0} FROM audit_log WHERE {1} ORDER BY seq DESC LIMIT {2}) "
        "ORDER BY seq",
        kRowColumns, where, query.limit);
  }
  Statement statement = TRY(Prepare(db_.get(), sql, "listing", fail));
  sqlite3_bind_int64(statement.get(), 1, query.after_seq);
  if (query.type) {
    sqlite3_bind_text(statement.get(), 2, query.type->data(), static_cast<int>(query.type->size()),
                      SQLITE_TRANSIENT);
  }
  if (query.subject) {
    sqlite3_bind_text(statement.get(), 3, query.subject->data(),
                      static_cast<int>(query.subject->size()), SQLITE_TRANSIENT);
  }
  std::vector<AuditRecord> records;
  while (true) {
    int rc = sqlite3_step(statement.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(rc, "listing");
    records.push_back(ReadRow(statement.get()));
  }
  return records;
}

Result<ChainTip> AuditLog::Tip() {
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  Statement tip =
      TRY(Prepare(db_.get(), "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                  "reading the tip", fail));
  int rc = sqlite3_step(tip.get());
  if (rc == SQLITE_DONE) return ChainTip{};
  if (rc != SQLITE_ROW) return DbError(rc, "reading the tip");
  return ChainTip{sqlite3_column_int64(tip.get(), 0), ColumnText(tip.get(), 1)};
}

std::string FormatAuditTime(std::chrono::system_clock::time_point when) {
  auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count();
  time_t seconds = static_cast<time_t>(millis / 1000);
  int64_t fraction = millis % 1000;
  if (fraction < 0) {
    fraction += 1000;
    --seconds;
  }
  struct tm utc {};
  gmtime_r(&seconds, &utc);
  char text[32];
  strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:03}Z", text, fraction);
}

nlohmann::json RecordToJson(const AuditRecord& record) {
  nlohmann::json out = {{"seq", record.seq},         {"time", record.time},
                        {"actor", record.actor},     {"type", record.type},
                        {"subject", record.subject}, {"prev_hash", record.prev_hash},
                        {"hash", record.hash}};
  nlohmann::json details = nlohmann::json::parse(record.details, nullptr, false);
  if (details.is_discarded()) {
    out["details"] = nullptr;
    out["details_text"] = record.details;
  } else {
    out["details"] = std::move(details);
  }
  return out;
}

}  // namespace ralph::audit
