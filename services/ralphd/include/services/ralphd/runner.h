// JobRunner: runs each job in a sandbox on a thread of its own and reports
// back to the daemon's event loop through a queue (notify_fd() is readable
// when messages wait).
//
// Each running job has its own sandbox::SandboxService (the service is not
// thread-safe and its Wait blocks; one service per job thread keeps each
// service on one thread), named OwnedCgroupName("ralphd-job<id>"): when
// ralphd dies its jobs die with it (the parent-death signal of the
// service's spawner thread), the kernel removes their network namespaces,
// veths and socket-owned nft tables (on kernels without owned tables, the
// next network service's start sweeps them), and SweepLost() — a service of the
// same name base made by the next ralphd — removes their cgroups and
// volumes. A job is never orphaned; it is lost with its daemon.
//
// Cancel is thread-safe by construction: the job thread publishes a pidfd
// of the job's PID 1, and Cancel SIGKILLs through it (the pid namespace
// dies with its PID 1), or the job thread kills the job itself when the
// cancel came before it was running.
//
// A tty job (spec.stdio kPty) has a terminal writer besides: a thread that
// writes the input queued by WriteTerminal into the pty's master as the
// job reads it, so no caller ever blocks on a job that does not read.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "platform/log.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/plan.h"
#include "sandbox/service.h"
#include "services/ralphd/exec_audit.h"
#include "services/ralphd/store.h"
#include "services/ralphd/workspace.h"

namespace ralph::ralphd {

struct RunnerOptions {
  std::string sandbox_state_dir;  // the sandboxes' volumes and state (on VAR)
  sandbox::IdMapping ids;
  // Where the network service's and the runner's own messages go (any thread).
  std::function<void(LogLevel level, const std::string& message)> log;
  // Every job records its execs (sandbox record_exec) here, from its thread,
  // and flushes them before it reports its end. Borrowed; null: no
  // recording.
  ExecRecorderInterface* execs = nullptr;
  // The git a loop iteration's workspace is committed with (CommitWorkspace).
  std::string git = std::string(kDefaultGit);
};

struct RunnerMessage {
  enum class Kind { kStarted, kOutput, kNet, kFinished };
  Kind kind = Kind::kOutput;
  uint64_t job = 0;
  // kOutput
  OutputStream stream = OutputStream::kStdout;
  std::string data;
  // kNet
  sandbox::NetEvent net;
  // kFinished: the result, or why the job could not run; the files it
  // changed and whether its workspace was archived (result_tar_path).
  std::optional<sandbox::JobResult> result;
  std::optional<Error> error;
  bool cancelled = false;
  std::vector<FileRecord> files;
  std::optional<Error> files_error;
  // A loop iteration: the workspace's commit after it, or why there is none.
  std::optional<WorkspaceCommit> commit;
  std::optional<Error> commit_error;
};

struct JobLaunch {
  uint64_t job = 0;
  sandbox::SandboxSpec spec;
  std::string upload_tar;       // extracted into the workspace before start; "" for none
  std::string result_tar_path;  // the workspace archived here at the end
  // A loop iteration: the workspace is this host directory, bound at the
  // spec's workspace by the caller and kept from one iteration to the
  // next (the upload is extracted into it); after the run it is committed
  // into `git_dir` as `iteration` (workspace.h CommitWorkspace), and the
  // files listed are the workspace's.
  std::string host_workspace;
  std::string git_dir;
  uint64_t iteration = 0;
};

class JobRunner {
 public:
  static Result<std::unique_ptr<JobRunner>> Create(RunnerOptions options);
  // Kills every running job and joins its thread.
  ~JobRunner();

  int notify_fd() const { return notify_.get(); }
  // Makes notify_fd readable (another of the daemon's threads has news for
  // the loop); Take then returns whatever jobs posted, perhaps nothing.
  void Wake();
  // The waiting messages, in order; joins the threads of finished jobs.
  std::vector<RunnerMessage> Take();

  void Start(JobLaunch launch);
  // SIGKILLs the job (or has it killed as soon as it runs); a kFinished
  // message with cancelled = true follows. False when it is not running here.
  bool Cancel(uint64_t job);
  size_t running() const;
  // The host path of a running job's workspace, once its sandbox exists.
  std::optional<std::string> WorkspacePath(uint64_t job) const;
  // A tty job's terminal, from Start until it finishes. Input is queued
  // (kBusy past kMaxTerminalInputBytes not yet read by the job) and
  // written in order; a resize applies at once, or when the pty is made.
  // kInvalidState for a job without a terminal here.
  Result<void> WriteTerminal(uint64_t job, std::string_view input);
  Result<void> ResizeTerminal(uint64_t job, sandbox::TerminalSize size);
  static constexpr size_t kMaxTerminalInputBytes = 1 << 20;

  // Removes what the jobs of a dead ralphd left behind (their cgroups and
  // upper volumes; see the top of this file).
  static Result<void> SweepLost(const RunnerOptions& options, const std::vector<uint64_t>& jobs);

 private:
  struct TerminalWriter;  // runner.cpp
  struct Running {
    std::thread thread;
    UniqueFd pidfd;
    bool cancel = false;
    std::string workspace;
    std::shared_ptr<TerminalWriter> terminal;  // a tty job's
  };
  Result<std::shared_ptr<TerminalWriter>> Terminal(uint64_t job) const;
  JobRunner(RunnerOptions options, UniqueFd notify)
      : options_(std::move(options)), notify_(std::move(notify)) {}
  void Post(RunnerMessage message);
  void RunJob(JobLaunch launch);

  RunnerOptions options_;
  UniqueFd notify_;  // eventfd
  mutable std::mutex mutex_;
  std::vector<RunnerMessage> queue_;
  std::map<uint64_t, Running> running_;
  std::vector<std::thread> finished_;
};

}  // namespace ralph::ralphd
