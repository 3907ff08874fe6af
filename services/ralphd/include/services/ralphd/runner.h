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
// A VM job (JobLaunch::in_vm) runs through sandbox/vm instead: QEMU is the
// PID 1 of a namespace job of the job's own service (the same name, so the
// same sweep), the job runs in the namespace sandbox inside the guest, and
// its output, terminal, signals and result come over the control channel;
// Cancel SIGKILLs QEMU through its pidfd (the VM goes with it). Its files
// stay in the guest: no workspace is extracted or archived, and the
// files' record says so.
//
// A tty job (spec.stdio kPty) has a terminal writer besides: a thread that
// writes the input queued by WriteTerminal into the pty's master as the
// job reads it, so no caller ever blocks on a job that does not read.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
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
#include "sandbox/vm/vm_job.h"
#include "sandbox/vm/vm_pool.h"
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
  // How VM jobs run (sandbox/vm: run directory, guest image, accelerator,
  // the jail's ids); unset, a VM job fails naming it.
  std::optional<sandbox::vm::VmJobOptions> vm;
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
  // Runs in a VM of its own (RunnerOptions::vm); no upload, no host
  // workspace (the guest shares no filesystem with the host yet).
  bool in_vm = false;
  // A VM job takes a booted VM from this profile's pool when one waits
  // and fits (SetVmPools); else it boots its own.
  std::string vm_pool;
};

// A policy profile's pool of VMs booted ahead (<profile vm-pool="N">).
struct VmPoolSpec {
  std::string profile;
  sandbox::SandboxSpec shape;  // the profile's limits on the job base
  size_t size = 0;
  bool operator==(const VmPoolSpec& other) const;
};

struct VmPoolStatus {
  std::string profile;
  size_t size = 0;
  size_t waiting = 0;
  size_t booted = 0;       // VMs booted for it so far
  size_t taken = 0;        // of them, handed to a job
  std::string last_error;  // the last boot's failure, "" since one worked
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

  // The VM pools (replacing the previous set: a pool no longer listed, or
  // now of another shape or size, is drained). They are filled by a
  // thread of the runner's own, one boot at a time, never on a job's or
  // the caller's path; a job takes a VM in its own thread.
  void SetVmPools(std::vector<VmPoolSpec> pools);
  std::vector<VmPoolStatus> VmPools() const;
  // Stops the filler and destroys every waiting VM (the destructor does it
  // too). A boot in progress is finished first, then destroyed.
  void DrainVmPools();

  // Removes what the jobs of a dead ralphd left behind (their cgroups and
  // upper volumes; see the top of this file).
  static Result<void> SweepLost(const RunnerOptions& options, const std::vector<uint64_t>& jobs);
  // Removes what a dead ralphd's pooled VMs left (their QEMU died with it:
  // the jails' cgroups and volumes, named "ralphd-pool<n>@<owner>").
  static Result<void> SweepLostPools(const RunnerOptions& options);

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
  void RunVmJob(JobLaunch launch);

  struct Pool {
    VmPoolSpec spec;
    std::unique_ptr<sandbox::vm::VmPool> pool;
    VmPoolStatus status;
    std::chrono::steady_clock::time_point retry_at;  // after a failed boot
  };
  void FillPools();
  std::unique_ptr<sandbox::vm::VmJob> TakePooledVm(const std::string& profile,
                                                   const sandbox::SandboxSpec& spec);

  RunnerOptions options_;
  UniqueFd notify_;  // eventfd
  mutable std::mutex mutex_;
  std::vector<RunnerMessage> queue_;
  std::map<uint64_t, Running> running_;
  std::vector<std::thread> finished_;

  // The pools: pools_ and the status under pool_mutex_; the filler waits
  // on pool_cv_ for a change (a take, a new set, the stop).
  mutable std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::map<std::string, std::shared_ptr<Pool>> pools_;
  bool pool_stop_ = false;
  uint64_t next_pool_jail_ = 1;
  std::thread filler_;
};

}  // namespace ralph::ralphd
