// ralphd's SQLite store (services/ralphd/store.h) on a temp file: policy
// versions, jobs and the queue, output rotation and reads from any offset,
// recorded files, and the bounded event log — all surviving a reopen.
#include "services/ralphd/store.h"

#include <gtest/gtest.h>

#include "services/ralphd/policy.h"
#include "tests/support/run_program.h"
#include "tests/support/temp_dir.h"

namespace ralph::ralphd {
namespace {

class StoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<Store> Open(StoreOptions options = {}) {
    auto store = Store::Open(dir_ / "ralphd.db", options);
    EXPECT_TRUE(store) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }
  ralph::testing::TempDir dir_{"ralphd-store"};
};

TEST_F(StoreTest, StartsWithTheDefaultPolicyAndKeepsEveryVersion) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  auto active = store->ActivePolicy();
  ASSERT_TRUE(active);
  EXPECT_EQ(active->version, 1u);
  EXPECT_EQ(active->document, DefaultPolicyDocument());
  auto second = store->AddPolicy("<policy format=\"1\"/>", "empty", "uid:0");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->version, 2u);
  store.reset();

  store = Open();
  EXPECT_EQ(store->ActivePolicy()->version, 2u);
  EXPECT_EQ(store->Policy(1)->document, DefaultPolicyDocument());
  auto missing = store->Policy(9);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message(), "policy version 9: no such version");
  auto history = store->PolicyHistory(10);
  ASSERT_TRUE(history);
  ASSERT_EQ(history->size(), 2u);
  EXPECT_EQ((*history)[0].comment, "empty");
  EXPECT_EQ((*history)[0].actor, "uid:0");
}

TEST_F(StoreTest, JobsAndTheQueue) {
  auto store = Open();
  for (int i = 0; i < 3; ++i) {
    JobRecord job{.state = JobState::kQueued,
                  .profile = "default",
                  .request = {{"argv", {"echo", i}}},
                  .policy_version = 1,
                  .created = NowText()};
    auto id = store->InsertJob(job);
    ASSERT_TRUE(id);
    EXPECT_EQ(*id, static_cast<uint64_t>(i + 1));
  }
  JobRecord second = *store->Job(2);
  second.state = JobState::kFailed;
  second.exit_code = 3;
  second.reason = "exit status 3";
  second.usage = {{"wall_ms", 12}};
  ASSERT_TRUE(store->UpdateJob(second));
  store.reset();

  store = Open();
  auto queue = store->JobsIn(JobState::kQueued);
  ASSERT_TRUE(queue);
  ASSERT_EQ(queue->size(), 2u);
  EXPECT_EQ((*queue)[0].id, 1u);  // oldest first
  EXPECT_EQ((*queue)[1].id, 3u);
  auto job = store->Job(2);
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, JobState::kFailed);
  EXPECT_EQ(job->exit_code, 3);
  EXPECT_EQ(job->usage["wall_ms"], 12);
  EXPECT_EQ(job->request["argv"][1], 1);
  auto all = store->Jobs(std::nullopt, 2);
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id, 3u);  // newest first
  EXPECT_EQ(store->Job(8).error().message(), "job 8: no such job");
}

TEST_F(StoreTest, TheSummaryCountsJobsByStateWithThePolicyAndTheLastEvent) {
  auto store = Open();
  auto empty = store->Summarize();
  ASSERT_TRUE(empty) << empty.error().ToString();
  EXPECT_TRUE(empty->job_counts.empty());
  EXPECT_EQ(empty->policy_version, 1u);
  EXPECT_EQ(empty->last_event_seq, 0u);

  for (JobState state : {JobState::kQueued, JobState::kRunning, JobState::kQueued,
                         JobState::kFailed, JobState::kQueued}) {
    ASSERT_TRUE(store->InsertJob({.state = state, .profile = "default", .created = NowText()}));
  }
  ASSERT_TRUE(store->AddPolicy("<policy format=\"1\"/>", "empty", "uid:0"));
  ASSERT_TRUE(store->AppendEvent("state", 1, {{"state", "queued"}}));
  ASSERT_TRUE(store->AppendEvent("state", 2, {{"state", "running"}}));
  // Repeated: the statement is prepared once and reused.
  for (int i = 0; i < 2; ++i) {
    auto summary = store->Summarize();
    ASSERT_TRUE(summary) << summary.error().ToString();
    EXPECT_EQ(summary->job_counts,
              (std::map<JobState, uint64_t>{
                  {JobState::kQueued, 3}, {JobState::kRunning, 1}, {JobState::kFailed, 1}}));
    EXPECT_EQ(summary->policy_version, 2u);
    EXPECT_EQ(summary->last_event_seq, 2u);
  }
}

TEST_F(StoreTest, OutputIsRotatedAndReadableFromAnyOffset) {
  auto store = Open({.output_limit_bytes = 10});
  ASSERT_TRUE(store->AppendOutput(1, OutputStream::kStdout, "0123"));
  ASSERT_TRUE(store->AppendOutput(1, OutputStream::kStdout, "4567"));
  ASSERT_TRUE(store->AppendOutput(1, OutputStream::kStderr, "err"));
  auto middle = store->ReadOutput(1, OutputStream::kStdout, 2, 3);
  ASSERT_TRUE(middle);
  EXPECT_EQ(middle->offset, 2u);
  EXPECT_EQ(middle->data, "234");
  EXPECT_EQ(middle->end, 8u);
  EXPECT_EQ(middle->dropped_before, 0u);
  EXPECT_EQ(store->ReadOutput(1, OutputStream::kStderr, 0, 100)->data, "err");

  // Past the limit the oldest chunk goes: 12 bytes written, 8 kept.
  ASSERT_TRUE(store->AppendOutput(1, OutputStream::kStdout, "89ab"));
  auto rotated = store->ReadOutput(1, OutputStream::kStdout, 0, 100);
  ASSERT_TRUE(rotated);
  EXPECT_EQ(rotated->offset, 4u);
  EXPECT_EQ(rotated->dropped_before, 4u);
  EXPECT_EQ(rotated->data, "456789ab");
  EXPECT_EQ(rotated->end, 12u);
  // At the end: nothing, and where the end is.
  auto at_end = store->ReadOutput(1, OutputStream::kStdout, 12, 100);
  EXPECT_EQ(at_end->data, "");
  EXPECT_EQ(at_end->offset, 12u);
  store.reset();
  store = Open({.output_limit_bytes = 10});
  EXPECT_EQ(store->ReadOutput(1, OutputStream::kStdout, 6, 100)->data, "6789ab");
}

TEST_F(StoreTest, FilesAndEvents) {
  auto store = Open({.event_limit = 5});
  ASSERT_TRUE(store->RecordFiles(4, {{.path = "/work/b", .kind = "file", .size = 3, .sha256 = "ab"},
                                     {.path = "/work/a", .kind = "deleted"}}));
  auto files = store->Files(4);
  ASSERT_TRUE(files);
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].path, "/work/a");
  EXPECT_EQ((*files)[1].sha256, "ab");

  for (int i = 1; i <= 12; ++i) {
    auto event = store->AppendEvent("state", i % 2 ? 1 : 2, {{"n", i}});
    ASSERT_TRUE(event);
    EXPECT_EQ(event->seq, static_cast<uint64_t>(i));
  }
  auto after = store->EventsAfter(9, std::nullopt, 100);
  ASSERT_TRUE(after);
  ASSERT_EQ(after->size(), 3u);
  EXPECT_EQ((*after)[0].seq, 10u);
  EXPECT_EQ((*after)[0].body["n"], 10);
  auto job1 = store->EventsAfter(8, 1, 100);
  ASSERT_EQ(job1->size(), 2u);
  EXPECT_EQ((*job1)[1].seq, 11u);
  // Bounded: at most 5 (+ the trim batch) are kept; the oldest are gone.
  auto all = store->EventsAfter(0, std::nullopt, 100);
  EXPECT_LE(all->size(), 6u);
  EXPECT_EQ(all->back().seq, 12u);
  store.reset();
  store = Open({.event_limit = 5});
  EXPECT_EQ(*store->LastEventSeq(), 12u);
  EXPECT_EQ(store->AppendEvent("audit", 0, {})->seq, 13u);  // never reused
}

// A database made before loop mode (no loop_iterations table) gains the
// table when opened, its jobs kept; iterations read back in order.
TEST_F(StoreTest, AnOlderDatabaseGainsTheLoopIterationsTable) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  JobRecord job{.profile = "default", .created = NowText()};
  auto id = store->InsertJob(job);
  ASSERT_TRUE(id);
  store.reset();
  std::string db = dir_ / "ralphd.db";
  ASSERT_EQ(ralph::testing::RunProgramStreams({"sqlite3", db, "DROP TABLE loop_iterations"}).exit,
            0);

  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->Job(*id));
  for (uint64_t i : {2u, 1u}) {
    IterationRecord it{.job = *id,
                       .iteration = i,
                       .termination = "exited",
                       .exit_code = 0,
                       .commit = std::string(40, 'a'),
                       .changed = i == 1,
                       .usage = {{"input_tokens", 1000}},
                       .stdout_start = (i - 1) * 10,
                       .stdout_end = i * 10,
                       .stop = i == 2 ? "promise" : ""};
    ASSERT_TRUE(store->RecordIteration(it));
  }
  auto iterations = store->Iterations(*id);
  ASSERT_TRUE(iterations);
  ASSERT_EQ(iterations->size(), 2u);
  EXPECT_EQ((*iterations)[0].iteration, 1u);
  EXPECT_TRUE((*iterations)[0].changed);
  EXPECT_EQ((*iterations)[1].stop, "promise");
  EXPECT_EQ((*iterations)[1].ToJson()["transcript"]["offset"], 10);
  EXPECT_EQ((*iterations)[1].usage["input_tokens"], 1000);
  EXPECT_TRUE(store->Iterations(*id + 1)->empty());
}

}  // namespace
}  // namespace ralph::ralphd
