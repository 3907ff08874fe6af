// The audit log: an append-only, hash-chained record of security-relevant
// events (downgrade overrides, installs, rollbacks, policy changes), kept in
// SQLite on VAR (docs/audit.md).
//
//   auto log = TRY(audit::AuditLog::Open(audit::kDefaultAuditLogPath,
//                                        audit::OpenMode::kCreateIfMissing));
//   TRY(log->Append({.actor = "ota", .type = "downgrade-override",
//                    .subject = "slot B", .details = {{"version", "2.5.0"}}}));
//   audit::VerifyReport report = TRY(log->Verify());
//   if (!report.ok()) ... report.broken->message  // "audit log row 17: ..."
//
// Rows: sequence number (1, 2, ...), wall-clock time, actor, event type,
// subject, details (a JSON object), the previous row's hash, and the row's
// own hash (chain.h). Secrets are redacted (redact.h) before a row is hashed
// and stored, so they never reach the disk.
//
// Durability and concurrency: the database is in WAL mode with
// synchronous=FULL (a returned Append is on disk), and every Append runs in
// one IMMEDIATE transaction that reads the tip and inserts the next row, so
// appenders in several processes (each with its own AuditLog) form one chain;
// a writer waits up to the busy timeout for another. A process killed
// mid-append leaves either the whole row or none (SQLite's journal).
//
// Errors are returned, never acted on: a caller whose main action must not
// depend on the log (most of them) logs the error and goes on; a caller that
// must not act unaudited (the OTA downgrade override) refuses when Append
// fails. An AuditLog is not shared across fork(): a child opens its own.
// It is used by one thread at a time (threads that share one hold a lock
// around every call, as ralphd's API threads do).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "platform/result.h"
#include "services/audit/chain.h"

struct sqlite3;
struct sqlite3_stmt;

namespace ralph::audit {

inline constexpr std::string_view kDefaultAuditLogPath = "/var/lib/ralph/audit.db";
// PRAGMA user_version of the schema this build reads and writes.
inline constexpr int kSchemaVersion = 1;
// PRAGMA application_id marking a RalphOS audit log ("RLAU").
inline constexpr int32_t kApplicationId = 0x524c4155;
// Bounds that keep one row small.
inline constexpr size_t kMaxDetailsBytes = 64 * 1024;
inline constexpr size_t kMaxSubjectBytes = 1024;

// One event to record. `actor` and `type` are short identifiers
// ([a-z0-9._-], 1..64 characters); `details` must be a JSON object.
struct AuditEvent {
  std::string actor;
  std::string type;
  std::string subject;
  nlohmann::json details = nlohmann::json::object();
};

// Where audit events go. The OTA installer and other writers take this
// interface (borrowed), so a daemon can route them through its own log.
class AuditSinkInterface {
 public:
  virtual ~AuditSinkInterface() = default;
  // The stored (redacted, chained) row, or why it was not stored.
  virtual Result<AuditRecord> Append(const AuditEvent& event) = 0;
  // The events as consecutive rows, in order, all or none; the stored rows.
  virtual Result<std::vector<AuditRecord>> AppendBatch(std::span<const AuditEvent> events) = 0;
};

enum class OpenMode {
  kCreateIfMissing,  // create the file (0600) and its directory when absent
  kExisting,         // kNotFound when absent; opened read-write
  kReadOnly,         // kNotFound when absent; Append fails with kReadOnly
};

struct AuditLogOptions {
  // How long an Append waits for another writer's transaction.
  std::chrono::milliseconds busy_timeout{10000};
  // The wall clock for row times (tests pin it); system_clock when empty.
  std::function<std::chrono::system_clock::time_point()> clock;
};

// Which end of the matching rows a limited List takes.
enum class ListFrom {
  kNewest,  // the newest `limit` (a tail)
  kOldest,  // the oldest `limit` (paging forward with after_seq)
};

struct ListQuery {
  // At most `limit` rows (0: all), returned oldest first.
  size_t limit = 0;
  ListFrom from = ListFrom::kNewest;
  // Filters: rows with seq > after_seq, of this type, about this subject.
  int64_t after_seq = 0;
  std::optional<std::string> type;
  std::optional<std::string> subject;
  // Wall-clock range on AuditRecord::time, in its stored format (see
  // ParseAuditTime): rows at or after `since` and before `until`. The
  // times are the writers' clocks: rows are in seq order, which a clock
  // set back can make differ from time order.
  std::optional<std::string> since;
  std::optional<std::string> until;
};

class AuditLog final : public AuditSinkInterface {
 public:
  // Opens (or creates) the log at `path`. Errors name the path and the cause:
  //   kNotFound       absent and mode is not kCreateIfMissing
  //   kReadOnly       kCreateIfMissing/kExisting on a read-only file system
  //                   or file ("audit log /var/lib/ralph/audit.db: ... read-only")
  //   kCorrupt        not an SQLite database, or an SQLite database that is
  //                   not an audit log (another application id or tables)
  //   kUnsupported    an audit log with another schema version
  //   kPermissionDenied, kIo, kBusy  from the file system / SQLite
  static Result<std::unique_ptr<AuditLog>> Open(std::string path, OpenMode mode,
                                                AuditLogOptions options = {});

  ~AuditLog() override;
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Redacts, chains and stores one event atomically; returns the stored row.
  // kInvalidArgument for a malformed event (naming the field); kReadOnly
  // (also when opened with OpenMode::kReadOnly),
  // kBusy (another writer held the log past the busy timeout), kNoSpace,
  // kCorrupt, kIo otherwise. Appending to a log whose chain is broken still
  // works (it chains to the current tip); Verify reports the break.
  Result<AuditRecord> Append(const AuditEvent& event) override;

  // Appends `events` as consecutive rows in one IMMEDIATE transaction with
  // one durable commit (one WAL sync for the batch): all of them or, on any
  // error or a crash, none. Each event is validated and redacted as by
  // Append, before the transaction; a bad one refuses the whole batch with
  // kInvalidArgument naming it ("events[3]: audit event actor ..."). All
  // rows get one time. An empty batch stores nothing and succeeds.
  Result<std::vector<AuditRecord>> AppendBatch(std::span<const AuditEvent> events) override;

  // Walks the whole chain (bounded memory). A broken chain is a report, not
  // an error: report.broken names the first broken row. `anchor`: a tip seen
  // earlier, which must still be in the chain (detects truncation and
  // rewrites; see chain.h). Errors only when the database cannot be read.
  Result<VerifyReport> Verify(std::optional<ChainTip> anchor = std::nullopt);

  // The newest rows (see ListQuery), as stored; no verification.
  Result<std::vector<AuditRecord>> List(const ListQuery& query = {});

  // The newest row's seq and hash (seq 0, kGenesisHash when empty), unverified.
  Result<ChainTip> Tip();

  const std::string& path() const { return path_; }

 private:
  struct DbDeleter {
    void operator()(sqlite3* db) const;
  };
  struct StatementDeleter {
    void operator()(sqlite3_stmt* statement) const;
  };
  AuditLog(std::string path, OpenMode mode, std::unique_ptr<sqlite3, DbDeleter> db,
           AuditLogOptions options)
      : path_(std::move(path)), mode_(mode), db_(std::move(db)), options_(std::move(options)) {}

  Error DbError(int rc, std::string_view what) const;
  // The statement in `slot`, prepared on first use and kept (SQLite
  // re-prepares it itself when the schema changes).
  Result<sqlite3_stmt*> Prepared(std::unique_ptr<sqlite3_stmt, StatementDeleter>& slot,
                                 std::string_view sql, std::string_view what);

  std::string path_;
  OpenMode mode_;
  std::unique_ptr<sqlite3, DbDeleter> db_;
  AuditLogOptions options_;
  // Statements prepared once: Tip()'s query (ralphd's status reads the tip
  // each time; appends read it too) and the insert of a row.
  std::unique_ptr<sqlite3_stmt, StatementDeleter> tip_;
  std::unique_ptr<sqlite3_stmt, StatementDeleter> insert_;
};

// The time format of AuditRecord::time for `when`.
std::string FormatAuditTime(std::chrono::system_clock::time_point when);

// `text` as a stored time: "2026-11-22T16:40:01.123Z", or without the
// milliseconds ("2026-11-22T16:40:01Z", taken as .000). kInvalidArgument
// naming what is wrong (shape, a field out of range) otherwise.
Result<std::string> ParseAuditTime(std::string_view text);

// The row as a JSON object (details parsed back into an object; the raw text
// is kept under "details_text" only if it does not parse) for --json output.
nlohmann::json RecordToJson(const AuditRecord& record);

}  // namespace ralph::audit
