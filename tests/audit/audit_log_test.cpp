// The audit log on real SQLite files: chaining, durability under concurrent
// processes and SIGKILL, tampering through the sqlite3 shell, redaction on
// disk, and every kind of bad database file, including a read-only VAR.
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include <fmt/format.h>

#include "audit_test_util.h"
#include "killing_vfs.h"
#include "services/audit/audit_log.h"
#include "tests/support/test_seed.h"

namespace ralph::audit {
namespace {

using nlohmann::json;
using testing::DescribeKillAt;
using ::testing::HasSubstr;
using testing::KillAt;
using testing::KillingVfs;
using ::testing::Not;
using testing::ProgramStreams;
using testing::ReadFileText;
using testing::Sqlite;
using testing::TempDir;

AuditEvent Event(int n, std::string actor = "ota") {
  return {.actor = std::move(actor),
          .type = "install-started",
          .subject = "slot B",
          .details = {{"n", n}, {"version", "2.0.0"}}};
}

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    path_ = dir_ / "var/lib/ralph/audit.db";
    ProgramStreams probe = ::ralph::testing::RunProgramStreams({"sqlite3", "-version"});
    ASSERT_EQ(probe.exit, 0) << "these tests need the sqlite3 shell (Debian package sqlite3)";
  }

  std::unique_ptr<AuditLog> OpenLog(OpenMode mode = OpenMode::kCreateIfMissing) {
    auto log = AuditLog::Open(path_, mode);
    EXPECT_TRUE(log.has_value()) << log.error().ToString();
    return log ? std::move(*log) : nullptr;
  }

  void AppendN(AuditLog& log, int count) {
    for (int i = 0; i < count; ++i) {
      auto row = log.Append(Event(i));
      ASSERT_TRUE(row.has_value()) << row.error().ToString();
    }
  }

  // SQL through the shell, as a tamperer with write access to VAR would.
  void Tamper(const std::string& sql) {
    ProgramStreams run =
        Sqlite(path_,
               "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS "
               "audit_log_no_delete; " +
                   sql);
    ASSERT_EQ(run.exit, 0) << run.err;
  }

  VerifyReport VerifyNow(std::optional<ChainTip> anchor = std::nullopt) {
    auto log = OpenLog(OpenMode::kReadOnly);
    EXPECT_NE(log, nullptr);
    if (!log) return {};
    auto report = log->Verify(anchor);
    EXPECT_TRUE(report.has_value()) << report.error().ToString();
    return report ? *report : VerifyReport{};
  }

  // Forks a child that opens the log, arms KillingVfs at `at` (never when
  // .io is 0) and runs unit(log, i) for i = 0 .. units - 1, noting after
  // each how many returned (Returned()) and, once all did, the file changes
  // made (in <kill report>.count). The child's wait status.
  int RunKillableChild(KillAt at, int units, const std::function<bool(AuditLog&, int)>& unit) {
    std::filesystem::remove(KillReport());
    std::filesystem::remove(KillReport() + ".appended");
    pid_t pid = ::fork();
    if (pid == 0) {
      KillingVfs::Install();
      auto log = AuditLog::Open(path_, OpenMode::kExisting);
      if (!log) ::_exit(1);
      KillingVfs::Arm(at, KillReport());
      for (int i = 0; i < units; ++i) {
        if (!unit(**log, i)) ::_exit(2);
        // What has returned so far, for the parent to find in the log.
        std::ofstream(KillReport() + ".appended", std::ios::trunc) << i + 1;
      }
      std::ofstream(KillReport() + ".count", std::ios::trunc) << KillingVfs::Count();
      ::_exit(0);
    }
    int status = -1;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    return status;
  }
  int Returned() const {
    std::string text = ReadFileText(KillReport() + ".appended");
    return text.empty() ? 0 : std::stoi(text);
  }
  // Where KillingVfs reports the point it killed at.
  std::string KillReport() const { return dir_ / "killed-at"; }

  TempDir dir_;
  std::string path_;
};

TEST_F(AuditLogTest, AppendsFormOneChainThatSurvivesReopening) {
  auto clock = [] {
    return std::chrono::system_clock::time_point(std::chrono::milliseconds(1795372801123));
  };
  {
    auto log = AuditLog::Open(path_, OpenMode::kCreateIfMissing, {.clock = clock});
    ASSERT_TRUE(log.has_value()) << log.error().ToString();
    auto first = (*log)->Append(Event(1));
    ASSERT_TRUE(first.has_value()) << first.error().ToString();
    EXPECT_EQ(first->seq, 1);
    EXPECT_EQ(first->prev_hash, kGenesisHash);
    EXPECT_EQ(first->time, "2026-11-22T18:40:01.123Z");
    EXPECT_EQ(first->details, R"({"n":1,"version":"2.0.0"})");
    auto second = (*log)->Append(Event(2));
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(second->seq, 2);
    EXPECT_EQ(second->prev_hash, first->hash);
  }
  // The file is private to root.
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto log = OpenLog(OpenMode::kExisting);
  ASSERT_NE(log, nullptr);
  AppendN(*log, 3);
  auto rows = log->List();
  ASSERT_TRUE(rows.has_value());
  ASSERT_EQ(rows->size(), 5u);
  for (size_t i = 0; i < rows->size(); ++i) {
    EXPECT_EQ((*rows)[i].seq, static_cast<int64_t>(i + 1));
    if (i > 0) {
      EXPECT_EQ((*rows)[i].prev_hash, (*rows)[i - 1].hash);
    }
  }
  auto newest = log->List({.limit = 2});
  ASSERT_TRUE(newest.has_value());
  ASSERT_EQ(newest->size(), 2u);
  EXPECT_EQ((*newest)[0].seq, 4);
  EXPECT_EQ((*newest)[1].seq, 5);

  auto report = log->Verify();
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->ok()) << report->broken->message;
  EXPECT_EQ(report->rows, 5);
  EXPECT_EQ(report->tip, (ChainTip{5, rows->back().hash}));
  EXPECT_EQ(*log->Tip(), report->tip);
  // The anchor of an earlier state still verifies on the grown log.
  EXPECT_TRUE(log->Verify(ChainTip{2, (*rows)[1].hash})->ok());
}

// Queries by type, subject and sequence number: a tail or a page forward.
TEST_F(AuditLogTest, ListFiltersByTypeSubjectAndSeq) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  for (int n = 1; n <= 6; ++n) {
    AuditEvent event = Event(n, "ralphd");
    event.type = n % 2 ? "job.state" : "job.output";
    event.subject = n <= 3 ? "job 1" : "job 2";
    ASSERT_TRUE(log->Append(event));
  }
  auto seqs = [&](const ListQuery& query) {
    std::vector<int64_t> out;
    auto rows = log->List(query);
    EXPECT_TRUE(rows.has_value());
    if (rows) {
      for (const AuditRecord& row : *rows) out.push_back(row.seq);
    }
    return out;
  };
  EXPECT_EQ(seqs({.type = "job.state"}), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(seqs({.subject = "job 2"}), (std::vector<int64_t>{4, 5, 6}));
  EXPECT_EQ(seqs({.type = "job.state", .subject = "job 1"}), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(seqs({.after_seq = 4}), (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(seqs({.limit = 2, .after_seq = 1}), (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(seqs({.limit = 2, .from = ListFrom::kOldest, .after_seq = 1}),
            (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(seqs({.type = "nothing"}), (std::vector<int64_t>{}));
}

// A batch is consecutive rows chained in order, one time, stored as one.
TEST_F(AuditLogTest, BatchAppendsConsecutiveChainedRows) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 2);
  std::vector<AuditEvent> events;
  for (int n = 0; n < 5; ++n) events.push_back(Event(100 + n, "ralphd"));
  events[3].details["api_key"] = "sk-secret-in-a-batch";
  auto stored = log->AppendBatch(events);
  ASSERT_TRUE(stored.has_value()) << stored.error().ToString();
  ASSERT_EQ(stored->size(), 5u);
  auto rows = log->List({.after_seq = 2});
  ASSERT_TRUE(rows.has_value());
  ASSERT_EQ(rows->size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    const AuditRecord& row = (*rows)[i];
    EXPECT_EQ(row.seq, static_cast<int64_t>(3 + i));
    EXPECT_EQ(row.hash, (*stored)[i].hash);
    EXPECT_EQ(row.time, (*stored)[0].time);
    EXPECT_EQ(json::parse(row.details)["n"], 100 + static_cast<int>(i));
    if (i > 0) {
      EXPECT_EQ(row.prev_hash, (*rows)[i - 1].hash);
    }
  }
  EXPECT_EQ(json::parse((*rows)[3].details)["api_key"], "[REDACTED]");
  EXPECT_THAT(ReadFileText(path_) + ReadFileText(path_ + "-wal"),
              Not(HasSubstr("sk-secret-in-a-batch")));
  // An empty batch stores nothing and is no error.
  auto none = log->AppendBatch({});
  ASSERT_TRUE(none.has_value()) << none.error().ToString();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(log->Tip()->seq, 7);
  auto report = log->Verify();
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->ok()) << report->broken->message;
  // The next single append chains onto the batch.
  auto next = log->Append(Event(8));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->prev_hash, stored->back().hash);
}

// One bad event refuses the whole batch, naming its index and field.
TEST_F(AuditLogTest, BadEventRefusesTheWholeBatch) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 1);
  std::vector<AuditEvent> events = {Event(1), Event(2), Event(3)};
  events[2].actor = "Bad Actor";
  auto refused = log->AppendBatch(events);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(refused.error().message(), HasSubstr("events[2]: audit event actor \"Bad Actor\""));
  events[2].actor = "ota";
  events[1].details = {{"blob", std::string(kMaxDetailsBytes, 'a')}};
  refused = log->AppendBatch(events);
  ASSERT_FALSE(refused.has_value());
  EXPECT_THAT(refused.error().message(), HasSubstr("events[1]: audit event details are"));
  events[1].details = json::array();
  refused = log->AppendBatch(events);
  ASSERT_FALSE(refused.has_value());
  EXPECT_THAT(refused.error().message(), HasSubstr("events[1]: audit event details must be"));
  EXPECT_EQ(log->Tip()->seq, 1);
}

// Time ranges: since inclusive, until exclusive, on the stored text; with
// the other filters and a limit.
TEST_F(AuditLogTest, ListFiltersByTimeRange) {
  int64_t millis = 1795372801000;  // 2026-11-22T18:40:01.000Z
  auto log = AuditLog::Open(
      path_, OpenMode::kCreateIfMissing, {.clock = [&] {
        return std::chrono::system_clock::time_point(std::chrono::milliseconds(millis));
      }});
  ASSERT_TRUE(log.has_value()) << log.error().ToString();
  for (int n = 1; n <= 6; ++n) {
    AuditEvent event = Event(n, "ralphd");
    event.subject = n % 2 ? "job 1" : "job 2";
    ASSERT_TRUE((*log)->Append(event));
    millis += 1500;  // rows 1..6 at :01.000, :02.500, :04.000, :05.500, :07.000, :08.500
  }
  auto seqs = [&](const ListQuery& query) {
    std::vector<int64_t> out;
    auto rows = (*log)->List(query);
    EXPECT_TRUE(rows.has_value()) << rows.error().ToString();
    if (rows) {
      for (const AuditRecord& row : *rows) out.push_back(row.seq);
    }
    return out;
  };
  EXPECT_EQ(seqs({.since = "2026-11-22T18:40:04.000Z"}), (std::vector<int64_t>{3, 4, 5, 6}));
  EXPECT_EQ(seqs({.until = "2026-11-22T18:40:04.000Z"}), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(seqs({.since = "2026-11-22T18:40:02.500Z", .until = "2026-11-22T18:40:07.000Z"}),
            (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(seqs({.subject = "job 2", .since = "2026-11-22T18:40:02.501Z"}),
            (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(
      seqs({.limit = 1, .since = "2026-11-22T18:40:02.000Z", .until = "2026-11-22T18:40:06Z"}),
      (std::vector<int64_t>{4}));
  EXPECT_EQ(seqs({.since = "2026-11-23T00:00:00.000Z"}), (std::vector<int64_t>{}));
}

// The query indexes exist on a new log, come back on a log opened without
// them (no schema version change), and the by-job query uses its index.
TEST_F(AuditLogTest, QueryIndexesAreMadeWhenMissing) {
  auto indexes = [&] {
    ProgramStreams run =
        Sqlite(path_, "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name");
    EXPECT_EQ(run.exit, 0) << run.err;
    return run.out;
  };
  const std::string kAll = "audit_log_by_subject\naudit_log_by_time\naudit_log_by_type\n";
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    AppendN(*log, 3);
  }
  EXPECT_EQ(indexes(), kAll);
  ProgramStreams dropped = Sqlite(path_,
                                  "DROP INDEX audit_log_by_subject; DROP INDEX audit_log_by_type; "
                                  "DROP INDEX audit_log_by_time;");
  ASSERT_EQ(dropped.exit, 0) << dropped.err;
  EXPECT_EQ(indexes(), "");
  // A read-only handle lists without them and adds none.
  {
    auto log = OpenLog(OpenMode::kReadOnly);
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(log->List({.subject = "slot B"})->size(), 3u);
  }
  EXPECT_EQ(indexes(), "");
  ASSERT_NE(OpenLog(OpenMode::kExisting), nullptr);
  EXPECT_EQ(indexes(), kAll);
  ProgramStreams plan = Sqlite(path_,
                               "EXPLAIN QUERY PLAN SELECT seq FROM audit_log WHERE seq > 0 AND "
                               "subject = 'job 7' ORDER BY seq DESC LIMIT 100");
  ASSERT_EQ(plan.exit, 0) << plan.err;
  EXPECT_THAT(plan.out, HasSubstr("audit_log_by_subject"));
  EXPECT_TRUE(VerifyNow().ok());
}

TEST_F(AuditLogTest, SecretsNeverReachTheDisk) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AuditEvent event{.actor = "ralphctl",
                   .type = "credential-added",
                   .subject = "Authorization: Bearer SUBJECTSECRET123",
                   .details = {{"api_key", "APIKEYSECRET456"},
                               {"url", "https://ops:URLPASSWORD789@host/x?token=QUERYSECRET"},
                               {"pem",
                                "-----BEGIN PRIVATE KEY-----\nPEMBODYSECRET\n-----END PRIVATE "
                                "KEY-----"},
                               {"scope", "github"}}};
  auto row = log->Append(event);
  ASSERT_TRUE(row.has_value()) << row.error().ToString();
  EXPECT_EQ(row->subject, "Authorization: Bearer [REDACTED]");
  json details = json::parse(row->details);
  EXPECT_EQ(details["api_key"], "[REDACTED]");
  EXPECT_EQ(details["scope"], "github");
  EXPECT_EQ(details["url"], "https://ops:[REDACTED]@host/x?token=[REDACTED]");
  EXPECT_TRUE(log->Verify()->ok());
  // Every file SQLite writes (database, WAL), byte for byte.
  std::string on_disk;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ / "var/lib/ralph")) {
    on_disk += testing::ReadFileText(entry.path());
  }
  ASSERT_THAT(on_disk, HasSubstr("credential-added"));
  for (std::string_view secret :
       {"SUBJECTSECRET123", "APIKEYSECRET456", "URLPASSWORD789", "QUERYSECRET", "PEMBODYSECRET"}) {
    EXPECT_THAT(on_disk, Not(HasSubstr(std::string(secret)))) << secret;
  }
}

TEST_F(AuditLogTest, SqlCannotUpdateOrDeleteRowsWhileTheTriggersStand) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 2);
  ProgramStreams update = Sqlite(path_, "UPDATE audit_log SET subject='x' WHERE seq=1");
  EXPECT_NE(update.exit, 0);
  EXPECT_THAT(update.err, HasSubstr("audit log rows are append-only"));
  ProgramStreams remove = Sqlite(path_, "DELETE FROM audit_log WHERE seq=2");
  EXPECT_NE(remove.exit, 0);
  EXPECT_THAT(remove.err, HasSubstr("audit log rows are append-only"));
  EXPECT_TRUE(VerifyNow().ok());
}

TEST_F(AuditLogTest, ModifiedRowIsNamed) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 20);
  log.reset();
  Tamper(R"(UPDATE audit_log SET details='{"n":0,"version":"9.9.9"}' WHERE seq=17)");
  VerifyReport report = VerifyNow();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->message, "audit log row 17: hash mismatch (row modified)");
  EXPECT_EQ(report.rows, 16);
}

TEST_F(AuditLogTest, DeletedRowsAreNamed) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 10);
  log.reset();
  Tamper("DELETE FROM audit_log WHERE seq IN (4, 5)");
  VerifyReport report = VerifyNow();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->kind, BreakKind::kMissingRows);
  EXPECT_EQ(report.broken->message,
            "audit log row 4: missing (rows 4..5 deleted; the log continues at row 6)");
}

TEST_F(AuditLogTest, ReorderedRowsAreNamed) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 6);
  log.reset();
  Tamper(
      "UPDATE audit_log SET seq=-3 WHERE seq=3; UPDATE audit_log SET seq=3 WHERE seq=4; "
      "UPDATE audit_log SET seq=4 WHERE seq=-3;");
  VerifyReport report = VerifyNow();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 3);
  EXPECT_EQ(report.broken->message, "audit log row 3: hash mismatch (row modified)");
}

TEST_F(AuditLogTest, TruncatedTipIsCaughtByAnAnchor) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 10);
  ChainTip seen = *log->Tip();
  log.reset();
  Tamper("DELETE FROM audit_log WHERE seq > 7");
  // On its own, a truncated log is a valid shorter log (see chain.h).
  EXPECT_TRUE(VerifyNow().ok());
  VerifyReport report = VerifyNow(seen);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->kind, BreakKind::kTruncated);
  EXPECT_THAT(report.broken->message, HasSubstr("audit log row 8: missing: the log ends at row 7"));
}

TEST_F(AuditLogTest, RejectsMalformedEvents) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  auto bad_actor = log->Append({.actor = "OTA!", .type = "x"});
  ASSERT_FALSE(bad_actor.has_value());
  EXPECT_EQ(bad_actor.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(bad_actor.error().message(), HasSubstr("actor \"OTA!\" is not 1..64 of [a-z0-9._-]"));
  auto no_type = log->Append({.actor = "ota", .type = ""});
  ASSERT_FALSE(no_type.has_value());
  EXPECT_THAT(no_type.error().message(), HasSubstr("type \"\" is not"));
  auto array = log->Append({.actor = "ota", .type = "x", .details = json::array({1})});
  ASSERT_FALSE(array.has_value());
  EXPECT_THAT(array.error().message(), HasSubstr("details must be a JSON object, not array"));
  auto huge = log->Append(
      {.actor = "ota", .type = "x", .details = {{"blob", std::string(kMaxDetailsBytes, 'a')}}});
  ASSERT_FALSE(huge.has_value());
  EXPECT_THAT(huge.error().message(), HasSubstr("at most 65536"));
  // Nothing was stored by the refused appends.
  EXPECT_EQ(log->Tip()->seq, 0);
}

TEST_F(AuditLogTest, AppendBatchChainsInOrderInOneTransaction) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  AppendN(*log, 2);
  std::vector<AuditEvent> batch;
  for (int n = 10; n < 15; ++n) batch.push_back(Event(n));
  batch[2].details = {{"argv", json::array({"curl", "--token=s3cr3t"})}};
  auto rows = log->AppendBatch(batch);
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  ASSERT_EQ(rows->size(), 5u);
  for (size_t i = 0; i < rows->size(); ++i) {
    EXPECT_EQ((*rows)[i].seq, static_cast<int64_t>(3 + i));
    EXPECT_EQ((*rows)[i].subject, batch[i].subject);
    if (i > 0) {
      EXPECT_EQ((*rows)[i].prev_hash, (*rows)[i - 1].hash);
    }
  }
  // Redacted like any appended row.
  EXPECT_EQ((*rows)[2].details, R"({"argv":["curl","--token=[REDACTED]"]})");
  auto stored = log->List({.after_seq = 2});
  ASSERT_TRUE(stored.has_value());
  ASSERT_EQ(stored->size(), 5u);
  EXPECT_EQ(stored->back().hash, rows->back().hash);
  EXPECT_TRUE(VerifyNow().ok());
  EXPECT_EQ(log->Tip()->seq, 7);

  // One bad event refuses the whole batch, named by its index.
  std::vector<AuditEvent> bad = {Event(20), {.actor = "ota", .type = ""}, Event(21)};
  auto refused = log->AppendBatch(bad);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(refused.error().ToString(), HasSubstr("events[1]"));
  EXPECT_EQ(log->Tip()->seq, 7);
  auto empty = log->AppendBatch({});
  ASSERT_TRUE(empty.has_value());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(log->Tip()->seq, 7);
}

TEST_F(AuditLogTest, BusyLogGivesABusyErrorNotAHang) {
  auto log = AuditLog::Open(path_, OpenMode::kCreateIfMissing,
                            {.busy_timeout = std::chrono::milliseconds(50)});
  ASSERT_TRUE(log.has_value()) << log.error().ToString();
  // Another writer holds the write lock for the whole attempt.
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  auto blocked = (*log)->Append(Event(1));
  ASSERT_FALSE(blocked.has_value());
  EXPECT_EQ(blocked.error().code(), ErrorCode::kBusy);
  EXPECT_THAT(blocked.error().message(),
              HasSubstr("appending: starting a transaction: database is locked (another process "
                        "held it for more than 50 ms)"));
  ASSERT_EQ(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  EXPECT_TRUE((*log)->Append(Event(2)).has_value());
  EXPECT_EQ((*log)->Tip()->seq, 1);
}

// Each child process opens the (not yet existing) log itself and appends
// `per_child` rows; together they must form one unbroken chain.
TEST_F(AuditLogTest, ConcurrentProcessesFormOneChain) {
  constexpr int kChildren = 4;
  constexpr int kPerChild = 40;
  std::vector<pid_t> children;
  for (int c = 0; c < kChildren; ++c) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto log = AuditLog::Open(path_, OpenMode::kCreateIfMissing);
      if (!log) {
        fmt::print(stderr, "child {}: {}\n", c, log.error().ToString());
        ::_exit(1);
      }
      for (int i = 0; i < kPerChild; ++i) {
        auto row = (*log)->Append(
            {.actor = "test", .type = "concurrent", .details = {{"child", c}, {"i", i}}});
        if (!row) {
          fmt::print(stderr, "child {} append {}: {}\n", c, i, row.error().ToString());
          ::_exit(2);
        }
      }
      ::_exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  }
  auto log = OpenLog(OpenMode::kExisting);
  ASSERT_NE(log, nullptr);
  auto report = log->Verify();
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->ok()) << report->broken->message;
  EXPECT_EQ(report->rows, kChildren * kPerChild);
  // Every child's rows are all there, in the order it appended them.
  std::map<int, int> next;
  auto rows = log->List();
  ASSERT_TRUE(rows.has_value()) << rows.error().ToString();
  for (const AuditRecord& row : *rows) {
    json d = json::parse(row.details);
    int child = d["child"];
    EXPECT_EQ(d["i"].get<int>(), next[child]++) << "row " << row.seq;
  }
  for (int c = 0; c < kChildren; ++c) EXPECT_EQ(next[c], kPerChild) << "child " << c;
}

// A child appends and is SIGKILLed at a chosen file change of SQLite's
// (KillingVfs: a write, truncate or sync of the database or its WAL, before
// or after it), often inside a transaction. Every Append that returned must
// be in the log, at most the one in flight more, and the log must verify and
// keep growing after. Randomised: the seed is printed, RALPH_TEST_SEED
// replays a run.
TEST_F(AuditLogTest, SigkillAtAnyWriteLeavesAVerifiableChain) {
  ASSERT_NE(OpenLog(), nullptr);  // created once, so children only append
  std::string report_path = KillReport();
  constexpr int kMaxAppends = 1000;
  auto run_child = [&](KillAt at, int appends) {
    return RunKillableChild(at, appends, [](AuditLog& log, int i) {
      return log.Append(Event(i, "crash")).has_value();
    });
  };
  auto appended = [&] { return Returned(); };

  // How many file changes three appends make: the kills aim inside those.
  int status = run_child({}, 3);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  int64_t changes = std::stoll(ReadFileText(report_path + ".count"));
  ASSERT_GE(changes, 3) << "an append that changes no file";
  fmt::print("three appends make {} file changes\n", changes);

  std::mt19937 rng(::ralph::testing::TestSeed());
  auto log = OpenLog(OpenMode::kExisting);
  ASSERT_NE(log, nullptr);
  int64_t last_seq = log->Tip()->seq;
  for (int round = 0; round < 16; ++round) {
    KillAt at{.io = std::uniform_int_distribution<int64_t>(1, changes)(rng),
              .after = rng() % 2 == 1};
    status = run_child(at, kMaxAppends);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "round " << round << ": not killed at " << DescribeKillAt(at) << ", status " << status;
    std::string report = ReadFileText(report_path);
    std::string point = report.substr(0, report.find('\n'));
    ASSERT_EQ(point, DescribeKillAt(at)) << "round " << round;
    std::string what = report.substr(point.size() + 1);
    if (!what.empty() && what.back() == '\n') what.pop_back();
    fmt::print("round {}: killed {} ({}) after {} appends\n", round, point, what, appended());
    SCOPED_TRACE(fmt::format("round {}: killed {} ({})", round, point, what));

    auto report_after = log->Verify();
    ASSERT_TRUE(report_after.has_value()) << report_after.error().ToString();
    ASSERT_TRUE(report_after->ok()) << report_after->broken->message;
    int returned = appended();
    EXPECT_GE(report_after->tip.seq, last_seq + returned) << "an append that returned was lost";
    EXPECT_LE(report_after->tip.seq, last_seq + returned + 1);
    auto next = log->Append(Event(-1, "after-crash"));
    ASSERT_TRUE(next.has_value()) << next.error().ToString();
    EXPECT_EQ(next->seq, report_after->tip.seq + 1);
    EXPECT_EQ(next->prev_hash, report_after->tip.hash);
    last_seq = next->seq;
  }
  EXPECT_TRUE(VerifyNow().ok());
}

// A child appends batches of kBatch and is SIGKILLed at a chosen file
// change (KillingVfs) of one of them: after it, the log holds every batch
// that returned and at most the one in flight, whole, never part of one.
TEST_F(AuditLogTest, SigkillMidBatchLeavesAllOrNone) {
  ASSERT_NE(OpenLog(), nullptr);
  std::string report_path = KillReport();
  constexpr int kBatch = 7;
  auto run_child = [&](KillAt at, int batches) {
    return RunKillableChild(at, batches, [](AuditLog& log, int) {
      std::vector<AuditEvent> events;
      for (int i = 0; i < kBatch; ++i) events.push_back(Event(i, "batch"));
      return log.AppendBatch(events).has_value();
    });
  };
  auto appended = [&] { return Returned(); };
  // The file changes of two batches: the kills aim inside those.
  int status = run_child({}, 2);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  int64_t changes = std::stoll(ReadFileText(report_path + ".count"));
  fmt::print("two batches of {} make {} file changes\n", kBatch, changes);

  auto log = OpenLog(OpenMode::kExisting);
  ASSERT_NE(log, nullptr);
  int64_t last_seq = log->Tip()->seq;
  ASSERT_EQ(last_seq, 2 * kBatch);
  std::mt19937 rng(::ralph::testing::TestSeed());
  // Every change of the two batches once, before or after it by the seed.
  for (int64_t io = 1; io <= changes; ++io) {
    KillAt at{.io = io, .after = rng() % 2 == 1};
    status = run_child(at, 1000);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "not killed at " << DescribeKillAt(at) << ", status " << status;
    std::string report = ReadFileText(report_path);
    SCOPED_TRACE(fmt::format("killed {}", report));
    auto verified = log->Verify();
    ASSERT_TRUE(verified.has_value()) << verified.error().ToString();
    ASSERT_TRUE(verified->ok()) << verified->broken->message;
    int64_t added = verified->tip.seq - last_seq;
    EXPECT_EQ(added % kBatch, 0) << added << " rows: part of a batch";
    EXPECT_GE(added / kBatch, appended()) << "a batch that returned was lost";
    EXPECT_LE(added / kBatch, appended() + 1);
    auto next = log->Append(Event(-1, "after-crash"));
    ASSERT_TRUE(next.has_value()) << next.error().ToString();
    last_seq = next->seq;
  }
  EXPECT_TRUE(VerifyNow().ok());
}

TEST_F(AuditLogTest, MissingLogIsNotFoundUnlessCreating) {
  for (OpenMode mode : {OpenMode::kExisting, OpenMode::kReadOnly}) {
    auto log = AuditLog::Open(path_, mode);
    ASSERT_FALSE(log.has_value());
    EXPECT_EQ(log.error().code(), ErrorCode::kNotFound);
    EXPECT_EQ(log.error().message(), fmt::format("audit log {} does not exist", path_));
  }
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(AuditLogTest, NotADatabase) {
  std::string path = dir_ / "garbage.db";
  {
    std::ofstream out(path, std::ios::binary);
    out << std::string(4096, 'x');
  }
  auto log = AuditLog::Open(path, OpenMode::kCreateIfMissing);
  ASSERT_FALSE(log.has_value());
  EXPECT_EQ(log.error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(log.error().message(),
            fmt::format("audit log {}: reading the header: file is not a database", path));
}

TEST_F(AuditLogTest, AnotherApplicationsDatabase) {
  std::string path = dir_ / "other.db";
  ASSERT_EQ(Sqlite(path, "CREATE TABLE jobs (id INTEGER)").exit, 0);
  auto log = AuditLog::Open(path, OpenMode::kCreateIfMissing);
  ASSERT_FALSE(log.has_value());
  EXPECT_EQ(log.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(log.error().message(),
              HasSubstr("is an SQLite database but not a RalphOS audit log (application_id "
                        "0x00000000, 1 schema objects)"));
}

TEST_F(AuditLogTest, WrongSchemaVersion) {
  ASSERT_NE(OpenLog(), nullptr);
  ASSERT_EQ(Sqlite(path_, "PRAGMA user_version=7").exit, 0);
  auto log = AuditLog::Open(path_, OpenMode::kExisting);
  ASSERT_FALSE(log.has_value());
  EXPECT_EQ(log.error().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(log.error().message(),
            fmt::format("audit log {} has schema version 7; this build reads version 1", path_));
}

TEST_F(AuditLogTest, DirectoryInsteadOfAFile) {
  std::filesystem::create_directories(path_);
  auto log = AuditLog::Open(path_, OpenMode::kCreateIfMissing);
  ASSERT_FALSE(log.has_value());
  EXPECT_EQ(log.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(log.error().message(), HasSubstr("is a directory, not a database file"));
}

TEST_F(AuditLogTest, ReadOnlyHandleCannotAppend) {
  ASSERT_NE(OpenLog(), nullptr);
  auto log = OpenLog(OpenMode::kReadOnly);
  ASSERT_NE(log, nullptr);
  auto row = log->Append(Event(1));
  ASSERT_FALSE(row.has_value());
  EXPECT_EQ(row.error().code(), ErrorCode::kReadOnly);
  EXPECT_THAT(row.error().message(), HasSubstr("was opened read-only; events cannot be appended"));
}

// VAR mounted read-only (a real read-only tmpfs in a private mount
// namespace of a child process): opening for append fails with kReadOnly
// naming the cause, for an existing log and for a new one.
TEST_F(AuditLogTest, ReadOnlyVar) {
  ASSERT_EQ(::geteuid(), 0u) << "mounting a read-only VAR needs root";
  std::string var = dir_ / "var-ro";
  std::filesystem::create_directories(var);
  std::string results = dir_ / "results.txt";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::ofstream out(results);
    auto report = [&](const std::string& line) { out << line << "\n" << std::flush; };
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) ||
        ::mount("tmpfs", var.c_str(), "tmpfs", 0, "size=8m")) {
      report(fmt::format("setup failed: errno {}", errno));
      ::_exit(1);
    }
    std::string existing = var + "/audit.db";
    {
      auto log = AuditLog::Open(existing, OpenMode::kCreateIfMissing);
      if (!log || !(*log)->Append(Event(1)).has_value()) ::_exit(2);
    }
    if (::mount(nullptr, var.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) != 0) ::_exit(3);
    for (const std::string& path : {existing, var + "/new/audit.db"}) {
      auto log = AuditLog::Open(path, OpenMode::kCreateIfMissing);
      report(log ? "opened" : log.error().ToString());
    }
    auto readable = AuditLog::Open(existing, OpenMode::kReadOnly);
    if (readable) {
      auto verified = (*readable)->Verify();
      report(verified ? fmt::format("verified {} rows ok={}", verified->rows, verified->ok())
                      : verified.error().ToString());
    } else {
      report(readable.error().ToString());
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::string text = testing::ReadFileText(results);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << " " << text;
  std::istringstream lines(text);
  std::string existing, created, read;
  std::getline(lines, existing);
  std::getline(lines, created);
  std::getline(lines, read);
  EXPECT_EQ(existing, fmt::format("audit log {}/audit.db is read-only (read-only file system or "
                                  "file); events cannot be appended [read-only]",
                                  var));
  EXPECT_THAT(created, HasSubstr("Read-only file system [read-only]"));
  EXPECT_THAT(created, HasSubstr("creating directory"));
  // Reading (ralphctl audit verify) still works on a read-only VAR.
  EXPECT_EQ(read, "verified 1 rows ok=true");
}

}  // namespace
}  // namespace ralph::audit
