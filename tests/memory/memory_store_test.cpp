// The memory store on real SQLite files: the hash of an entry (its pinned
// encoding, stable across the member order of the value's JSON text),
// immutability (one row per triple, the triggers refusing UPDATE and
// DELETE), prefix queries with SQL's LIKE and GLOB metacharacters in keys,
// a key's history in write order, entries by agent, pagination, and every
// bound refused naming its field; a file of another application refused.
#include "services/memory/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fmt/format.h>

#include "platform/sha256.h"
#include "tests/support/temp_dir.h"

namespace ralph::memory {
namespace {

using nlohmann::json;

json Parse(std::string_view text) {
  json value = json::parse(text, nullptr, false);
  EXPECT_FALSE(value.is_discarded()) << text;
  return value;
}

class MemoryStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    Result<std::unique_ptr<MemoryStore>> opened = MemoryStore::Open(dir_ / "memory.db", Options());
    ASSERT_TRUE(opened) << opened.error().ToString();
    store_ = std::move(*opened);
  }
  virtual MemoryStoreOptions Options() { return {}; }

  PutResult Put(std::string_view agent, std::string_view key, std::string_view value_text) {
    Result<PutResult> put = store_->Put(agent, key, Parse(value_text));
    EXPECT_TRUE(put) << put.error().ToString();
    return put ? *put : PutResult{};
  }
  std::vector<std::string> Keys(const Page& page) {
    std::vector<std::string> out;
    for (const Entry& entry : page.entries) out.push_back(entry.key);
    return out;
  }
  std::vector<std::string> Values(const Page& page) {
    std::vector<std::string> out;
    for (const Entry& entry : page.entries) out.push_back(entry.value);
    return out;
  }

  ralph::testing::TempDir dir_{"memory-store"};
  std::unique_ptr<MemoryStore> store_;
};

TEST(EntryHashTest, IsSha256OfTheLengthPrefixedTripleUnderAVersionTag) {
  EXPECT_EQ(EntryEncoding("job:7", "plan", R"({"a":1})"),
            "ralph-memory-entry-v1\n5:job:7\n4:plan\n7:{\"a\":1}\n");
  std::string encoding = EntryEncoding("job:7", "plan", R"({"a":1})");
  Result<Sha256Digest> digest =
      Sha256::Of({reinterpret_cast<const uint8_t*>(encoding.data()), encoding.size()});
  ASSERT_TRUE(digest);
  EXPECT_EQ(*EntryHash("job:7", "plan", R"({"a":1})"), DigestToHex(*digest));
  // Pinned (printf ... | sha256sum agrees): a change of the encoding changes
  // every stored hash.
  EXPECT_EQ(*EntryHash("job:7", "plan", R"({"a":1})"),
            "e1af90c54bebd14828f0912cc81a44095b2498e4032c703f7b5dd16bdf50880f")
      << "update the pin only with a new encoding tag";
  // Moving bytes between fields changes the hash (the lengths are covered).
  EXPECT_NE(*EntryHash("job:7", "ab", "1"), *EntryHash("job:7", "a", "b1"));
  EXPECT_NE(*EntryHash("job:1", "k", "1"), *EntryHash("job:2", "k", "1"));
}

TEST_F(MemoryStoreTest, TheHashDoesNotDependOnMemberOrderOrWhitespace) {
  PutResult a = Put("job:1", "k", R"({"b": [1, 2, {"y": null, "x": true}], "a": "s"})");
  PutResult b = Put("job:1", "k", R"({ "a":"s","b":[1,2,{"x":true,"y":null}] })");
  EXPECT_EQ(a.entry.hash, b.entry.hash);
  EXPECT_TRUE(a.created);
  EXPECT_FALSE(b.created);
  EXPECT_EQ(a.entry.value, R"({"a":"s","b":[1,2,{"x":true,"y":null}]})");
  EXPECT_EQ(a.entry.hash, *EntryHash("job:1", "k", a.entry.value));
  // Array order is part of the value; 1 and 1.0 are different numbers.
  EXPECT_NE(Put("job:1", "k", "[2,1]").entry.hash, Put("job:1", "k", "[1,2]").entry.hash);
  EXPECT_NE(Put("job:1", "k", "1").entry.hash, Put("job:1", "k", "1.0").entry.hash);
  EXPECT_EQ(Put("job:1", "k", "1e2").entry.value, "100.0");
  EXPECT_EQ(Put("job:1", "k", R"("\u0041\n")").entry.value, "\"A\\n\"");
}

TEST_F(MemoryStoreTest, EntriesAreImmutableAndATripleIsStoredOnce) {
  PutResult first = Put("job:1", "notes", R"({"v":1})");
  PutResult again = Put("job:1", "notes", R"({"v":1})");
  EXPECT_EQ(again.entry.seq, first.entry.seq);
  EXPECT_EQ(again.entry.time, first.entry.time);
  // Another agent writing the same key and value is another entry.
  PutResult other = Put("job:2", "notes", R"({"v":1})");
  EXPECT_TRUE(other.created);
  EXPECT_NE(other.entry.hash, first.entry.hash);
  EXPECT_EQ(store_->GetUsage()->entries, 2u);

  Result<Entry> read = store_->Get(first.entry.hash);
  ASSERT_TRUE(read) << read.error().ToString();
  EXPECT_EQ(read->value, R"({"v":1})");
  EXPECT_EQ(read->agent, "job:1");
  EXPECT_EQ(read->key, "notes");
  EXPECT_EQ(read->ToJson()["value"], Parse(R"({"v":1})"));

  // The file refuses changes through SQL.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "memory.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* message = nullptr;
  EXPECT_NE(sqlite3_exec(db, "UPDATE entries SET value = '2'", nullptr, nullptr, &message),
            SQLITE_OK);
  EXPECT_STREQ(message, "memory entries are immutable");
  sqlite3_free(message);
  EXPECT_NE(sqlite3_exec(db, "DELETE FROM entries", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  EXPECT_TRUE(store_->Get(first.entry.hash));
}

TEST_F(MemoryStoreTest, GetOfAnUnknownOrMalformedHash) {
  Result<Entry> missing = store_->Get(std::string(64, 'a'));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.error().message(), fmt::format("hash {}: no such entry", std::string(64, 'a')));
  Result<Entry> bad = store_->Get("ABC");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().message(), "hash: 'ABC' is not a SHA-256 (64 lower-case hex digits)");
}

TEST_F(MemoryStoreTest, PrefixQueriesTreatLikeAndGlobCharactersAsThemselves) {
  for (std::string_view key : {"a%b", "aXb", "a%bc", "a_b", "azb", "a\\b", "a*b", "a[b", "A%b", "a",
                               "b", "a%", "é/1", "é/2", "f"}) {
    Put("job:1", key, "1");
  }
  auto keys = [&](std::string_view prefix) {
    Result<Page> page = store_->Query(prefix, {.limit = 100});
    EXPECT_TRUE(page) << page.error().ToString();
    return page ? Keys(*page) : std::vector<std::string>();
  };
  EXPECT_EQ(keys("a%"), (std::vector<std::string>{"a%b", "a%bc", "a%"}));
  EXPECT_EQ(keys("a%b"), (std::vector<std::string>{"a%b", "a%bc"}));
  EXPECT_EQ(keys("a_"), (std::vector<std::string>{"a_b"}));
  EXPECT_EQ(keys("a\\"), (std::vector<std::string>{"a\\b"}));
  EXPECT_EQ(keys("a*"), (std::vector<std::string>{"a*b"}));
  EXPECT_EQ(keys("a["), (std::vector<std::string>{"a[b"}));
  EXPECT_EQ(keys("A"), (std::vector<std::string>{"A%b"}));  // case matters
  EXPECT_EQ(keys("é/"), (std::vector<std::string>{"é/1", "é/2"}));
  EXPECT_EQ(keys("b"), (std::vector<std::string>{"b"}));
  EXPECT_EQ(keys("zz"), (std::vector<std::string>{}));
  EXPECT_EQ(keys("").size(), 15u);
}

TEST_F(MemoryStoreTest, HistoryIsEveryValueOfAKeyInWriteOrderAcrossAgents) {
  Put("job:1", "plan", R"("one")");
  Put("job:2", "other", R"("x")");
  Put("job:2", "plan", R"("two")");
  Put("job:1", "plan", R"("three")");
  Put("job:1", "plan", R"("one")");  // already stored: no new entry
  Put("job:1", "planb", R"("no")");
  Result<Page> history = store_->History("plan");
  ASSERT_TRUE(history) << history.error().ToString();
  EXPECT_EQ(Values(*history), (std::vector<std::string>{R"("one")", R"("two")", R"("three")"}));
  EXPECT_FALSE(history->next_after);
  for (size_t i = 1; i < history->entries.size(); ++i) {
    EXPECT_LT(history->entries[i - 1].seq, history->entries[i].seq);
  }

  Result<Page> by_agent = store_->ByAgent("job:2");
  ASSERT_TRUE(by_agent);
  EXPECT_EQ(Keys(*by_agent), (std::vector<std::string>{"other", "plan"}));
  Result<Page> none = store_->ByAgent("job:9");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->entries.empty());
}

TEST_F(MemoryStoreTest, PagesFollowOneAnotherWithoutLossOrRepeat) {
  for (int i = 0; i < 25; ++i) Put("job:1", fmt::format("k/{:02}", i), std::to_string(i));
  std::vector<std::string> seen;
  PageRequest request{.after = 0, .limit = 10};
  int pages = 0;
  while (true) {
    Result<Page> page = store_->Query("k/", request);
    ASSERT_TRUE(page) << page.error().ToString();
    ++pages;
    for (const std::string& key : Keys(*page)) seen.push_back(key);
    if (!page->next_after) break;
    EXPECT_EQ(page->entries.size(), 10u);
    request.after = *page->next_after;
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), 25u);
  for (int i = 0; i < 25; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], fmt::format("k/{:02}", i));
  // Exactly a page's worth: no next page announced.
  Result<Page> exact = store_->Query("k/", {.after = 0, .limit = 25});
  ASSERT_TRUE(exact);
  EXPECT_FALSE(exact->next_after);
}

TEST_F(MemoryStoreTest, EveryBoundIsRefusedNamingItsField) {
  auto refused = [&](Result<PutResult> put, std::string_view message) {
    ASSERT_FALSE(put) << message;
    EXPECT_EQ(put.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(put.error().message(), message);
  };
  refused(store_->Put("job:1", "", 1), "key: must not be empty");
  refused(store_->Put("job:1", std::string(kMaxKeyBytes + 1, 'k'), 1),
          "key: 257 bytes is longer than the limit of 256");
  EXPECT_TRUE(store_->Put("job:1", std::string(kMaxKeyBytes, 'k'), 1));
  refused(store_->Put("job:1", "a\nb", 1), "key: not UTF-8 text without control characters");
  refused(store_->Put("job:1", "a\xff", 1), "key: not UTF-8 text without control characters");
  refused(store_->Put("Job 1", "k", 1), "agent: 'Job 1' is not made of [a-z0-9:._-]");
  refused(store_->Put("", "k", 1), "agent: '' is not 1..64 bytes");
  // The value's bound is on its canonical text: two quotes around the string.
  refused(store_->Put("job:1", "k", std::string(kMaxValueBytes - 1, 'v')),
          "value: 65537 bytes (canonical JSON) is longer than the limit of 65536");
  EXPECT_TRUE(store_->Put("job:1", "k", std::string(kMaxValueBytes - 2, 'v')));

  for (uint64_t limit : {uint64_t{0}, kMaxPageLimit + 1}) {
    Result<Page> page = store_->Query("", {.limit = limit});
    ASSERT_FALSE(page);
    EXPECT_EQ(page.error().message(), fmt::format("limit: {} is out of range 1..1000", limit));
  }
  Result<Page> prefix = store_->Query(std::string(kMaxKeyBytes + 1, 'p'));
  ASSERT_FALSE(prefix);
  EXPECT_EQ(prefix.error().message(), "prefix: 257 bytes is longer than the limit of 256");
  EXPECT_EQ(store_->GetUsage()->entries, 2u);
}

class FullMemoryStoreTest : public MemoryStoreTest {
  MemoryStoreOptions Options() override { return {.max_bytes = 10}; }
};

TEST_F(FullMemoryStoreTest, AWritePastTheStoresBoundIsRefusedAndNothingIsLost) {
  PutResult first = Put("job:1", "a", R"("12345678")");  // 10 bytes
  EXPECT_TRUE(first.created);
  Result<PutResult> over = store_->Put("job:1", "b", 1);
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().code(), ErrorCode::kNoSpace);
  EXPECT_EQ(over.error().message(),
            "memory store is full: 10 bytes stored, this value is 1, the limit is 10");
  // Writing what is stored costs nothing and still answers.
  EXPECT_FALSE(Put("job:1", "a", R"("12345678")").created);
  EXPECT_EQ(store_->GetUsage()->entries, 1u);
}

TEST(MemoryStoreOpenTest, ReopensItsOwnFileAndRefusesAnotherDatabase) {
  ralph::testing::TempDir dir("memory-open");
  std::string hash;
  {
    auto store = MemoryStore::Open(dir / "sub/memory.db");
    ASSERT_TRUE(store) << store.error().ToString();
    hash = (*store)->Put("job:1", "k", "v")->entry.hash;
  }
  auto reopened = MemoryStore::Open(dir / "sub/memory.db");
  ASSERT_TRUE(reopened) << reopened.error().ToString();
  EXPECT_EQ((*reopened)->Get(hash)->value, "\"v\"");

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "other.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto other = MemoryStore::Open(dir / "other.db");
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(other.error().message().find("not a RalphOS memory store"), std::string::npos);

  {
    std::FILE* f = std::fopen((dir / "junk.db").c_str(), "w");
    std::fputs("this is not a database, just text long enough to fill a header......", f);
    std::fclose(f);
  }
  auto junk = MemoryStore::Open(dir / "junk.db");
  ASSERT_FALSE(junk);
  EXPECT_EQ(junk.error().code(), ErrorCode::kCorrupt) << junk.error().ToString();
}

}  // namespace
}  // namespace ralph::memory

namespace ralph::memory {
namespace {

TEST(MemoryStorePageBytesTest, APageEndsBeforeItsValuesPassTheByteBound) {
  ralph::testing::TempDir dir("memory-page");
  auto store = MemoryStore::Open(dir / "memory.db");
  ASSERT_TRUE(store) << store.error().ToString();
  // 100 values of ~60 KiB: 6 MB, more than one page's bound.
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(
        (*store)->Put("job:1", fmt::format("big/{:03}", i), std::string(60000, 'a' + i % 26)));
  }
  size_t total = 0, pages = 0;
  PageRequest request{.limit = kMaxPageLimit};
  while (true) {
    Result<Page> page = (*store)->Query("big/", request);
    ASSERT_TRUE(page) << page.error().ToString();
    ++pages;
    size_t bytes = 0;
    for (const Entry& entry : page->entries) bytes += entry.key.size() + entry.value.size();
    EXPECT_LE(bytes, kMaxPageBytes);
    total += page->entries.size();
    if (!page->next_after) break;
    request.after = *page->next_after;
  }
  EXPECT_EQ(total, 100u);
  EXPECT_EQ(pages, 2u);
}

}  // namespace
}  // namespace ralph::memory
