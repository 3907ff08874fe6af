// The shared agent memory (docs/memory.md): a content-addressed store of
// JSON values in SQLite on VAR (<state dir>/memory.db, 0600).
//
//   auto store = TRY(memory::MemoryStore::Open(dir + "/memory.db"));
//   memory::PutResult put = TRY(store->Put("job:7", "notes/plan", value));
//   put.entry.hash    // SHA-256 of (agent, key, canonical value): EntryHash
//   put.created       // false: the same triple was written before (no new row)
//   memory::Entry e = TRY(store->Get(put.entry.hash));
//   memory::Page p = TRY(store->Query("notes/", {.after = 0, .limit = 100}));
//   p.next_after      // set when more entries follow: the next page's `after`
//
// An entry is (agent, key, value) plus its write-order number `seq` and the
// time of its first write; entries are never changed or removed (triggers
// refuse UPDATE and DELETE). Writing a triple again returns the stored
// entry. A key's history is its entries in write order, across agents.
//
// Bounds: agent 1..kMaxAgentBytes of [a-z0-9:._-]; key 1..kMaxKeyBytes of
// UTF-8 without control characters; value at most kMaxValueBytes in
// canonical form; pages of 1..kMaxPageLimit entries; the whole store at most
// MemoryStoreOptions::max_bytes of values (kNoSpace past it). Errors name
// the field ("key: 300 bytes is longer than the limit of 256").
//
// Several connections (in one process or several) may use one file: each
// write is one IMMEDIATE transaction (WAL, synchronous=FULL: a returned Put
// is on disk).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "platform/result.h"

struct sqlite3;

namespace ralph::memory {

inline constexpr size_t kMaxAgentBytes = 64;
inline constexpr size_t kMaxKeyBytes = 256;
inline constexpr size_t kMaxValueBytes = 64 * 1024;
inline constexpr uint64_t kMaxPageLimit = 1000;
inline constexpr uint64_t kDefaultPageLimit = 100;
// A page ends early, before the entry that would take its values and keys
// past this (it always holds at least one entry): a reply stays bounded
// whatever the limit.
inline constexpr size_t kMaxPageBytes = 4u << 20;
inline constexpr uint64_t kDefaultMaxStoreBytes = uint64_t{256} << 20;
// PRAGMA user_version of the schema this build reads and writes.
inline constexpr int kSchemaVersion = 1;
// PRAGMA application_id marking a RalphOS memory store ("RLME").
inline constexpr int32_t kApplicationId = 0x524c4d45;

struct Entry {
  uint64_t seq = 0;   // write order, from 1
  std::string hash;   // 64 lower-case hex digits
  std::string agent;  // "job:7", "uid:0", "cert:<id>"
  std::string key;
  std::string value;  // canonical JSON text (services/audit/canonical_json.h)
  std::string time;   // first written, RFC 3339 UTC with milliseconds
  // {"seq", "hash", "agent", "key", "value" (parsed), "time"}
  nlohmann::json ToJson() const;
};

struct PutResult {
  Entry entry;
  bool created = false;  // false: the triple was already stored
};

struct PageRequest {
  uint64_t after = 0;                  // entries with seq > after
  uint64_t limit = kDefaultPageLimit;  // 1..kMaxPageLimit
};

struct Page {
  std::vector<Entry> entries;  // in write order
  // The seq to pass as `after` for the next page; absent on the last page.
  std::optional<uint64_t> next_after;
};

struct MemoryStoreOptions {
  // The sum of the stored values' canonical bytes; a write past it is kNoSpace.
  uint64_t max_bytes = kDefaultMaxStoreBytes;
  std::chrono::milliseconds busy_timeout{10000};
  // The clock of the entries' times (tests pin it); system_clock when empty.
  std::function<std::chrono::system_clock::time_point()> clock;
};

// Field checks, kInvalidArgument naming `field`.
Result<void> CheckAgent(std::string_view agent, std::string_view field = "agent");
Result<void> CheckKey(std::string_view key, std::string_view field = "key");
// A key prefix: like a key but may be empty (every key).
Result<void> CheckPrefix(std::string_view prefix, std::string_view field = "prefix");
Result<void> CheckHash(std::string_view hash, std::string_view field = "hash");
Result<void> CheckPage(const PageRequest& page, std::string_view field = "limit");

// The value's canonical text, kInvalidArgument naming `field` past
// kMaxValueBytes.
Result<std::string> CanonicalValue(const nlohmann::json& value, std::string_view field = "value");

// The bytes an entry's hash covers: a version tag, then agent, key and the
// canonical value, each as "<decimal length>:<bytes>\n" (so no two triples
// encode alike).
std::string EntryEncoding(std::string_view agent, std::string_view key,
                          std::string_view canonical_value);
// SHA-256 of EntryEncoding as 64 lower-case hex digits.
Result<std::string> EntryHash(std::string_view agent, std::string_view key,
                              std::string_view canonical_value);

class MemoryStore {
 public:
  // Opens or creates (0600, its directory too) the store at `path`.
  // kCorrupt for a file that is not a memory store (another SQLite
  // application, or not SQLite), kUnsupported for another schema version.
  static Result<std::unique_ptr<MemoryStore>> Open(const std::string& path,
                                                   MemoryStoreOptions options = {});
  ~MemoryStore();
  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  Result<PutResult> Put(std::string_view agent, std::string_view key, const nlohmann::json& value);
  // kNotFound "hash <h>: no such entry".
  Result<Entry> Get(std::string_view hash);
  // Entries whose key starts with `prefix` (bytewise; no character is
  // special), "" for all.
  Result<Page> Query(std::string_view prefix, PageRequest page = {});
  // Every entry of exactly `key`, in write order.
  Result<Page> History(std::string_view key, PageRequest page = {});
  // Every entry `agent` wrote.
  Result<Page> ByAgent(std::string_view agent, PageRequest page = {});

  struct Usage {
    uint64_t entries = 0;
    uint64_t bytes = 0;  // of canonical values
  };
  Result<Usage> GetUsage();

  const std::string& path() const { return path_; }

 private:
  MemoryStore(std::string path, sqlite3* db, MemoryStoreOptions options)
      : path_(std::move(path)), db_(db), options_(std::move(options)) {}
  Error DbError(int rc, std::string_view what) const;
  // Entries matching `where` (SQL over the columns; `texts` bound to ?1,
  // ?2, ... in order) with seq > page.after, in seq order.
  Result<Page> Select(std::string_view where, std::vector<std::string> texts, PageRequest page,
                      std::string_view what);

  std::string path_;
  sqlite3* db_;
  MemoryStoreOptions options_;
};

}  // namespace ralph::memory
