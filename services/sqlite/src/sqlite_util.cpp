#include "services/sqlite/sqlite_util.h"

#include <algorithm>
#include <thread>

#include <fmt/format.h>

namespace ralph::sqlite {

std::string ColumnText(sqlite3_stmt* statement, int column) {
  const unsigned char* text = sqlite3_column_text(statement, column);
  if (!text) return {};
  return std::string(reinterpret_cast<const char*>(text),
                     static_cast<size_t>(sqlite3_column_bytes(statement, column)));
}

int BindText(sqlite3_stmt* statement, int index, std::string_view text) {
  return sqlite3_bind_text(statement, index, text.data() ? text.data() : "",
                           static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

int EnableWal(sqlite3* db, std::chrono::milliseconds patience) {
  using namespace std::chrono_literals;
  const auto deadline = std::chrono::steady_clock::now() + patience;
  std::chrono::milliseconds pause = 1ms;
  while (true) {
    int rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr);
    if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) ||
        std::chrono::steady_clock::now() >= deadline) {
      return rc;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, 50ms);
  }
}

void Transaction::Rollback() {
  if (db_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  db_ = nullptr;
}

int ReadHeader(sqlite3* db, Header& out) {
  sqlite3_stmt* raw = nullptr;
  constexpr std::string_view kSql =
      "SELECT a.application_id, v.user_version, (SELECT count(*) FROM sqlite_master) "
      "FROM pragma_application_id AS a, pragma_user_version AS v";
  int rc = sqlite3_prepare_v2(db, kSql.data(), static_cast<int>(kSql.size()), &raw, nullptr);
  Statement statement(raw);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(statement.get());
  if (rc != SQLITE_ROW) return rc;
  out = {sqlite3_column_int64(statement.get(), 0), sqlite3_column_int64(statement.get(), 1),
         sqlite3_column_int64(statement.get(), 2)};
  return SQLITE_OK;
}

Result<void> CheckHeader(const Header& header, std::string_view path, std::string_view kind,
                         int64_t application_id, int64_t version) {
  if (header.application_id != application_id) {
    return Error::Make(
        ErrorCode::kCorrupt,
        fmt::format("{} is an SQLite database but not a RalphOS {} (application_id {:#010x}, {} "
                    "schema objects)",
                    path, kind, static_cast<uint32_t>(header.application_id),
                    header.schema_objects));
  }
  if (header.user_version != version) {
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("{} {} has schema version {}; this build reads version {}", kind,
                                   path, header.user_version, version));
  }
  return {};
}

}  // namespace ralph::sqlite
