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
#include "services/audit/canonical_json.h"
#include "services/audit/redact.h"
#include "services/sqlite/sqlite_util.h"

namespace ralph::audit {
namespace {

using sqlite::ColumnText;
using sqlite::Exec;
using sqlite::Prepare;
using sqlite::Statement;

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

// The queries by subject (one job's records), type and time range. Each
// also orders by seq within its key, so a filtered, limited List walks the
// index alone. They cost appends ~3 index updates per row (docs/audit.md).
constexpr const char* kIndexSql = R"sql(
CREATE INDEX IF NOT EXISTS audit_log_by_subject ON audit_log(subject, seq);
CREATE INDEX IF NOT EXISTS audit_log_by_type ON audit_log(type, seq);
CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log(time);
)sql";

constexpr const char* kRowColumns = "seq, time, actor, type, subject, details, prev_hash, hash";
constexpr std::string_view kInsertSql =
    "INSERT INTO audit_log (seq, time, actor, type, subject, details, prev_hash, hash) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

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

struct ResetOnExit {
  sqlite3_stmt* statement;
  ~ResetOnExit() {
    sqlite3_reset(statement);
    sqlite3_clear_bindings(statement);
  }
};

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
  // NOMUTEX: an AuditLog is used by one thread at a time (its kept
  // statements are not shareable either), so SQLite's per-call connection
  // mutex would only cost time.
  int flags = (mode == OpenMode::kReadOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
              SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE | SQLITE_OPEN_NOMUTEX;
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
  sqlite::Header header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
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
    TRY(sqlite::EnableWal(db, log->options_.busy_timeout, "switching to WAL", fail));
    // Another process may be initialising the same new file: decide inside
    // the write transaction.
    sqlite::Transaction transaction = TRY(
        sqlite::Transaction::Begin(db, sqlite::TransactionKind::kImmediate, "initialising", fail));
    header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
    if (header.application_id == 0 && header.schema_objects == 0) {
      TRY(Exec(db, kSchemaSql, "creating the schema", fail));
      std::string pragmas = fmt::format("PRAGMA application_id={}; PRAGMA user_version={};",
                                        kApplicationId, kSchemaVersion);
      TRY(Exec(db, pragmas.c_str(), "creating the schema", fail));
      header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
    }
    TRY(transaction.Commit("initialising", fail));
  }
  TRY(sqlite::CheckHeader(header, path, "audit log", kApplicationId, kSchemaVersion));
  if (mode != OpenMode::kReadOnly) {
    // Normally set at creation; an older file copied from elsewhere may not be.
    TRY(sqlite::EnableWal(db, log->options_.busy_timeout, "switching to WAL", fail));
    // Indexes are not part of the schema version: a build without them reads
    // the file the same, and a log made before them gets them here (once;
    // minutes for ten million rows). A read-only handle cannot add them:
    // its queries are slower on such a file, not different.
    TRY(Exec(db, kIndexSql, "creating the indexes", fail));
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
  rows.reserve(events.size());
  // Everything that can refuse an event runs before the transaction: a bad
  // event costs no lock and leaves nothing behind.
  for (size_t i = 0; i < events.size(); ++i) {
    const AuditEvent& event = events[i];
    // One event alone keeps Append's messages as they were.
    auto in_batch = [&](Error error) {
      return events.size() == 1 ? std::move(error)
                                : std::move(error).WithContext(fmt::format("events[{}]", i));
    };
    if (Result<void> valid = ValidateEvent(event); !valid) return in_batch(valid.error());
    AuditRecord& row = rows.emplace_back();
    row.actor = event.actor;
    row.type = event.type;
    row.subject = RedactText(event.subject);
    // The same details always give the same text (canonical_json.h). Most
    // details hold no secret and are written as they are, without a
    // redacted copy.
    if (event.details.is_null()) {
      row.details = CanonicalJson(nlohmann::json::object());
    } else if (NeedsRedaction(event.details)) {
      row.details = CanonicalJson(RedactJson(event.details));
    } else {
      row.details = CanonicalJson(event.details);
    }
    if (row.details.size() > kMaxDetailsBytes) {
      return in_batch(Error::Make(ErrorCode::kInvalidArgument,
                                  fmt::format("audit event details are {} bytes; at most {}",
                                              row.details.size(), kMaxDetailsBytes)));
    }
  }
  std::string time =
      FormatAuditTime(options_.clock ? options_.clock() : std::chrono::system_clock::now());
  for (AuditRecord& row : rows) row.time = time;

  sqlite3* db = db_.get();
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  // IMMEDIATE takes the write lock before the tip is read, so no other
  // appender can chain to the same tip; a second appender waits here (busy
  // timeout) and then reads our rows' tip. One COMMIT makes the whole batch
  // durable at once (one WAL sync), or none of it.
  sqlite::Transaction transaction = TRY(sqlite::Transaction::Begin(
      db, sqlite::TransactionKind::kImmediate, "appending: starting a transaction", fail));
  ChainTip tip = TRY(Tip());
  int64_t seq = tip.seq;
  std::string prev_hash = std::move(tip.hash);
  sqlite3_stmt* s = TRY(Prepared(insert_, kInsertSql, "appending: preparing the insert"));
  for (AuditRecord& row : rows) {
    row.seq = ++seq;
    row.prev_hash = std::move(prev_hash);
    row.hash = TRY_CTX(ComputeRowHash(row), fmt::format("audit log {}: appending", path_));
    prev_hash = row.hash;
    sqlite3_bind_int64(s, 1, row.seq);
    const std::string* texts[] = {&row.time,    &row.actor,     &row.type, &row.subject,
                                  &row.details, &row.prev_hash, &row.hash};
    for (int i = 0; i < 7; ++i) {
      sqlite3_bind_text(s, i + 2, texts[i]->data(), static_cast<int>(texts[i]->size()),
                        SQLITE_STATIC);
    }
    // The statement is kept: reset (and unbound from this row's strings)
    // whatever happens, after the error below is read.
    ResetOnExit reset{s};
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) return DbError(rc, fmt::format("appending row {}", row.seq));
  }
  TRY(transaction.Commit("appending: committing", fail));
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
  // No seq term without after_seq: with one, SQLite walks every row in seq
  // order instead of the time index for a range (an hour of a year's log:
  // 90 ms on 200,000 rows instead of 2).
  std::string where = query.after_seq > 0 ? "seq > ?1" : "1";
  if (query.type) where += " AND type = ?2";
  if (query.subject) where += " AND subject = ?3";
  // The stored text compares as the time it stands for: fixed width, UTC.
  if (query.since) where += " AND time >= ?4";
  if (query.until) where += " AND time < ?5";
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
  sqlite3_stmt* s = statement.get();
  if (query.after_seq > 0) sqlite3_bind_int64(s, 1, query.after_seq);
  const std::optional<std::string>* texts[] = {&query.type, &query.subject, &query.since,
                                               &query.until};
  for (int i = 0; i < 4; ++i) {
    if (*texts[i]) sqlite::BindText(s, i + 2, **texts[i]);
  }
  std::vector<AuditRecord> records;
  while (true) {
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(rc, "listing");
    records.push_back(ReadRow(s));
  }
  return records;
}

void AuditLog::StatementDeleter::operator()(sqlite3_stmt* statement) const {
  sqlite3_finalize(statement);
}

Result<sqlite3_stmt*> AuditLog::Prepared(std::unique_ptr<sqlite3_stmt, StatementDeleter>& slot,
                                         std::string_view sql, std::string_view what) {
  if (!slot) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    slot.reset(raw);
    if (rc != SQLITE_OK) {
      slot.reset();
      return DbError(rc, what);
    }
  }
  return slot.get();
}

Result<ChainTip> AuditLog::Tip() {
  sqlite3_stmt* tip = TRY(Prepared(
      tip_, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", "reading the tip"));
  int rc = sqlite3_step(tip);
  ChainTip out;
  if (rc == SQLITE_ROW) out = ChainTip{sqlite3_column_int64(tip, 0), ColumnText(tip, 1)};
  // Reset at once: a statement left stepped would hold its read snapshot.
  sqlite3_reset(tip);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return DbError(rc, "reading the tip");
  return out;
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

Result<std::string> ParseAuditTime(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("'{}' is not a UTC time like 2026-11-22T16:40:01.123Z ({})", text, why));
  };
  // YYYY-MM-DDTHH:MM:SS, then .mmm or nothing, then Z.
  constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:dd";
  if (text.size() != kShape.size() + 1 && text.size() != kShape.size() + 5) {
    return bad("wrong length");
  }
  std::string_view shape =
      text.size() == kShape.size() + 1 ? "dddd-dd-ddTdd:dd:ddZ" : "dddd-dd-ddTdd:dd:dd.dddZ";
  for (size_t i = 0; i < shape.size(); ++i) {
    bool digit = text[i] >= '0' && text[i] <= '9';
    if (shape[i] == 'd' ? !digit : text[i] != shape[i]) {
      return bad(fmt::format("unexpected '{}' at offset {}", text[i], i));
    }
  }
  auto number = [&](size_t at, size_t width) {
    int n = 0;
    for (size_t i = at; i < at + width; ++i) n = n * 10 + (text[i] - '0');
    return n;
  };
  struct tm utc {};
  utc.tm_year = number(0, 4) - 1900;
  utc.tm_mon = number(5, 2) - 1;
  utc.tm_mday = number(8, 2);
  utc.tm_hour = number(11, 2);
  utc.tm_min = number(14, 2);
  utc.tm_sec = number(17, 2);
  int millis = text.size() == kShape.size() + 5 ? number(20, 3) : 0;
  time_t seconds = timegm(&utc);
  auto when = std::chrono::system_clock::from_time_t(seconds) + std::chrono::milliseconds(millis);
  std::string normal = FormatAuditTime(when);
  // timegm normalises 2026-02-30 to March 2nd: a field out of range shows
  // as a different round trip.
  if (normal.compare(0, kShape.size(), text.substr(0, kShape.size())) != 0) {
    return bad("a field is out of range");
  }
  return normal;
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
