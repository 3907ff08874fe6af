// `ralphctl audit list|verify` as a user runs it: output, --json, exit codes
// (0 ok, 1 failed or broken chain, 2 bad command line) and messages that
// name the cause.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "audit_test_util.h"
#include "services/audit/audit_log.h"

namespace ralph::audit {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ProgramStreams;

class RalphctlAuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    const char* build = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(build, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
    ralphctl_ = std::string(build) + "/bin/ralphctl";
    db_ = dir_ / "audit.db";
  }

  ProgramStreams Ralphctl(std::vector<std::string> args) {
    args.insert(args.begin(), ralphctl_);
    return ::ralph::testing::RunProgramStreams(args);
  }

  void Populate(int rows) {
    auto log = AuditLog::Open(db_, OpenMode::kCreateIfMissing);
    ASSERT_TRUE(log.has_value()) << log.error().ToString();
    for (int i = 1; i <= rows; ++i) {
      auto row = (*log)->Append({.actor = "ota",
                                 .type = "install-started",
                                 .subject = fmt::format("slot {}", i % 2 ? "A" : "B"),
                                 .details = {{"n", i}, {"password", "hunter2"}}});
      ASSERT_TRUE(row.has_value()) << row.error().ToString();
    }
  }

  testing::TempDir dir_;
  std::string ralphctl_;
  std::string db_;
};

TEST_F(RalphctlAuditTest, ListShowsTheNewestRowsOldestFirst) {
  Populate(60);
  ProgramStreams all = Ralphctl({"audit", "list", "--audit-db", db_});
  ASSERT_EQ(all.exit, 0) << all.err;
  // Default: the newest 50.
  EXPECT_EQ(std::count(all.out.begin(), all.out.end(), '\n'), 50);
  EXPECT_THAT(all.out, HasSubstr("    11  "));
  EXPECT_THAT(all.out, Not(HasSubstr("    10  ")));
  EXPECT_THAT(
      all.out,
      HasSubstr(R"(ota      install-started      slot B     {"n":60,"password":"[REDACTED]"})"));
  EXPECT_THAT(all.out, Not(HasSubstr("hunter2")));

  ProgramStreams limited = Ralphctl({"audit", "list", "--json", "--limit", "3", "--audit-db", db_});
  ASSERT_EQ(limited.exit, 0) << limited.err;
  json rows = json::parse(limited.out);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["seq"], 58);
  EXPECT_EQ(rows[2]["seq"], 60);
  EXPECT_EQ(rows[2]["details"]["n"], 60);
  EXPECT_EQ(rows[2]["details"]["password"], "[REDACTED]");
  EXPECT_EQ(rows[2]["prev_hash"], rows[1]["hash"]);

  ProgramStreams everything = Ralphctl({"audit", "list", "--json", "--limit=0", "--audit-db", db_});
  ASSERT_EQ(everything.exit, 0);
  EXPECT_EQ(json::parse(everything.out).size(), 60u);
}

// --since/--until on the file: inclusive and exclusive bounds on the time;
// a malformed time is a usage error naming the flag.
TEST_F(RalphctlAuditTest, ListAndExportByTimeRange) {
  int64_t millis = 1795372801000;  // 2026-11-22T18:40:01.000Z, one row a second
  {
    auto log = AuditLog::Open(
        db_, OpenMode::kCreateIfMissing, {.clock = [&] {
          return std::chrono::system_clock::time_point(std::chrono::milliseconds(millis));
        }});
    ASSERT_TRUE(log.has_value()) << log.error().ToString();
    for (int i = 1; i <= 5; ++i, millis += 1000) {
      ASSERT_TRUE((*log)->Append({.actor = "ota", .type = "install-started"}));
    }
  }
  ProgramStreams list = Ralphctl({"audit", "list", "--json", "--audit-db", db_, "--since",
                                  "2026-11-22T18:40:02Z", "--until", "2026-11-22T18:40:04.000Z"});
  ASSERT_EQ(list.exit, 0) << list.err;
  json rows = json::parse(list.out);
  ASSERT_EQ(rows.size(), 2u) << list.out;
  EXPECT_EQ(rows[0]["seq"], 2);
  EXPECT_EQ(rows[1]["seq"], 3);
  ProgramStreams exported =
      Ralphctl({"audit", "export", "--audit-db", db_, "--since", "2026-11-22T18:40:04.000Z"});
  ASSERT_EQ(exported.exit, 0) << exported.err;
  EXPECT_EQ(std::count(exported.out.begin(), exported.out.end(), '\n'), 2) << exported.out;
  ProgramStreams bad = Ralphctl({"audit", "export", "--audit-db", db_, "--until", "18:40"});
  EXPECT_EQ(bad.exit, 2);
  EXPECT_THAT(bad.err, HasSubstr("--until: '18:40' is not a UTC time"));
  ProgramStreams backwards = Ralphctl({"audit", "list", "--audit-db", db_, "--since",
                                       "2026-11-22T18:40:04Z", "--until", "2026-11-22T18:40:02Z"});
  EXPECT_EQ(backwards.exit, 2);
  EXPECT_THAT(backwards.err, HasSubstr("--until must be after --since"));
}

TEST_F(RalphctlAuditTest, EmptyLog) {
  ASSERT_TRUE(AuditLog::Open(db_, OpenMode::kCreateIfMissing).has_value());
  ProgramStreams list = Ralphctl({"audit", "list", "--audit-db", db_});
  EXPECT_EQ(list.exit, 0);
  EXPECT_EQ(list.out, "the audit log is empty\n");
  ProgramStreams verify = Ralphctl({"audit", "verify", "--audit-db", db_});
  EXPECT_EQ(verify.exit, 0);
  EXPECT_EQ(verify.out,
            fmt::format("audit log {}: 0 rows, chain intact; tip 0:{}\n", db_, kGenesisHash));
}

TEST_F(RalphctlAuditTest, VerifyIntactThenTampered) {
  Populate(20);
  ProgramStreams ok = Ralphctl({"audit", "verify", "--audit-db", db_});
  ASSERT_EQ(ok.exit, 0) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("20 rows, chain intact; tip 20:"));
  ProgramStreams ok_json = Ralphctl({"audit", "verify", "--json", "--audit-db", db_});
  ASSERT_EQ(ok_json.exit, 0);
  json report = json::parse(ok_json.out);
  EXPECT_EQ(report["ok"], true);
  EXPECT_EQ(report["rows"], 20);
  std::string tip = report["tip"];

  ProgramStreams tampered = testing::Sqlite(
      db_, "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET subject='slot Z' WHERE seq=17");
  ASSERT_EQ(tampered.exit, 0) << tampered.err;
  ProgramStreams broken = Ralphctl({"audit", "verify", "--audit-db", db_});
  EXPECT_EQ(broken.exit, 1);
  EXPECT_EQ(broken.err, fmt::format("ralphctl audit verify: {}: audit log row 17: hash mismatch "
                                    "(row modified) [verification-failed]\n",
                                    db_));
  ProgramStreams broken_json = Ralphctl({"audit", "verify", "--json", "--audit-db", db_});
  EXPECT_EQ(broken_json.exit, 1);
  json broken_report = json::parse(broken_json.out);
  EXPECT_EQ(broken_report["ok"], false);
  EXPECT_EQ(broken_report["broken"]["seq"], 17);
  EXPECT_EQ(broken_report["broken"]["kind"], "hash-mismatch");
  EXPECT_EQ(broken_report["rows"], 16);

  // Truncation behind an anchor kept from before.
  ProgramStreams truncated_db = testing::Sqlite(
      db_, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= 17");
  ASSERT_EQ(truncated_db.exit, 0) << truncated_db.err;
  EXPECT_EQ(Ralphctl({"audit", "verify", "--audit-db", db_}).exit, 0);
  ProgramStreams anchored = Ralphctl({"audit", "verify", "--anchor", tip, "--audit-db", db_});
  EXPECT_EQ(anchored.exit, 1);
  EXPECT_THAT(anchored.err, HasSubstr("audit log row 17: missing: the log ends at row 16, but "
                                      "row 20 was seen before"));
}

TEST_F(RalphctlAuditTest, BadDatabasesFailWithTheCause) {
  ProgramStreams missing = Ralphctl({"audit", "list", "--audit-db", db_});
  EXPECT_EQ(missing.exit, 1);
  EXPECT_EQ(missing.err,
            fmt::format("ralphctl audit list: audit log {} does not exist [not-found]\n", db_));
  {
    std::ofstream garbage(db_);
    garbage << std::string(1024, 'z');
  }
  ProgramStreams not_db = Ralphctl({"audit", "verify", "--audit-db", db_});
  EXPECT_EQ(not_db.exit, 1);
  EXPECT_THAT(not_db.err, HasSubstr("reading the header: file is not a database [corrupt]"));
}

TEST_F(RalphctlAuditTest, BadCommandLinesExit2) {
  Populate(1);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"audit"}, ""},
      {{"audit", "frobnicate"}, "unknown subcommand 'frobnicate'"},
      {{"audit", "list", "--limit", "-1"}, "--limit -1 is not a number of rows"},
      {{"audit", "list", "--limit", "ten"}, "--limit ten is not a number of rows"},
      {{"audit", "list", "--limit"}, "option --limit needs a value"},
      {{"audit", "list", "--bogus"}, "unknown option --bogus"},
      {{"audit", "list", "extra"}, "unexpected argument 'extra'"},
      {{"audit", "verify", "--anchor", "17"}, "is not SEQ:HASH"},
      {{"audit", "verify", "--limit", "3"}, "--limit goes with list"},
      {{"audit", "list", "--anchor", "1:" + std::string(kGenesisHash)},
       "--anchor goes with verify"},
  };
  for (Case& c : cases) {
    // Right after the subcommand, so a value-less last option stays last.
    c.args.insert(c.args.begin() + std::min<size_t>(2, c.args.size()), {"--audit-db", db_});
    ProgramStreams run = Ralphctl(c.args);
    EXPECT_EQ(run.exit, 2) << fmt::format("{}", fmt::join(c.args, " "));
    EXPECT_THAT(run.err + run.out, HasSubstr(c.message))
        << fmt::format("{}", fmt::join(c.args, " "));
  }
  ProgramStreams help = Ralphctl({"audit", "--help"});
  EXPECT_EQ(help.exit, 0);
  EXPECT_THAT(help.out, HasSubstr("usage: ralphctl audit"));
  ProgramStreams top = Ralphctl({"--help"});
  EXPECT_THAT(top.out, HasSubstr("audit      list, verify and export the hash-chained audit log"));
}

}  // namespace
}  // namespace ralph::audit
