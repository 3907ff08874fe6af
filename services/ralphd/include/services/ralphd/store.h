// ralphd's state in SQLite on VAR (<state dir>/ralphd.db, 0600): the policy
// versions, the jobs and their queue, each job's output (bounded: the oldest
// chunks are dropped past a per-stream limit, so a reader asks for any byte
// offset and learns what was dropped), the files each job changed, and the
// event log (every output chunk, job state change and audit event with a
// sequence number; the oldest past a bound are dropped).
//
// One Store per daemon, used from its event loop thread. WAL with
// synchronous=NORMAL: a crash of the daemon loses nothing committed (the
// WAL is in the page cache); a power cut may lose the last transactions —
// the audit log (services/audit) is the durable record.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "platform/result.h"
#include "services/ralphd/commands.h"

struct sqlite3;
struct sqlite3_stmt;

namespace ralph::ralphd {

struct StoreOptions {
  // Output kept per job and stream; older chunks are dropped.
  uint64_t output_limit_bytes = 8u << 20;
  // Events kept; older ones are dropped.
  uint64_t event_limit = 100000;
};

struct PolicyVersion {
  uint64_t version = 0;
  std::string time;
  std::string actor;
  std::string comment;
  std::string document;
};

struct JobRecord {
  uint64_t id = 0;
  JobState state = JobState::kQueued;
  std::string profile;
  nlohmann::json request = nlohmann::json::object();  // the submit command as JSON
  uint64_t policy_version = 0;
  std::string created;  // RFC 3339 UTC, "" when not yet
  std::string started;
  std::string finished;
  std::string termination;  // "exited", "signaled", "timed-out", "killed", or ""
  int exit_code = -1;
  int signal = 0;
  nlohmann::json usage = nlohmann::json::object();  // wall_ms, cpu_ms, max_rss_kib, ...
  std::string reason;                               // why it failed, was cancelled or lost
  bool workspace_uploaded = false;
};

struct FileRecord {
  std::string path;    // absolute inside the sandbox
  std::string kind;    // "file", "symlink", "deleted"
  uint64_t size = 0;   // bytes (a symlink: its target's length)
  std::string sha256;  // of the content (files), "" otherwise
};

// One iteration of a loop job: its run, what it cost, its commit of the
// workspace, and where its transcript is in the job's stdout.
struct IterationRecord {
  uint64_t job = 0;
  uint64_t iteration = 0;  // 1-based
  std::string started;
  std::string finished;
  std::string termination;  // as JobRecord's; "" when it could not run
  int exit_code = -1;
  int signal = 0;
  std::string error;     // why it could not run, or its commit failed
  std::string commit;    // the workspace's git commit after it (hex), "" when none
  bool changed = false;  // the workspace differs from the previous commit
  nlohmann::json usage = nlohmann::json::object();  // the agent's usage of this run
  uint64_t stdout_start = 0;  // [start, end) of the job's stdout: its transcript
  uint64_t stdout_end = 0;
  std::string stop;  // the stop reason when the loop stopped after it, else ""
  nlohmann::json ToJson() const;
};

struct OutputSlice {
  uint64_t offset = 0;  // where `data` starts (> the asked offset when that was dropped)
  std::string data;
  uint64_t end = 0;             // everything the stream ever wrote
  uint64_t dropped_before = 0;  // bytes below the oldest kept one
};

struct Event {
  uint64_t seq = 0;
  std::string time;
  std::string kind;  // "output", "state", "audit"
  uint64_t job = 0;  // 0: not about a job
  nlohmann::json body = nlohmann::json::object();
  nlohmann::json ToJson() const;
};

class Store {
 public:
  // Opens or creates the database; a new one gets the default policy
  // (policy.h DefaultPolicyDocument) as version 1.
  static Result<std::unique_ptr<Store>> Open(const std::string& path, StoreOptions options = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // --- policy: versions are never changed, only added ---
  Result<PolicyVersion> ActivePolicy();
  Result<PolicyVersion> Policy(uint64_t version);  // kNotFound naming the version
  // Adds a version and makes it the active one. The caller has validated it.
  Result<PolicyVersion> AddPolicy(const std::string& document, const std::string& comment,
                                  const std::string& actor);
  Result<std::vector<PolicyVersion>> PolicyHistory(uint64_t limit);  // newest first

  // --- jobs ---
  Result<uint64_t> InsertJob(const JobRecord& job);  // returns the new id
  Result<void> UpdateJob(const JobRecord& job);
  Result<JobRecord> Job(uint64_t id);  // kNotFound "job 7: no such job"
  // Newest first; all states when `state` is empty.
  Result<std::vector<JobRecord>> Jobs(std::optional<JobState> state, uint64_t limit);
  // Oldest first: the queue.
  Result<std::vector<JobRecord>> JobsIn(JobState state);
  // What the status command shows, from one statement (one read snapshot,
  // no job loaded): the jobs in each state (a state without jobs is
  // absent), the active policy version, the last event's seq.
  struct Summary {
    std::map<JobState, uint64_t> job_counts;
    uint64_t policy_version = 0;
    uint64_t last_event_seq = 0;
  };
  Result<Summary> Summarize();

  // --- output ---
  Result<void> AppendOutput(uint64_t job, OutputStream stream, std::string_view data);
  Result<uint64_t> OutputEnd(uint64_t job, OutputStream stream);
  Result<OutputSlice> ReadOutput(uint64_t job, OutputStream stream, uint64_t offset,
                                 uint64_t limit);

  // --- files changed by a job ---
  Result<void> RecordFiles(uint64_t job, const std::vector<FileRecord>& files);
  Result<std::vector<FileRecord>> Files(uint64_t job);

  // --- events ---
  Result<Event> AppendEvent(std::string kind, uint64_t job, nlohmann::json body);
  Result<std::vector<Event>> EventsAfter(uint64_t after, std::optional<uint64_t> job,
                                         uint64_t limit);
  Result<uint64_t> LastEventSeq();

  // --- loop iterations (table loop_iterations, added to older databases
  // when they are opened) ---
  Result<void> RecordIteration(const IterationRecord& iteration);
  Result<std::vector<IterationRecord>> Iterations(uint64_t job);

 private:
  Store(sqlite3* db, StoreOptions options) : db_(db), options_(options) {}
  Error DbError(std::string_view what) const;
  Result<void> Exec(const char* sql, std::string_view what);
  // The statement of `sql`, prepared on first use and kept (store.cpp's PREPARE).
  Result<sqlite3_stmt*> Cached(std::string_view sql, std::string_view what);

  sqlite3* db_;
  StoreOptions options_;
  uint64_t events_since_trim_ = 0;
  std::map<std::string, sqlite3_stmt*, std::less<>> statements_;
};

// The current time as the store records it: RFC 3339 UTC with milliseconds.
std::string NowText();

}  // namespace ralph::ralphd
