// The exec audit writer with a fake sink: rows in order, batched (a trickle
// gathered until a flush); a job past its row limit counted in one row; a full
// queue drops records and writes their count after the job's queued rows;
// a failing sink is logged, never silent; the event of one exec is redacted.
#include "services/ralphd/exec_audit.h"

#include <gtest/gtest.h>

#include "fake_audit_sink.h"

namespace ralph::ralphd {
namespace {

using FakeSink = audit::testing::FakeAuditSink;

sandbox::ExecRecord Exec(std::string path, std::vector<std::string> argv) {
  return {.pid = 42, .path = std::move(path), .argv = std::move(argv)};
}

std::string Describe(const audit::AuditEvent& event) {
  if (event.type == "job.exec-dropped")
    return event.subject + " dropped " + event.details["count"].dump();
  return event.subject + " " + event.details["path"].get<std::string>();
}

TEST(ExecAuditEvent, RedactsTheArgvAndNamesTheJob) {
  sandbox::ExecRecord record = Exec(
      "/usr/bin/curl", {"curl", "--token", "abc", "-H", "Authorization: Basic dXNl", "https://x"});
  record.missing = true;
  record.argv_truncated = true;
  audit::AuditEvent event = ExecAuditEvent(7, record);
  EXPECT_EQ(event.actor, "ralphd");
  EXPECT_EQ(event.type, "job.exec");
  EXPECT_EQ(event.subject, "job 7");
  EXPECT_EQ(event.details["path"], "/usr/bin/curl");
  EXPECT_EQ(event.details["argv"],
            nlohmann::json::array({"curl", "--token", "[REDACTED]", "-H",
                                   "Authorization: Basic [REDACTED]", "https://x"}));
  EXPECT_EQ(event.details["pid"], 42);
  EXPECT_EQ(event.details["missing"], true);
  EXPECT_EQ(event.details["argv_truncated"], true);
  EXPECT_FALSE(event.details.contains("path_truncated"));
}

TEST(ExecAuditWriter, WritesInOrderInBatches) {
  auto owned = std::make_unique<FakeSink>();
  FakeSink* sink = owned.get();
  sink->Hold();
  ExecAuditWriter writer(std::move(owned), {.queue_capacity = 100, .max_batch = 3}, {});
  writer.Record(1, Exec("/bin/a", {}));
  sink->AwaitEntered(1);  // the writer holds a batch of one
  for (const char* path : {"/bin/b", "/bin/c", "/bin/d", "/bin/e"})
    writer.Record(1, Exec(path, {}));
  sink->Release();
  writer.Flush();
  std::vector<std::string> seen;
  for (const auto& event : sink->events()) seen.push_back(Describe(event));
  EXPECT_EQ(seen, (std::vector<std::string>{"job 1 /bin/a", "job 1 /bin/b", "job 1 /bin/c",
                                            "job 1 /bin/d", "job 1 /bin/e"}));
  EXPECT_EQ(sink->batches(), (std::vector<size_t>{1, 3, 1}));
  EXPECT_EQ(writer.stats().written, 5u);
  EXPECT_EQ(writer.stats().dropped, 0u);
}

TEST(ExecAuditWriter, ATrickleOfExecsIsGatheredIntoOneCommitUntilAFlush) {
  auto owned = std::make_unique<FakeSink>();
  FakeSink* sink = owned.get();
  // A linger no test outlasts: only the Flush ends it.
  ExecAuditWriter writer(std::move(owned),
                         {.queue_capacity = 100, .max_batch = 50, .linger = std::chrono::hours(1)},
                         {});
  for (const char* path : {"/bin/a", "/bin/b", "/bin/c"}) writer.Record(1, Exec(path, {}));
  writer.Flush();
  EXPECT_EQ(sink->batches(), (std::vector<size_t>{3}));
  EXPECT_EQ(writer.stats().written, 3u);
}

TEST(ExecAuditWriter, AFullQueueDropsAndWritesTheCountAfterTheQueuedRows) {
  auto owned = std::make_unique<FakeSink>();
  FakeSink* sink = owned.get();
  sink->Hold();
  ExecAuditWriter writer(std::move(owned), {.queue_capacity = 2, .max_batch = 1}, {});
  writer.Record(1, Exec("/bin/a", {}));
  sink->AwaitEntered(1);  // /bin/a is out of the queue, in the held batch
  writer.Record(1, Exec("/bin/b", {}));
  writer.Record(2, Exec("/bin/c", {}));
  // The queue holds 2: these are dropped, counted per job.
  writer.Record(1, Exec("/bin/d", {}));
  writer.Record(2, Exec("/bin/e", {}));
  writer.Record(2, Exec("/bin/f", {}));
  EXPECT_EQ(writer.stats().dropped, 3u);
  sink->Release();
  writer.Flush();
  std::vector<std::string> seen;
  for (const auto& event : sink->events()) seen.push_back(Describe(event));
  EXPECT_EQ(seen, (std::vector<std::string>{"job 1 /bin/a", "job 1 /bin/b", "job 2 /bin/c",
                                            "job 1 dropped 1", "job 2 dropped 2"}));
  EXPECT_EQ(writer.stats().written, 3u);
}

TEST(ExecAuditWriter, ExecsPastAJobsRowLimitAreCountedInOneRowWhenItEnds) {
  auto owned = std::make_unique<FakeSink>();
  FakeSink* sink = owned.get();
  ExecAuditWriter writer(std::move(owned), {.max_rows_per_job = 2}, {});
  for (const char* path : {"/bin/a", "/bin/b", "/bin/c", "/bin/d", "/bin/e"})
    writer.Record(1, Exec(path, {}));
  writer.Record(2, Exec("/bin/x", {}));  // another job has its own limit
  writer.FinishJob(1);
  writer.FinishJob(2);
  std::vector<std::string> seen;
  for (const auto& event : sink->events()) seen.push_back(Describe(event));
  EXPECT_EQ(seen, (std::vector<std::string>{"job 1 /bin/a", "job 1 /bin/b", "job 2 /bin/x",
                                            "job 1 dropped 3"}));
  EXPECT_NE(sink->events().back().details["reason"].get<std::string>().find("(2)"),
            std::string::npos);
  EXPECT_EQ(writer.stats().written, 3u);
  EXPECT_EQ(writer.stats().dropped, 3u);
  // A finished job is forgotten: a job of the same id later starts afresh.
  writer.Record(1, Exec("/bin/f", {}));
  writer.FinishJob(1);
  EXPECT_EQ(Describe(sink->events().back()), "job 1 /bin/f");
}

TEST(ExecAuditWriter, AFailedAppendIsLoggedAndCounted) {
  auto owned = std::make_unique<FakeSink>();
  owned->Fail(Error::Make(ErrorCode::kIo, "disk on fire"));
  std::vector<std::string> logged;
  std::mutex logged_mutex;
  ExecAuditWriter writer(std::move(owned), {}, [&](LogLevel level, const std::string& message) {
    std::lock_guard lock(logged_mutex);
    EXPECT_EQ(level, LogLevel::kError);
    logged.push_back(message);
  });
  writer.Record(3, Exec("/bin/a", {}));
  writer.Flush();  // returns: the loss is handled, not waited on forever
  EXPECT_EQ(writer.stats().failed, 1u);
  EXPECT_EQ(writer.stats().written, 0u);
  std::lock_guard lock(logged_mutex);
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_NE(logged[0].find("1 exec rows lost"), std::string::npos) << logged[0];
  EXPECT_NE(logged[0].find("disk on fire"), std::string::npos) << logged[0];
}

}  // namespace
}  // namespace ralph::ralphd
