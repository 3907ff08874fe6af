#include "services/ralphd/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>

#include <fmt/format.h>

#include "services/audit/audit_log.h"
#include "services/ralphd/policy.h"
#include "services/sqlite/sqlite_util.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS policy_versions(
  version INTEGER PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL,
  comment TEXT NOT NULL, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
  id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL, profile TEXT NOT NULL,
  request TEXT NOT NULL, policy_version INTEGER NOT NULL, created TEXT NOT NULL,
  started TEXT NOT NULL, finished TEXT NOT NULL, termination TEXT NOT NULL,
  exit_code INTEGER NOT NULL, signal INTEGER NOT NULL, usage TEXT NOT NULL,
  reason TEXT NOT NULL, workspace_uploaded INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS output(
  job INTEGER NOT NULL, stream INTEGER NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY(job, stream, offset));
CREATE TABLE IF NOT EXISTS output_end(
  job INTEGER NOT NULL, stream INTEGER NOT NULL, end_offset INTEGER NOT NULL,
  kept INTEGER NOT NULL, PRIMARY KEY(job, stream));
CREATE TABLE IF NOT EXISTS files(
  job INTEGER NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
  sha256 TEXT NOT NULL, PRIMARY KEY(job, path));
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, kind TEXT NOT NULL,
  job INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job, seq);
)sql";

// Loop mode's table: only ever added (CREATE ... IF NOT EXISTS), so a
// database of an older ralphd gains it when opened and loses nothing.
constexpr const char* kLoopSchema = R"sql(
CREATE TABLE IF NOT EXISTS loop_iterations(
  job INTEGER NOT NULL, iteration INTEGER NOT NULL, started TEXT NOT NULL,
  finished TEXT NOT NULL, termination TEXT NOT NULL, exit_code INTEGER NOT NULL,
  signal INTEGER NOT NULL, error TEXT NOT NULL, commit_id TEXT NOT NULL,
  changed INTEGER NOT NULL, usage TEXT NOT NULL, stdout_start INTEGER NOT NULL,
  stdout_end INTEGER NOT NULL, stop TEXT NOT NULL, PRIMARY KEY(job, iteration));
)sql";

using sqlite::Statement;
constexpr auto Text = sqlite::ColumnText;

void Bind(sqlite3_stmt* statement, int index, std::string_view text) {
  sqlite::BindText(statement, index, text);
}
void Bind(sqlite3_stmt* statement, int index, int64_t n) {
  sqlite3_bind_int64(statement, index, n);
}

json ParseStored(const std::string& text) {
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return value.is_discarded() ? json::object() : value;
}

constexpr const char* kJobColumns =
    "id, state, profile, request, policy_version, created, started, finished, termination, "
    "exit_code, signal, usage, reason, workspace_uploaded";

JobRecord ReadJob(sqlite3_stmt* s) {
  JobRecord job;
  job.id = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
  job.state = ParseJobState(Text(s, 1)).value_or(JobState::kLost);
  job.profile = Text(s, 2);
  job.request = ParseStored(Text(s, 3));
  job.policy_version = static_cast<uint64_t>(sqlite3_column_int64(s, 4));
  job.created = Text(s, 5);
  job.started = Text(s, 6);
  job.finished = Text(s, 7);
  job.termination = Text(s, 8);
  job.exit_code = sqlite3_column_int(s, 9);
  job.signal = sqlite3_column_int(s, 10);
  job.usage = ParseStored(Text(s, 11));
  job.reason = Text(s, 12);
  job.workspace_uploaded = sqlite3_column_int(s, 13) != 0;
  return job;
}

PolicyVersion ReadPolicy(sqlite3_stmt* s) {
  return {.version = static_cast<uint64_t>(sqlite3_column_int64(s, 0)),
          .time = Text(s, 1),
          .actor = Text(s, 2),
          .comment = Text(s, 3),
          .document = Text(s, 4)};
}

}  // namespace

std::string NowText() {
  return audit::FormatAuditTime(std::chrono::system_clock::now());
}

json Event::ToJson() const {
  json out = {{"seq", seq}, {"time", time}, {"kind", kind}, {"body", body}};
  if (job != 0) out["job"] = job;
  return out;
}

Error Store::DbError(std::string_view what) const {
  return Error::Make(ErrorCode::kIo,
                     fmt::format("ralphd store: {}: {}", what, sqlite3_errmsg(db_)));
}

Result<void> Store::Exec(const char* sql, std::string_view what) {
  return sqlite::Exec(db_, sql, what, [this](int, std::string_view w) { return DbError(w); });
}

Result<std::unique_ptr<Store>> Store::Open(const std::string& path, StoreOptions options) {
  // Created private before SQLite opens it.
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Error::FromErrno(fmt::format("ralphd store {}", path), errno);
  ::close(fd);
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr);
  std::unique_ptr<Store> store(new Store(db, options));
  if (rc != SQLITE_OK) return store->DbError(fmt::format("opening {}", path));
  constexpr std::chrono::milliseconds kBusyTimeout{5000};
  sqlite3_busy_timeout(db, static_cast<int>(kBusyTimeout.count()));
  TRY(sqlite::EnableWal(db, kBusyTimeout, "setting WAL",
                        [&](int, std::string_view w) { return store->DbError(w); }));
  TRY(store->Exec("PRAGMA synchronous=NORMAL", "setting synchronous"));
  TRY(store->Exec(kSchema, "creating the schema"));
  TRY(store->Exec(kLoopSchema, "creating the loop iterations' table"));
  Result<PolicyVersion> active = store->ActivePolicy();
  if (!active && active.error().code() == ErrorCode::kNotFound) {
    TRY(store->AddPolicy(std::string(DefaultPolicyDocument()), "the default policy", "ralphd"));
  } else if (!active) {
    return active.error();
  }
  return store;
}

Store::~Store() {
  for (auto& [sql, statement] : statements_) sqlite3_finalize(statement);
  sqlite3_close_v2(db_);
}

namespace {

// A cached statement for one use: reset, its bindings cleared, when the
// use ends, so it holds no read snapshot and keeps no value past it.
class StatementUse {
 public:
  explicit StatementUse(sqlite3_stmt* statement) : statement_(statement) {}
  StatementUse(const StatementUse&) = delete;
  StatementUse& operator=(const StatementUse&) = delete;
  ~StatementUse() {
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }
  sqlite3_stmt* get() const { return statement_; }

 private:
  sqlite3_stmt* statement_;
};

}  // namespace

Result<sqlite3_stmt*> Store::Cached(std::string_view sql, std::string_view what) {
  auto it = statements_.find(sql);
  if (it != statements_.end()) return it->second;
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                         &raw, nullptr) != SQLITE_OK) {
    sqlite3_finalize(raw);
    return DbError(what);
  }
  statements_.emplace(std::string(sql), raw);
  return raw;
}

// Declares `name`, the store's prepared statement of `sql` for this use
// (prepared once per store: the daemon's queries skip SQLite's parser);
// returns DbError(what) when it cannot be prepared. No two uses of one SQL
// text overlap: no store method runs its own query inside another's.
#define PREPARE(name, sql, what) StatementUse name(TRY(Cached(sql, what)))

Result<PolicyVersion> Store::ActivePolicy() {
  PREPARE(s,
          "SELECT version, time, actor, comment, document FROM policy_versions "
          "ORDER BY version DESC LIMIT 1",
          "reading the active policy");
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return Error::Make(ErrorCode::kNotFound, "no policy stored");
  if (rc != SQLITE_ROW) return DbError("reading the active policy");
  return ReadPolicy(s.get());
}

Result<PolicyVersion> Store::Policy(uint64_t version) {
  PREPARE(s,
          "SELECT version, time, actor, comment, document FROM policy_versions "
          "WHERE version = ?1",
          "reading a policy version");
  Bind(s.get(), 1, static_cast<int64_t>(version));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("policy version {}: no such version", version));
  }
  if (rc != SQLITE_ROW) return DbError("reading a policy version");
  return ReadPolicy(s.get());
}

Result<PolicyVersion> Store::AddPolicy(const std::string& document, const std::string& comment,
                                       const std::string& actor) {
  PREPARE(s, "INSERT INTO policy_versions(time, actor, comment, document) VALUES(?1, ?2, ?3, ?4)",
          "adding a policy version");
  PolicyVersion version{
      .time = NowText(), .actor = actor, .comment = comment, .document = document};
  Bind(s.get(), 1, version.time);
  Bind(s.get(), 2, actor);
  Bind(s.get(), 3, comment);
  Bind(s.get(), 4, document);
  if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError("adding a policy version");
  version.version = static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
  return version;
}

Result<std::vector<PolicyVersion>> Store::PolicyHistory(uint64_t limit) {
  PREPARE(s,
          "SELECT version, time, actor, comment, document FROM policy_versions "
          "ORDER BY version DESC LIMIT ?1",
          "listing policy versions");
  Bind(s.get(), 1, static_cast<int64_t>(limit));
  std::vector<PolicyVersion> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(ReadPolicy(s.get()));
  if (rc != SQLITE_DONE) return DbError("listing policy versions");
  return out;
}

namespace {
void BindJob(sqlite3_stmt* s, const JobRecord& job) {
  Bind(s, 1, JobStateName(job.state));
  Bind(s, 2, job.profile);
  Bind(s, 3, DumpJson(job.request));
  Bind(s, 4, static_cast<int64_t>(job.policy_version));
  Bind(s, 5, job.created);
  Bind(s, 6, job.started);
  Bind(s, 7, job.finished);
  Bind(s, 8, job.termination);
  Bind(s, 9, int64_t{job.exit_code});
  Bind(s, 10, int64_t{job.signal});
  Bind(s, 11, DumpJson(job.usage));
  Bind(s, 12, job.reason);
  Bind(s, 13, int64_t{job.workspace_uploaded ? 1 : 0});
}
}  // namespace

Result<uint64_t> Store::InsertJob(const JobRecord& job) {
  PREPARE(s,
          "INSERT INTO jobs(state, profile, request, policy_version, created, started, "
          "finished, termination, exit_code, signal, usage, reason, workspace_uploaded) "
          "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
          "adding a job");
  BindJob(s.get(), job);
  if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError("adding a job");
  return static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
}

Result<void> Store::UpdateJob(const JobRecord& job) {
  PREPARE(s,
          "UPDATE jobs SET state = ?1, profile = ?2, request = ?3, policy_version = ?4, "
          "created = ?5, started = ?6, finished = ?7, termination = ?8, exit_code = ?9, "
          "signal = ?10, usage = ?11, reason = ?12, workspace_uploaded = ?13 WHERE id = ?14",
          "updating a job");
  BindJob(s.get(), job);
  Bind(s.get(), 14, static_cast<int64_t>(job.id));
  if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError(fmt::format("updating job {}", job.id));
  return {};
}

Result<JobRecord> Store::Job(uint64_t id) {
  std::string sql = fmt::format("SELECT {} FROM jobs WHERE id = ?1", kJobColumns);
  PREPARE(s, sql.c_str(), "reading a job");
  Bind(s.get(), 1, static_cast<int64_t>(id));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE)
    return Error::Make(ErrorCode::kNotFound, fmt::format("job {}: no such job", id));
  if (rc != SQLITE_ROW) return DbError(fmt::format("reading job {}", id));
  return ReadJob(s.get());
}

Result<std::vector<JobRecord>> Store::Jobs(std::optional<JobState> state, uint64_t limit) {
  std::string sql = fmt::format(
      "SELECT {} FROM jobs WHERE ?1 = '' OR state = ?1 ORDER BY id DESC LIMIT ?2", kJobColumns);
  PREPARE(s, sql.c_str(), "listing jobs");
  Bind(s.get(), 1, state ? JobStateName(*state) : std::string_view());
  Bind(s.get(), 2, static_cast<int64_t>(limit));
  std::vector<JobRecord> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(ReadJob(s.get()));
  if (rc != SQLITE_DONE) return DbError("listing jobs");
  return out;
}

Result<std::vector<JobRecord>> Store::JobsIn(JobState state) {
  std::string sql = fmt::format("SELECT {} FROM jobs WHERE state = ?1 ORDER BY id", kJobColumns);
  PREPARE(s, sql.c_str(), "listing jobs");
  Bind(s.get(), 1, JobStateName(state));
  std::vector<JobRecord> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(ReadJob(s.get()));
  if (rc != SQLITE_DONE) return DbError("listing jobs");
  return out;
}

Result<Store::Summary> Store::Summarize() {
  // One statement: one read transaction (each costs SQLite's WAL locks),
  // and the three figures are of one moment.
  PREPARE(s,
          "SELECT 0, '', COALESCE(MAX(version), 0) FROM policy_versions "
          "UNION ALL SELECT 1, '', COALESCE(MAX(seq), 0) FROM events "
          "UNION ALL SELECT 2, state, COUNT(*) FROM jobs GROUP BY state",
          "summarizing the store");
  Summary out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    uint64_t value = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 2));
    switch (sqlite3_column_int(s.get(), 0)) {
      case 0: out.policy_version = value; break;
      case 1: out.last_event_seq = value; break;
      default:
        // A state this ralphd does not know counts as lost, as ReadJob reads it.
        out.job_counts[ParseJobState(Text(s.get(), 1)).value_or(JobState::kLost)] += value;
    }
  }
  if (rc != SQLITE_DONE) return DbError("summarizing the store");
  return out;
}

Result<uint64_t> Store::OutputEnd(uint64_t job, OutputStream stream) {
  PREPARE(s, "SELECT end_offset FROM output_end WHERE job = ?1 AND stream = ?2",
          "reading the output's end");
  Bind(s.get(), 1, static_cast<int64_t>(job));
  Bind(s.get(), 2, static_cast<int64_t>(stream));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return uint64_t{0};
  if (rc != SQLITE_ROW) return DbError("reading the output's end");
  return static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
}

Result<void> Store::AppendOutput(uint64_t job, OutputStream stream, std::string_view data) {
  if (data.empty()) return {};
  auto fail = [this](int, std::string_view w) { return DbError(w); };
  sqlite::Transaction transaction = TRY(sqlite::Transaction::Begin(
      db_, sqlite::TransactionKind::kImmediate, "appending output", fail));
  int64_t kept = 0;
  int64_t end = 0;
  {
    PREPARE(s, "SELECT end_offset, kept FROM output_end WHERE job = ?1 AND stream = ?2",
            "appending output");
    Bind(s.get(), 1, static_cast<int64_t>(job));
    Bind(s.get(), 2, static_cast<int64_t>(stream));
    if (sqlite3_step(s.get()) == SQLITE_ROW) {
      end = sqlite3_column_int64(s.get(), 0);
      kept = sqlite3_column_int64(s.get(), 1);
    }
  }
  {
    PREPARE(s, "INSERT INTO output(job, stream, offset, data) VALUES(?1, ?2, ?3, ?4)",
            "appending output");
    Bind(s.get(), 1, static_cast<int64_t>(job));
    Bind(s.get(), 2, static_cast<int64_t>(stream));
    Bind(s.get(), 3, end);
    sqlite3_bind_blob(s.get(), 4, data.data(), static_cast<int>(data.size()), SQLITE_TRANSIENT);
    if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError("appending output");
  }
  end += static_cast<int64_t>(data.size());
  kept += static_cast<int64_t>(data.size());
  // Rotation: drop the oldest chunks until the kept bytes fit the limit.
  while (static_cast<uint64_t>(kept) > options_.output_limit_bytes) {
    PREPARE(s,
            "SELECT offset, length(data) FROM output WHERE job = ?1 AND stream = ?2 "
            "ORDER BY offset LIMIT 1",
            "rotating output");
    Bind(s.get(), 1, static_cast<int64_t>(job));
    Bind(s.get(), 2, static_cast<int64_t>(stream));
    if (sqlite3_step(s.get()) != SQLITE_ROW) break;
    int64_t offset = sqlite3_column_int64(s.get(), 0);
    int64_t length = sqlite3_column_int64(s.get(), 1);
    PREPARE(d, "DELETE FROM output WHERE job = ?1 AND stream = ?2 AND offset = ?3",
            "rotating output");
    Bind(d.get(), 1, static_cast<int64_t>(job));
    Bind(d.get(), 2, static_cast<int64_t>(stream));
    Bind(d.get(), 3, offset);
    if (sqlite3_step(d.get()) != SQLITE_DONE) return DbError("rotating output");
    kept -= length;
  }
  {
    PREPARE(s,
            "INSERT OR REPLACE INTO output_end(job, stream, end_offset, kept) "
            "VALUES(?1, ?2, ?3, ?4)",
            "appending output");
    Bind(s.get(), 1, static_cast<int64_t>(job));
    Bind(s.get(), 2, static_cast<int64_t>(stream));
    Bind(s.get(), 3, end);
    Bind(s.get(), 4, kept);
    if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError("appending output");
  }
  TRY(transaction.Commit("appending output", fail));
  return {};
}

Result<OutputSlice> Store::ReadOutput(uint64_t job, OutputStream stream, uint64_t offset,
                                      uint64_t limit) {
  OutputSlice slice;
  slice.end = TRY(OutputEnd(job, stream));
  // The chunks that hold bytes at or after `offset`, in order.
  PREPARE(s,
          "SELECT offset, data FROM output WHERE job = ?1 AND stream = ?2 AND "
          "offset + length(data) > ?3 ORDER BY offset",
          "reading output");
  Bind(s.get(), 1, static_cast<int64_t>(job));
  Bind(s.get(), 2, static_cast<int64_t>(stream));
  Bind(s.get(), 3, static_cast<int64_t>(offset));
  bool first = true;
  slice.offset = std::min(offset, slice.end);
  int rc;
  while (slice.data.size() < limit && (rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    uint64_t chunk_offset = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
    const char* bytes = static_cast<const char*>(sqlite3_column_blob(s.get(), 1));
    uint64_t size = static_cast<uint64_t>(sqlite3_column_bytes(s.get(), 1));
    uint64_t skip = 0;
    if (first) {
      // Asked below the oldest kept byte: start there and say so.
      if (chunk_offset > offset) {
        slice.offset = chunk_offset;
        slice.dropped_before = chunk_offset;
      } else {
        slice.offset = offset;
        skip = offset - chunk_offset;
      }
      first = false;
    }
    uint64_t take = std::min(size - skip, limit - slice.data.size());
    slice.data.append(bytes + skip, take);
  }
  return slice;
}

Result<void> Store::RecordFiles(uint64_t job, const std::vector<FileRecord>& files) {
  auto fail = [this](int, std::string_view w) { return DbError(w); };
  sqlite::Transaction transaction = TRY(sqlite::Transaction::Begin(
      db_, sqlite::TransactionKind::kImmediate, "recording files", fail));
  PREPARE(s,
          "INSERT OR REPLACE INTO files(job, path, kind, size, sha256) "
          "VALUES(?1, ?2, ?3, ?4, ?5)",
          "recording files");
  for (const FileRecord& file : files) {
    sqlite3_reset(s.get());
    Bind(s.get(), 1, static_cast<int64_t>(job));
    Bind(s.get(), 2, file.path);
    Bind(s.get(), 3, file.kind);
    Bind(s.get(), 4, static_cast<int64_t>(file.size));
    Bind(s.get(), 5, file.sha256);
    if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError("recording files");
  }
  TRY(transaction.Commit("recording files", fail));
  return {};
}

Result<std::vector<FileRecord>> Store::Files(uint64_t job) {
  PREPARE(s, "SELECT path, kind, size, sha256 FROM files WHERE job = ?1 ORDER BY path",
          "listing files");
  Bind(s.get(), 1, static_cast<int64_t>(job));
  std::vector<FileRecord> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    out.push_back({.path = Text(s.get(), 0),
                   .kind = Text(s.get(), 1),
                   .size = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 2)),
                   .sha256 = Text(s.get(), 3)});
  }
  if (rc != SQLITE_DONE) return DbError("listing files");
  return out;
}

Result<Event> Store::AppendEvent(std::string kind, uint64_t job, nlohmann::json body) {
  Event event{.time = NowText(), .kind = std::move(kind), .job = job, .body = std::move(body)};
  {
    PREPARE(s, "INSERT INTO events(time, kind, job, body) VALUES(?1, ?2, ?3, ?4)",
            "appending an event");
    Bind(s.get(), 1, event.time);
    Bind(s.get(), 2, event.kind);
    Bind(s.get(), 3, static_cast<int64_t>(job));
    Bind(s.get(), 4, DumpJson(event.body));
    if (sqlite3_step(s.get()) != SQLITE_DONE) return DbError("appending an event");
  }
  event.seq = static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
  // Trimmed in batches: one DELETE per 1% of the bound.
  if (++events_since_trim_ >= std::max<uint64_t>(1, options_.event_limit / 100) &&
      event.seq > options_.event_limit) {
    events_since_trim_ = 0;
    PREPARE(d, "DELETE FROM events WHERE seq <= ?1", "trimming events");
    Bind(d.get(), 1, static_cast<int64_t>(event.seq - options_.event_limit));
    if (sqlite3_step(d.get()) != SQLITE_DONE) return DbError("trimming events");
  }
  return event;
}

Result<std::vector<Event>> Store::EventsAfter(uint64_t after, std::optional<uint64_t> job,
                                              uint64_t limit) {
  PREPARE(s,
          "SELECT seq, time, kind, job, body FROM events WHERE seq > ?1 AND "
          "(?2 = 0 OR job = ?2) ORDER BY seq LIMIT ?3",
          "reading events");
  Bind(s.get(), 1, static_cast<int64_t>(after));
  Bind(s.get(), 2, static_cast<int64_t>(job.value_or(0)));
  Bind(s.get(), 3, static_cast<int64_t>(limit));
  std::vector<Event> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    out.push_back({.seq = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0)),
                   .time = Text(s.get(), 1),
                   .kind = Text(s.get(), 2),
                   .job = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 3)),
                   .body = ParseStored(Text(s.get(), 4))});
  }
  if (rc != SQLITE_DONE) return DbError("reading events");
  return out;
}

Result<uint64_t> Store::LastEventSeq() {
  PREPARE(s, "SELECT COALESCE(MAX(seq), 0) FROM events", "reading the last event");
  if (sqlite3_step(s.get()) != SQLITE_ROW) return DbError("reading the last event");
  return static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0));
}

json IterationRecord::ToJson() const {
  json out = {
      {"iteration", iteration},
      {"started", started},
      {"finished", finished},
      {"changed", changed},
      {"usage", usage},
      {"transcript", {{"stream", "stdout"}, {"offset", stdout_start}, {"end", stdout_end}}}};
  if (!termination.empty()) {
    out["termination"] = termination;
    out["exit_code"] = exit_code;
    out["signal"] = signal;
  }
  if (!error.empty()) out["error"] = error;
  out["commit"] = commit.empty() ? json() : json(commit);
  if (!stop.empty()) out["stop"] = stop;
  return out;
}

Result<void> Store::RecordIteration(const IterationRecord& it) {
  PREPARE(s,
          "INSERT OR REPLACE INTO loop_iterations(job, iteration, started, finished, "
          "termination, exit_code, signal, error, commit_id, changed, usage, stdout_start, "
          "stdout_end, stop) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
          "recording an iteration");
  Bind(s.get(), 1, static_cast<int64_t>(it.job));
  Bind(s.get(), 2, static_cast<int64_t>(it.iteration));
  Bind(s.get(), 3, it.started);
  Bind(s.get(), 4, it.finished);
  Bind(s.get(), 5, it.termination);
  Bind(s.get(), 6, int64_t{it.exit_code});
  Bind(s.get(), 7, int64_t{it.signal});
  Bind(s.get(), 8, it.error);
  Bind(s.get(), 9, it.commit);
  Bind(s.get(), 10, int64_t{it.changed ? 1 : 0});
  Bind(s.get(), 11, DumpJson(it.usage));
  Bind(s.get(), 12, static_cast<int64_t>(it.stdout_start));
  Bind(s.get(), 13, static_cast<int64_t>(it.stdout_end));
  Bind(s.get(), 14, it.stop);
  if (sqlite3_step(s.get()) != SQLITE_DONE) {
    return DbError(fmt::format("recording iteration {} of job {}", it.iteration, it.job));
  }
  return {};
}

Result<std::vector<IterationRecord>> Store::Iterations(uint64_t job) {
  PREPARE(s,
          "SELECT iteration, started, finished, termination, exit_code, signal, error, "
          "commit_id, changed, usage, stdout_start, stdout_end, stop FROM loop_iterations "
          "WHERE job = ?1 ORDER BY iteration",
          "listing iterations");
  Bind(s.get(), 1, static_cast<int64_t>(job));
  std::vector<IterationRecord> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    sqlite3_stmt* r = s.get();
    out.push_back({.job = job,
                   .iteration = static_cast<uint64_t>(sqlite3_column_int64(r, 0)),
                   .started = Text(r, 1),
                   .finished = Text(r, 2),
                   .termination = Text(r, 3),
                   .exit_code = sqlite3_column_int(r, 4),
                   .signal = sqlite3_column_int(r, 5),
                   .error = Text(r, 6),
                   .commit = Text(r, 7),
                   .changed = sqlite3_column_int(r, 8) != 0,
                   .usage = ParseStored(Text(r, 9)),
                   .stdout_start = static_cast<uint64_t>(sqlite3_column_int64(r, 10)),
                   .stdout_end = static_cast<uint64_t>(sqlite3_column_int64(r, 11)),
                   .stop = Text(r, 12)});
  }
  if (rc != SQLITE_DONE) return DbError("listing iterations");
  return out;
}

}  // namespace ralph::ralphd
