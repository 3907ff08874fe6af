#include "services/memory/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "platform/sha256.h"
#include "platform/unique_fd.h"
#include "services/audit/audit_log.h"
#include "services/audit/canonical_json.h"
#include "services/sqlite/sqlite_util.h"

namespace ralph::memory {
namespace {

using nlohmann::json;

// Bumped only with a new schema version: stored hashes keep their meaning.
constexpr std::string_view kEncodingTag = "ralph-memory-entry-v1\n";

// Entries are only ever added: the triggers refuse UPDATE and DELETE, so
// no code path can change what a hash names. `usage` is one row, updated
// with every insert, so the store's bound costs no scan.
constexpr const char* kSchemaSql = R"sql(
CREATE TABLE entries(
  seq   INTEGER PRIMARY KEY,
  hash  TEXT NOT NULL UNIQUE,
  agent TEXT NOT NULL,
  key   TEXT NOT NULL,
  value TEXT NOT NULL,
  time  TEXT NOT NULL);
CREATE INDEX entries_by_key ON entries(key, seq);
CREATE INDEX entries_by_agent ON entries(agent, seq);
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'memory entries are immutable'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'memory entries are immutable'); END;
CREATE TABLE usage(id INTEGER PRIMARY KEY CHECK (id = 1), entries INTEGER NOT NULL,
  bytes INTEGER NOT NULL);
INSERT INTO usage VALUES (1, 0, 0);
)sql";

constexpr const char* kColumns = "seq, hash, agent, key, value, time";

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

ErrorCode CodeForSqlite(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return ErrorCode::kBusy;
    case SQLITE_READONLY: return ErrorCode::kReadOnly;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_FORMAT: return ErrorCode::kCorrupt;
    case SQLITE_FULL: return ErrorCode::kNoSpace;
    case SQLITE_CONSTRAINT: return ErrorCode::kRefused;
    default: return ErrorCode::kIo;
  }
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF) without control characters (C0, DEL).
bool IsPlainUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t code = 0;
    if ((c & 0xe0) == 0xc0) {
      length = 2;
      code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      length = 3;
      code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      length = 4;
      code = c & 0x07;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code = (code << 6) | (next & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kMin[length] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return false;
    i += length;
  }
  return true;
}

Result<void> CheckText(std::string_view text, std::string_view field, size_t min, size_t max) {
  if (text.size() < min) return Invalid(fmt::format("{}: must not be empty", field));
  if (text.size() > max) {
    return Invalid(
        fmt::format("{}: {} bytes is longer than the limit of {}", field, text.size(), max));
  }
  if (!IsPlainUtf8(text)) {
    return Invalid(fmt::format("{}: not UTF-8 text without control characters", field));
  }
  return {};
}

void AppendField(std::string& out, std::string_view field) {
  out += std::to_string(field.size());
  out += ':';
  out += field;
  out += '\n';
}

Entry ReadEntry(sqlite3_stmt* s) {
  return {.seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0)),
          .hash = sqlite::ColumnText(s, 1),
          .agent = sqlite::ColumnText(s, 2),
          .key = sqlite::ColumnText(s, 3),
          .value = sqlite::ColumnText(s, 4),
          .time = sqlite::ColumnText(s, 5)};
}

// The least byte string greater than every string that starts with
// `prefix`: the prefix with its last byte incremented (UTF-8 text never
// holds 0xff, so there is always one to increment).
std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (!end.empty()) end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
  return end;
}

}  // namespace

json Entry::ToJson() const {
  json parsed = json::parse(value, nullptr, /*allow_exceptions=*/false);
  return {{"seq", seq},
          {"hash", hash},
          {"agent", agent},
          {"key", key},
          {"value", parsed.is_discarded() ? json(value) : parsed},
          {"time", time}};
}

Result<void> CheckAgent(std::string_view agent, std::string_view field) {
  if (agent.empty() || agent.size() > kMaxAgentBytes) {
    return Invalid(fmt::format("{}: '{}' is not 1..{} bytes", field, agent, kMaxAgentBytes));
  }
  for (char c : agent) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == ':' || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return Invalid(fmt::format("{}: '{}' is not made of [a-z0-9:._-]", field, agent));
  }
  return {};
}

Result<void> CheckKey(std::string_view key, std::string_view field) {
  return CheckText(key, field, 1, kMaxKeyBytes);
}

Result<void> CheckPrefix(std::string_view prefix, std::string_view field) {
  return CheckText(prefix, field, 0, kMaxKeyBytes);
}

Result<void> CheckHash(std::string_view hash, std::string_view field) {
  bool hex = hash.size() == 64 && std::all_of(hash.begin(), hash.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
             });
  if (!hex) {
    return Invalid(fmt::format("{}: '{}' is not a SHA-256 (64 lower-case hex digits)", field,
                               hash.substr(0, 80)));
  }
  return {};
}

Result<void> CheckPage(const PageRequest& page, std::string_view field) {
  if (page.limit < 1 || page.limit > kMaxPageLimit) {
    return Invalid(fmt::format("{}: {} is out of range 1..{}", field, page.limit, kMaxPageLimit));
  }
  return {};
}

Result<std::string> CanonicalValue(const json& value, std::string_view field) {
  if (value.is_discarded()) return Invalid(fmt::format("{}: required", field));
  std::string text = audit::CanonicalJson(value);
  if (text.size() > kMaxValueBytes) {
    return Invalid(fmt::format("{}: {} bytes (canonical JSON) is longer than the limit of {}",
                               field, text.size(), kMaxValueBytes));
  }
  return text;
}

std::string EntryEncoding(std::string_view agent, std::string_view key,
                          std::string_view canonical_value) {
  std::string out(kEncodingTag);
  AppendField(out, agent);
  AppendField(out, key);
  AppendField(out, canonical_value);
  return out;
}

Result<std::string> EntryHash(std::string_view agent, std::string_view key,
                              std::string_view canonical_value) {
  std::string encoding = EntryEncoding(agent, key, canonical_value);
  Sha256Digest digest =
      TRY_CTX(Sha256::Of({reinterpret_cast<const uint8_t*>(encoding.data()), encoding.size()}),
              "hashing a memory entry");
  return DigestToHex(digest);
}

Error MemoryStore::DbError(int rc, std::string_view what) const {
  const char* message = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  return Error::Make(CodeForSqlite(rc),
                     fmt::format("memory store {}: {}: {}", path_, what, message));
}

Result<std::unique_ptr<MemoryStore>> MemoryStore::Open(const std::string& path,
                                                       MemoryStoreOptions options) {
  if (path.empty()) return Invalid("memory store path is empty");
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) {
    return Error::FromErrno(
        fmt::format("memory store {}: creating directory {}", path, parent.string()), ec.value());
  }
  // Created here, not by SQLite, to get 0600 whatever the umask.
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return Error::FromErrno(fmt::format("memory store {}: opening", path), errno);
  fd.reset();
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(
      path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE | SQLITE_OPEN_FULLMUTEX,
      nullptr);
  std::unique_ptr<MemoryStore> store(new MemoryStore(path, raw, std::move(options)));
  if (rc != SQLITE_OK) return store->DbError(rc, "opening");
  sqlite3* db = store->db_;
  auto fail = [&](int code, std::string_view what) { return store->DbError(code, what); };
  sqlite3_busy_timeout(db, static_cast<int>(store->options_.busy_timeout.count()));
  // The first read: "file is not a database" shows here.
  sqlite::Header header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
  if (header.application_id == 0 && header.schema_objects == 0) {
    TRY(sqlite::EnableWal(db, store->options_.busy_timeout, "switching to WAL", fail));
    // Another connection may be initialising the same new file: decide
    // inside the write transaction.
    sqlite::Transaction transaction = TRY(
        sqlite::Transaction::Begin(db, sqlite::TransactionKind::kImmediate, "initialising", fail));
    header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
    if (header.application_id == 0 && header.schema_objects == 0) {
      TRY(sqlite::Exec(db, kSchemaSql, "creating the schema", fail));
      std::string pragmas = fmt::format("PRAGMA application_id={}; PRAGMA user_version={};",
                                        kApplicationId, kSchemaVersion);
      TRY(sqlite::Exec(db, pragmas.c_str(), "creating the schema", fail));
      header = TRY(sqlite::ReadHeader(db, "reading the header", fail));
    }
    TRY(transaction.Commit("initialising", fail));
  }
  TRY(sqlite::CheckHeader(header, path, "memory store", kApplicationId, kSchemaVersion));
  TRY(sqlite::EnableWal(db, store->options_.busy_timeout, "switching to WAL", fail));
  // FULL: the WAL is synced at each commit, so a Put that returned survives
  // a power cut.
  TRY(sqlite::Exec(db, "PRAGMA synchronous=FULL", "setting synchronous=FULL", fail));
  return store;
}

MemoryStore::~MemoryStore() {
  sqlite3_close_v2(db_);
}

Result<PutResult> MemoryStore::Put(std::string_view agent, std::string_view key,
                                   const json& value) {
  TRY(CheckAgent(agent));
  TRY(CheckKey(key));
  std::string canonical = TRY(CanonicalValue(value));
  std::string hash = TRY(EntryHash(agent, key, canonical));
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  // IMMEDIATE: the lookup, the bound and the insert see one state, so two
  // writers of one triple store it once.
  sqlite::Transaction transaction =
      TRY(sqlite::Transaction::Begin(db_, sqlite::TransactionKind::kImmediate, "writing", fail));
  {
    sqlite::Statement find =
        TRY(sqlite::Prepare(db_, fmt::format("SELECT {} FROM entries WHERE hash = ?1", kColumns),
                            "writing: looking up the hash", fail));
    sqlite::BindText(find.get(), 1, hash);
    int rc = sqlite3_step(find.get());
    if (rc == SQLITE_ROW) {
      Entry stored = ReadEntry(find.get());
      // The hash names the triple; a stored row that differs would be a
      // collision or a tampered file, never an entry to hand out.
      if (stored.agent != agent || stored.key != key || stored.value != canonical) {
        return Error::Make(ErrorCode::kCorrupt,
                           fmt::format("memory store {}: entry {} does not hold what its hash "
                                       "names",
                                       path_, hash));
      }
      return PutResult{.entry = std::move(stored), .created = false};
    }
    if (rc != SQLITE_DONE) return DbError(rc, "writing: looking up the hash");
  }
  Usage usage = TRY(GetUsage());
  if (usage.bytes + canonical.size() > options_.max_bytes) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("memory store is full: {} bytes stored, this value is {}, "
                                   "the limit is {}",
                                   usage.bytes, canonical.size(), options_.max_bytes));
  }
  Entry entry{.hash = hash,
              .agent = std::string(agent),
              .key = std::string(key),
              .value = std::move(canonical),
              .time = audit::FormatAuditTime(options_.clock ? options_.clock()
                                                            : std::chrono::system_clock::now())};
  {
    sqlite::Statement insert = TRY(sqlite::Prepare(
        db_, "INSERT INTO entries(hash, agent, key, value, time) VALUES (?1, ?2, ?3, ?4, ?5)",
        "writing: inserting", fail));
    sqlite::BindText(insert.get(), 1, entry.hash);
    sqlite::BindText(insert.get(), 2, entry.agent);
    sqlite::BindText(insert.get(), 3, entry.key);
    sqlite::BindText(insert.get(), 4, entry.value);
    sqlite::BindText(insert.get(), 5, entry.time);
    int rc = sqlite3_step(insert.get());
    if (rc != SQLITE_DONE) return DbError(rc, "writing: inserting");
    entry.seq = static_cast<uint64_t>(sqlite3_last_insert_rowid(db_));
  }
  {
    sqlite::Statement update = TRY(sqlite::Prepare(
        db_, "UPDATE usage SET entries = entries + 1, bytes = bytes + ?1 WHERE id = 1",
        "writing: counting", fail));
    sqlite3_bind_int64(update.get(), 1, static_cast<int64_t>(entry.value.size()));
    int rc = sqlite3_step(update.get());
    if (rc != SQLITE_DONE) return DbError(rc, "writing: counting");
  }
  TRY(transaction.Commit("writing: committing", fail));
  return PutResult{.entry = std::move(entry), .created = true};
}

Result<MemoryStore::Usage> MemoryStore::GetUsage() {
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  sqlite::Statement s = TRY(sqlite::Prepare(db_, "SELECT entries, bytes FROM usage WHERE id = 1",
                                            "reading the usage", fail));
  int rc = sqlite3_step(s.get());
  if (rc != SQLITE_ROW) {
    if (rc == SQLITE_DONE) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("memory store {}: the usage row is missing", path_));
    }
    return DbError(rc, "reading the usage");
  }
  return Usage{.entries = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 0)),
               .bytes = static_cast<uint64_t>(sqlite3_column_int64(s.get(), 1))};
}

Result<Entry> MemoryStore::Get(std::string_view hash) {
  TRY(CheckHash(hash));
  auto fail = [&](int code, std::string_view what) { return DbError(code, what); };
  sqlite::Statement s =
      TRY(sqlite::Prepare(db_, fmt::format("SELECT {} FROM entries WHERE hash = ?1", kColumns),
                          "reading an entry", fail));
  sqlite::BindText(s.get(), 1, hash);
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("hash {}: no such entry", hash));
  }
  if (rc != SQLITE_ROW) return DbError(rc, "reading an entry");
  return ReadEntry(s.get());
}

Result<Page> MemoryStore::Select(std::string_view where, std::vector<std::string> texts,
                                 PageRequest page, std::string_view what) {
  TRY(CheckPage(page));
  auto fail = [&](int code, std::string_view w) { return DbError(code, w); };
  const int after_index = static_cast<int>(texts.size()) + 1;
  // One more than asked: whether another page follows.
  std::string sql =
      fmt::format("SELECT {} FROM entries WHERE {} AND seq > ?{} ORDER BY seq LIMIT ?{}", kColumns,
                  where, after_index, after_index + 1);
  sqlite::Statement s = TRY(sqlite::Prepare(db_, sql, what, fail));
  for (size_t i = 0; i < texts.size(); ++i) {
    sqlite::BindText(s.get(), static_cast<int>(i) + 1, texts[i]);
  }
  sqlite3_bind_int64(s.get(), after_index,
                     static_cast<int64_t>(std::min<uint64_t>(page.after, INT64_MAX)));
  sqlite3_bind_int64(s.get(), after_index + 1, static_cast<int64_t>(page.limit + 1));
  Page out;
  size_t bytes = 0;
  while (true) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(rc, what);
    Entry entry = ReadEntry(s.get());
    size_t size = entry.key.size() + entry.value.size();
    if (out.entries.size() == page.limit ||
        (!out.entries.empty() && bytes + size > kMaxPageBytes)) {
      out.next_after = out.entries.back().seq;
      break;
    }
    bytes += size;
    out.entries.push_back(std::move(entry));
  }
  return out;
}

Result<Page> MemoryStore::Query(std::string_view prefix, PageRequest page) {
  TRY(CheckPrefix(prefix));
  if (prefix.empty()) return Select("1", {}, page, "querying all keys");
  // A range over the key index, never LIKE or GLOB: no character of the
  // prefix is a wildcard, and the comparison is bytewise (BINARY).
  return Select("key >= ?1 AND key < ?2", {std::string(prefix), PrefixEnd(prefix)}, page,
                "querying a key prefix");
}

Result<Page> MemoryStore::History(std::string_view key, PageRequest page) {
  TRY(CheckKey(key));
  return Select("key = ?1", {std::string(key)}, page, "reading a key's history");
}

Result<Page> MemoryStore::ByAgent(std::string_view agent, PageRequest page) {
  TRY(CheckAgent(agent));
  return Select("agent = ?1", {std::string(agent)}, page, "reading an agent's entries");
}

}  // namespace ralph::memory
