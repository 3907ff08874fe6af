// Small helpers over SQLite's C API for the services' stores: an owned
// statement, a transaction that rolls back unless committed, running SQL
// and reading a database's header, each turning a failure into the
// caller's own Error (every store names its file and wording).
//
//   auto fail = [&](int rc, std::string_view what) { return DbError(rc, what); };
//   sqlite::Transaction transaction =
//       TRY(sqlite::Transaction::Begin(db, sqlite::TransactionKind::kImmediate, "appending",
//       fail));
//   sqlite::Statement insert = TRY(sqlite::Prepare(db, "INSERT ...", "appending", fail));
//   ... sqlite3_step(insert.get()) ...
//   TRY(transaction.Commit("appending", fail));  // else rolled back on return
//
// `fail` is any callable (int sqlite_rc, std::string_view what) -> Error.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::sqlite {

struct StatementDeleter {
  void operator()(sqlite3_stmt* statement) const { sqlite3_finalize(statement); }
};
using Statement = std::unique_ptr<sqlite3_stmt, StatementDeleter>;

// The column as bytes ("" for NULL); sqlite3_column_text's unsigned chars.
std::string ColumnText(sqlite3_stmt* statement, int column);

// Binds text copied by SQLite (SQLITE_TRANSIENT); an empty view with a null
// data pointer binds the empty string, not NULL. The SQLite result code.
int BindText(sqlite3_stmt* statement, int index, std::string_view text);

// Runs SQL that returns no rows.
template <typename Fail>
Result<void> Exec(sqlite3* db, const char* sql, std::string_view what, Fail&& fail) {
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return fail(rc, what);
  return {};
}

// One statement of `sql`, ready to bind and step.
template <typename Fail>
Result<Statement> Prepare(sqlite3* db, std::string_view sql, std::string_view what, Fail&& fail) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &raw, nullptr);
  Statement statement(raw);
  if (rc != SQLITE_OK) return fail(rc, what);
  return statement;
}

// Puts the database in WAL mode (a no-op when it is). Switching a file from
// its rollback journal needs it to itself, and SQLite reports SQLITE_BUSY
// for that at once rather than through the busy handler, so a process
// opening a store while another creates or writes it retries here for up
// to `patience` (the store's busy timeout). The SQLite result code.
int EnableWal(sqlite3* db, std::chrono::milliseconds patience);

template <typename Fail>
Result<void> EnableWal(sqlite3* db, std::chrono::milliseconds patience, std::string_view what,
                       Fail&& fail) {
  int rc = EnableWal(db, patience);
  if (rc != SQLITE_OK) return fail(rc, what);
  return {};
}

enum class TransactionKind {
  kDeferred,   // BEGIN: the write lock is taken at the first write
  kImmediate,  // BEGIN IMMEDIATE: the write lock now (reads then writes see one state)
};

// An open transaction: ROLLBACK when it goes out of scope uncommitted
// (every early return), including after a COMMIT that failed.
class Transaction {
 public:
  template <typename Fail>
  static Result<Transaction> Begin(sqlite3* db, TransactionKind kind, std::string_view what,
                                   Fail&& fail) {
    TRY(Exec(db, kind == TransactionKind::kImmediate ? "BEGIN IMMEDIATE" : "BEGIN", what, fail));
    return Transaction(db);
  }
  // For a transaction begun by other SQL (e.g. "BEGIN IMMEDIATE; ...").
  static Transaction Adopt(sqlite3* db) { return Transaction(db); }

  Transaction(Transaction&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  ~Transaction() { Rollback(); }

  template <typename Fail>
  Result<void> Commit(std::string_view what, Fail&& fail) {
    TRY(Exec(db_, "COMMIT", what, fail));
    db_ = nullptr;
    return {};
  }
  // Undoes it now (no-op once committed or rolled back).
  void Rollback();

 private:
  explicit Transaction(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

// What identifies a database file as one of ours, read in one statement
// (one snapshot: read separately, the header could be seen before and the
// schema after another process initialised the file).
struct Header {
  int64_t application_id = 0;
  int64_t user_version = 0;
  int64_t schema_objects = 0;  // rows of sqlite_master
};
// SQLITE_OK with `out` filled, or the failing SQLite result code (the
// first read of a file: "file is not a database" shows here).
int ReadHeader(sqlite3* db, Header& out);

template <typename Fail>
Result<Header> ReadHeader(sqlite3* db, std::string_view what, Fail&& fail) {
  Header header;
  int rc = ReadHeader(db, header);
  if (rc != SQLITE_OK) return fail(rc, what);
  return header;
}

// Whether `header` is that of a store of `kind` ("audit log") at `version`:
// kCorrupt for another application's database (naming its application_id
// and how many schema objects it holds), kUnsupported for another schema
// version of this store.
Result<void> CheckHeader(const Header& header, std::string_view path, std::string_view kind,
                         int64_t application_id, int64_t version);

}  // namespace ralph::sqlite
