// SandboxService: the long-running owner of all sandboxes of a process
// (ralphd embeds one; `ralph-sandbox run` makes one for a single job).
//
// Lifecycle of a job: Create (validate, plan, make the job's upper volume
// and cgroup) -> Run (clone3 the job into its namespaces, set up its
// network, let it exec) -> Wait (drain stdout/stderr, enforce the timeout,
// reap, report) -> Destroy (kill anything left, remove network, cgroup,
// volume and state directory). Kill may be called at any time.
//
// Jobs are spawned in-process: no helper binary is executed. The service is
// not thread-safe (ralphd drives it from one event loop); several services
// may run in one process. Each has a spawner thread of its own, the parent
// of its jobs: a job's parent-death signal follows that thread, which lives
// as long as the service (so any thread may call Run).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "platform/log.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/cgroup.h"
#include "sandbox/net/network_service.h"
#include "sandbox/plan.h"
#include "sandbox/seccomp.h"
#include "sandbox/spec.h"
#include "sandbox/storage.h"

namespace ralph::sandbox {

class Spawner;  // sandbox/src/spawner.h (private)

// Creates a job's network between clone and exec (see job_network.h). The
// production one wraps a NetworkService (MakeNetworkProvider); tests may
// inject fakes.
class NetworkProviderInterface {
 public:
  virtual ~NetworkProviderInterface() = default;
  virtual Result<std::unique_ptr<JobNetwork>> Create(const std::string& job_id, pid_t child_pid,
                                                     const NetworkSpec& spec) = 0;
  // Starts what the first Create needs (the network service) and makes
  // sure what a job with `spec` needs ahead (its nft table) is made; nothing
  // when both are. SandboxService::Run calls it while the job's child is
  // being cloned, before Create. Thread-safe; optional.
  virtual Result<void> Prepare(const NetworkSpec& /*spec*/) { return {}; }
};

// The JobNetwork provider from sandbox/net when it is linked in, else nullptr
// (jobs with network.enabled then fail with kUnsupported). The provider owns
// its NetworkService (no process-wide one): started with `config` by the
// first networked job (a run without network never pays for it; a start
// failure is that job's error, and the next job tries again) and stopped
// when the provider is destroyed. Several providers, in one process or
// many, may share a netns (see network_service.h). `events` receives every
// job's connection and DNS events; it may be null.
std::unique_ptr<NetworkProviderInterface> MakeNetworkProvider(const NetworkServiceConfig& config,
                                                              NetEventSinkInterface* events);
// MakeNetworkProvider with the default NetworkServiceConfig, and `log` as
// its NetworkServiceConfig::log (which table clean-up path is in use, stale
// tables removed; may be empty).
std::unique_ptr<NetworkProviderInterface> MakeDefaultNetworkProvider(
    NetEventSinkInterface* events,
    std::function<void(LogLevel level, const std::string& message)> log = {});
// Removes the warm nft tables that launchers
// (NetworkServiceConfig::service_tables = kWarm) leave in the calling
// thread's netns for the default ifname prefix, and returns their names:
// what `ralph-sandbox drain` does besides unmounting idle volumes. Without
// sandbox/net: nothing to remove.
Result<std::vector<std::string>> RemoveWarmNetworkTables();

// How Destroy removes the veth pair of a job that has exited.
enum class NetworkTeardown {
  // Deleted before Destroy returns (a long-running service: nothing is left
  // when Destroy returns).
  kSynchronous,
  // Left to the kernel, which deletes it with the job's network namespace
  // once the job's last process is gone (JobNetwork::TeardownWithNamespace),
  // the way bwrap leaves its netns to the kernel (Destroy reaps the job
  // first). For a launcher that exits right after its one job.
  kWithNamespace,
};

// Bounds on what the service reads of one exec (SandboxSpec::record_exec):
// the job chooses the strings, the service only ever copies this much.
struct ExecRecordLimits {
  size_t max_path_bytes = 4096;
  size_t max_args = 64;
  // All arguments together; the argument that crosses it is cut there.
  size_t max_argv_bytes = 4096;
  // Records kept in JobResult::execs when Wait has no exec callback.
  size_t max_kept = 100000;
};

struct ServiceOptions {
  // Per-job state directories and upper-layer images live here (on VAR).
  std::string state_dir;
  // Names the service's cgroup parent and prefixes job names; make it unique
  // per service instance ("ralph-sandbox-<pid>").
  std::string name;
  IdMapping ids;
  // AUDIT_ARCH_* of the running architecture (ralph::arch::SeccompAuditArch());
  // 0: the architecture this binary was built for.
  uint32_t seccomp_audit_arch = 0;
  // Emptied upper volumes kept mounted for the next job (0: none; every job
  // then makes and destroys its own).
  size_t max_pooled_volumes = 16;
  // Emptied volumes left mounted (unlocked) on the state dir when the
  // service lets go of them, for the next process (VolumeOptions::
  // max_shared_mounted; a launcher sets it). 0: they are unmounted.
  size_t max_shared_volumes = 0;
  // Output kept per stream; the rest is counted and dropped.
  size_t output_limit_bytes = 16u << 20;
  NetworkTeardown network_teardown = NetworkTeardown::kSynchronous;
  // Create() leaves the sweeps of what killed owners left (their cgroups,
  // their volumes) to Housekeep(), and a volume let go warm is left as its
  // job left it, for the next process's Housekeep() (or its job's start)
  // to empty (VolumeOptions::defer_wipe): a launcher calls Housekeep()
  // while its job runs, so neither the sweeps nor a wipe are on its path.
  bool deferred_housekeeping = false;
  ExecRecordLimits exec_limits;
  // Where Create() reports what its own Housekeep() could not clean up (not
  // fatal: it costs space, not jobs). May be empty.
  std::function<void(LogLevel level, const std::string& message)> log;
};

enum class Termination { kExited, kSignaled, kTimedOut, kKilled };

// One execve/execveat call inside a job (SandboxSpec::record_exec), read
// while the caller was stopped at the call's entry. It is an observation,
// not a check: the call then continues (SECCOMP_USER_NOTIF_FLAG_CONTINUE),
// and another thread of the caller may change the strings after they were
// read. A call that fails (a PATH search trying each directory) is recorded
// too; `missing` says its file did not exist when it was read.
struct ExecRecord {
  pid_t pid = 0;  // the caller, in the service's pid namespace
  std::chrono::system_clock::time_point time;
  // As passed; an execveat relative to a directory fd or with AT_EMPTY_PATH
  // is "fd:N" (N the caller's fd) followed by "/" and the path, if any.
  std::string path;
  std::vector<std::string> argv;
  bool path_truncated = false;
  // More arguments or bytes than ExecRecordLimits allow, or argv memory that
  // could not be read: the arguments after the last one kept are not known.
  bool argv_truncated = false;
  bool missing = false;
};

struct JobResult {
  Termination termination = Termination::kExited;
  int exit_code = -1;  // kExited
  int signal = 0;      // kSignaled/kTimedOut/kKilled: the signal that ended PID 1
  rusage usage{};      // of the job's PID 1 and its reaped descendants
  CgroupUsage cgroup;
  std::string stdout_data;  // with a pty: everything the terminal printed
  std::string stderr_data;
  uint64_t output_dropped_bytes = 0;
  std::chrono::nanoseconds wall{0};
  // SandboxSpec::record_exec without an exec callback: the first
  // ExecRecordLimits::max_kept records, and how many more were dropped.
  std::vector<ExecRecord> execs;
  uint64_t execs_dropped = 0;
};

using JobId = std::string;

enum class OutputStream { kStdout, kStderr };
// Receives a job's output as Wait reads it, chunk by chunk (a daemon streams
// it live and stores it itself). With a pty all output is kStdout.
using OutputCallback = std::function<void(OutputStream stream, std::string_view chunk)>;
// Receives each ExecRecord of a job with SandboxSpec::record_exec, in order,
// on Wait's thread. The exec it describes waits until it returns: it should
// hand the record on (e.g. to a bounded queue) and not block.
using ExecCallback = std::function<void(ExecRecord record)>;

class SandboxService {
 public:
  // `cgroups`: the manager from DetectCgroups() (or a specific version);
  // `network`: may be null (then only network-disabled specs run).
  static Result<std::unique_ptr<SandboxService>> Create(
      ServiceOptions options, std::unique_ptr<CgroupManagerInterface> cgroups,
      std::unique_ptr<NetworkProviderInterface> network);
  ~SandboxService();  // destroys every job left

  Result<JobId> CreateJob(const SandboxSpec& spec);
  Result<void> Run(const JobId& id);
  // Blocks until the job has exited (or its timeout killed it) and its
  // output is drained. Once per job. With `on_output`, every chunk goes to
  // it as it is read instead of into JobResult (stdout_data and stderr_data
  // stay empty, nothing is dropped); it runs on the calling thread.
  // With record_exec, Wait is also the job's exec supervisor: its execs wait
  // while Wait is not running (as its writes do once a pipe is full), and
  // each goes to `on_exec`, or into JobResult::execs without it. The execs
  // of the job's start (Run) are delivered first.
  Result<JobResult> Wait(const JobId& id, const OutputCallback& on_output = {},
                         const ExecCallback& on_exec = {});
  // SIGKILLs the whole job (its PID 1, so the pid namespace, and the cgroup).
  Result<void> Kill(const JobId& id);
  // Tears everything down; idempotent for a known id.
  Result<void> Destroy(const JobId& id);

  // Host path of the job's workspace (in its upper layer), for collecting
  // results after Wait and before Destroy.
  Result<std::string> WorkspacePath(const JobId& id) const;
  // A pidfd for the job's PID 1 (readable when it exits), for event loops.
  Result<int> PidFd(const JobId& id) const;
  // A job with StdioMode::kPty, once Run has made its pty: a duplicate of
  // the pty's master, for another thread to write the job's input and
  // resize its window (ResizeTerminal) while Wait reads the output. The
  // master is non-blocking (a write the job does not read gets EAGAIN
  // rather than stalling the writer); after the job exits, what is written
  // is lost. kInvalidState for a job without a pty or not yet run. Like
  // every method, on the thread that drives the service (before Wait).
  Result<UniqueFd> TerminalFd(const JobId& id) const;

  // Sweeps what killed owners left (cgroups, volumes; see
  // SweepDeadOwnerCgroups and LoopVolumeFactory::Sweep) and empties the
  // volumes let go unwiped that nobody holds. Create() does it unless
  // deferred_housekeeping (and hands a failure to ServiceOptions::log).
  // Both sweeps always run; a failure costs space, not jobs, and is
  // returned (both failures in one error when both failed).
  Result<void> Housekeep();

  size_t job_count() const { return jobs_.size(); }
  CgroupVersion cgroup_version() const { return cgroups_->version(); }
  int landlock_abi() const { return landlock_abi_; }

  struct Job;

 private:
  SandboxService(ServiceOptions options, std::unique_ptr<CgroupManagerInterface> cgroups,
                 std::unique_ptr<NetworkProviderInterface> network,
                 std::unique_ptr<Spawner> spawner, SeccompProgram seccomp,
                 std::vector<sock_filter> exec_notify, int landlock_abi);
  Result<Job*> Find(const JobId& id) const;
  // Run with record_exec: takes the exec listener from the child and answers
  // its execs until the error pipe says it exec'd or failed.
  Result<void> SuperviseStart(Job& job, int sync_fd, int error_fd);
  Result<void> Teardown(Job& job);

  ServiceOptions options_;
  std::unique_ptr<CgroupManagerInterface> cgroups_;
  std::unique_ptr<NetworkProviderInterface> network_;
  std::unique_ptr<LoopVolumeFactory> volumes_;
  std::unique_ptr<Spawner> spawner_;
  SeccompProgram seccomp_;
  std::vector<sock_filter> exec_notify_filter_;
  sock_fprog exec_notify_{};
  int landlock_abi_;
  int last_cap_;
  uint64_t next_job_ = 1;
  std::map<JobId, std::unique_ptr<Job>> jobs_;
};

std::string_view TerminationName(Termination termination);

// Sets the window size of the terminal whose master (or slave) is `fd`
// (TIOCSWINSZ); the job's foreground process group gets SIGWINCH when it
// changed. kInvalidArgument for a dimension outside 1..kMaxTerminalDimension.
Result<void> ResizeTerminal(int fd, TerminalSize size);

}  // namespace ralph::sandbox
