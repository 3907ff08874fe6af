// Daemon: ralphd's core. It carries out the typed commands (commands.h) for
// every transport, keeps the state (store.h), runs jobs under the policy
// (policy.h, runner.h) with a concurrency limit, records every command that
// changes something or fails, every transport session, job state change,
// file written and connection attempt in the audit log
// (services/audit), and numbers every output chunk, state change and audit
// event in the event log.
//
// Single-threaded: Dispatch and OnRunnerMessages run on the event loop's
// thread (the runner's job threads only post messages).
//
// A restart loses nothing: jobs still queued stay queued and start again;
// a job the previous daemon was running died with it (runner.h) and is
// marked `lost` with the reason, and what its sandbox left is swept.
#pragma once

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>

#include "platform/log.h"
#include "platform/result.h"
#include "sandbox/plan.h"
#include "services/audit/audit_log.h"
#include "services/creds/store.h"
#include "services/memory/store.h"
#include "services/ralphd/commands.h"
#include "services/ralphd/memory_server.h"
#include "services/ralphd/policy.h"
#include "services/ralphd/runner.h"
#include "services/ralphd/store.h"
#include "services/ralphd/terminals.h"

namespace ralph::agents {
struct HomeFile;
}  // namespace ralph::agents

namespace ralph::ralphd {

struct DaemonOptions {
  std::string state_dir;  // VAR: ralphd.db, memory.db, jobs/, sandbox/, memory/
  std::string audit_db;   // default <state_dir>/audit.db
  JobEnvironment environment;
  size_t max_running = 2;
  // VM jobs (isolation vm, sandbox/vm): the run directory (default
  // <state_dir>/vm), the guest image and the accelerator. Unset: a job
  // that needs a VM is refused at submit, saying so.
  std::optional<sandbox::vm::VmJobOptions> vm;
  // Whether VM jobs can run, and why not: Open sets it from `vm`, the job
  // base (a VM's base must be an image file) and the host (CheckVmHost).
  VmSupport vm_support{false,
                       "this ralphd was started without a guest image for VM jobs "
                       "(ralphd --vm-guest DIR: the vmlinuz and initrd.img of ralph-vm-guest)"};
  // The firmware's Secure Boot state for the status ("on", "off", ...:
  // platform/secure_boot.h DescribeSecureBoot), read by the binary at start.
  std::string secure_boot = "unknown";
  sandbox::IdMapping ids;
  StoreOptions store;
  std::function<void(LogLevel level, const std::string& message)> log;
  // Every process a job starts is a "job.exec" audit row (exec_audit.h).
  // The ralphd binary has no switch for it; bench/ralphd compares without.
  bool record_exec = true;
  // An agent profile's tool by another program (its path inside the job's
  // sandbox), by profile name: "claude" -> "/opt/standin/ralph-agent-standin"
  // in tests. Absent: the tool's own name, looked up in the job's PATH.
  std::map<std::string, std::string> agent_programs;
  // The agents' credentials (docs/credentials.md): the encrypted store on
  // VAR (default <state_dir>/credentials), its device key outside it
  // (default <state_dir>/credentials.key), and where the live copies of
  // held accounts and the login homes are: a memory filesystem, checked.
  std::string creds_dir;
  std::string creds_key;
  std::string creds_live_dir = "/run/ralphd/credentials";
  // The git loop mode keeps each loop's repository with (workspace.h). It
  // is probed when the daemon opens; without a working one a loop job is
  // refused at submit, naming it.
  std::string git = std::string(kDefaultGit);
  // The agent-image store on VAR (services/ota/agent_image.h). Set: every
  // job with an agent (any profile, `command` included) runs on its current
  // image, which is checked against its recorded digest at start and at
  // every install or rollback; while none is usable such jobs are refused
  // with the reason. Empty: agent jobs run on `environment` like plain
  // jobs (development and tests). Plain jobs always run on `environment`.
  std::string agent_images;
  // The keyring agent-image bundles must be signed for (docs/ota.md).
  std::string keyring = "/etc/ralph/keyring";
  // A bundle installed at start while the store has no image yet (the
  // factory disk's, docs/image.md), removed once installed.
  std::string factory_agent_bundle;
  // The operator's break-glass (RecoveryRebootCommand): `arm` makes
  // RECOVERY the next boot (its failure is the command's); `reboot` asks
  // PID 1 to reboot, once the reply is on its way (AfterReply). Unset (a
  // development host, the tests): the command is refused as unsupported.
  struct RebootHooks {
    std::function<Result<void>()> arm;
    std::function<void()> reboot;
  };
  std::optional<RebootHooks> recovery_reboot;
};

// The HTTPS API's pairing registry as the core administers it; set when
// the API runs (the core never links the API).
class PairingAdminInterface {
 public:
  virtual ~PairingAdminInterface() = default;
  // A one-time offer: {"pairing": "<pairing string>", "qr": "<terminal QR
  // code>", "id": .., "expires": <unix seconds>, "address": ..}.
  virtual Result<nlohmann::json> CreateOffer() = 0;
  // {"pairings": [{"id", "name", "spki_sha256", "paired", "expires", "revoked"}]}
  virtual Result<nlohmann::json> List() = 0;
  // kNotFound for an unknown id, kInvalidState when already revoked.
  virtual Result<void> Revoke(std::string_view id, std::string_view actor) = 0;
};

class Daemon final : public DispatcherInterface {
 public:
  static Result<std::unique_ptr<Daemon>> Open(DaemonOptions options);
  ~Daemon() override;

  // Every command that changes something, and every refusal or failure, is
  // a "command" audit record; a read that succeeds is not (IsReadOnly).
  Reply Dispatch(const Caller& caller, const Command& command) override;
  void AfterReply() override;
  // One "api.session" (a client certificate) or "local.session" (a uid)
  // audit record: subject and caller the caller, peer where it came from.
  void SessionOpened(const Caller& caller, std::string_view peer) override;

  // Readable when job threads have posted; then call OnRunnerMessages().
  int notify_fd() const { return runner_->notify_fd(); }
  void OnRunnerMessages();

  // Told of every event appended (a transport forwards them to followers),
  // on the loop's thread. One listener per transport: each sets and clears
  // its own.
  enum class Listener { kLocalSocket, kApi };
  void SetEventListener(Listener which, std::function<void(const Event&)> listener) {
    listeners_[static_cast<size_t>(which)] = std::move(listener);
  }

  Store& store() { return *store_; }

  // Stores the audit records made since the last call as one AppendBatch
  // (one transaction, one durable commit for all of them), then emits their
  // events. The loop calls it after each round of work, so requests that
  // arrive together share one WAL sync instead of paying one each; a
  // reply can leave before its command's record is durable, by at most
  // that round (docs/ralphd.md, "Audit and events").
  void FlushAudit();

  // Borrowed; null (the default) answers the pairing commands with
  // kInvalidState: the API is off.
  void SetPairingAdmin(PairingAdminInterface* pairing) { pairing_ = pairing; }

  // Interactive terminals of tty jobs (terminals.h), for the streaming
  // transports. Attach: kNotFound for an unknown job, kInvalidState for a
  // job without a pty or already over; a job not running yet may be
  // attached to (its output starts when it does; input and the last
  // resize wait for it). Returns the attachment's id. Attach and detach
  // are audited (terminal.attach / terminal.detach: caller, job, reason);
  // the input is not. `replay` is the end of what the terminal already
  // printed (at most kTerminalReplayBytes, from a line start when cut), which
  // the transport sends after its acknowledgement and before any live
  // output: an operator attaching late still sees a login's URL and code or
  // the agent's last lines. Attach and the read of `replay` happen on the
  // loop's thread, so no output falls between the two or comes twice.
  struct AttachedTerminal {
    uint64_t attachment = 0;
    std::string replay;
  };
  static constexpr uint64_t kTerminalReplayBytes = 64 * 1024;
  Result<AttachedTerminal> AttachTerminal(const Caller& caller, uint64_t job,
                                          TerminalCallbacks callbacks);
  // kInvalidState for an attachment that is gone (detached, job over).
  Result<void> WriteTerminal(uint64_t attachment, std::string_view input);
  Result<void> ResizeTerminal(uint64_t attachment, uint16_t columns, uint16_t rows);
  // The job runs on; no callback of the attachment runs after it. A gone
  // attachment is ignored. `reason`: "detached", "disconnected", ...
  void DetachTerminal(uint64_t attachment, std::string_view reason);

 private:
  Daemon(DaemonOptions options, std::unique_ptr<Store> store,
         std::unique_ptr<audit::AuditLog> audit, std::unique_ptr<ExecAuditWriter> exec_audit,
         std::unique_ptr<JobRunner> runner)
      : options_(std::move(options)),
        store_(std::move(store)),
        audit_(std::move(audit)),
        exec_audit_(std::move(exec_audit)),
        runner_(std::move(runner)) {}

  Result<void> Recover();
  void Schedule();
  // False: the job waits (queued) for an account that others hold.
  Result<bool> Launch(JobRecord job);
  Result<void> SetState(JobRecord& job, JobState state, std::string reason = "");
  void Audit(std::string type, std::string subject, nlohmann::json details, uint64_t job = 0);
  void Emit(std::string kind, uint64_t job, nlohmann::json body);
  void Log(LogLevel level, const std::string& message) const;
  std::string JobDir(uint64_t job) const;

  Result<Reply> Status();
  nlohmann::json VmStatus() const;
  // The active policy's VM pools (<profile vm-pool>) to the runner.
  void ApplyVmPools();
  // What a VM job cannot have yet (an agent, the shared memory, a host
  // mount, a network, a directory base): kUnsupported naming the field.
  Result<void> CheckVmJob(const JobSubmitCommand& submit, const Profile& profile) const;
  Result<Reply> Submit(const Caller& caller, const JobSubmitCommand& command);
  Result<Reply> Start(uint64_t id);
  Result<Reply> Cancel(uint64_t id);
  Result<Reply> Logs(const JobLogsCommand& command);
  Result<Reply> Upload(const WorkspaceUploadCommand& command);
  Result<Reply> Download(const WorkspaceDownloadCommand& command);
  Result<Reply> PolicyGet(const PolicyGetCommand& command);
  Result<Reply> PolicySet(const Caller& caller, const std::string& document,
                          const std::string& comment, std::string_view type);
  Result<Reply> PolicyRollback(const Caller& caller, uint64_t version);
  Result<Reply> AuditList(const AuditListCommand& command);
  Result<Reply> AuditVerify(const AuditVerifyCommand& command);
  Result<Reply> AuditExport(const AuditExportCommand& command);
  Result<Reply> Carry(const Caller& caller, const Command& command);

  // Agent jobs (agent_jobs.cpp, docs/agent-profiles.md): the profile's
  // command line, environment and home; the tool's stdout parsed into
  // agent.* events and agent.tool_call audit rows; a usage summary.
  struct AgentRun;
  Result<void> CheckAgentSubmit(const JobSubmitCommand& command, const Profile& profile);
  Result<void> CheckAgentStart(const JobRecord& job);
  Result<bool> LaunchAgent(JobRecord& job, const JobSubmitCommand& submit, const Profile& profile);
  enum class AgentFeed { kChunk, kEnd };  // kEnd: the stream is over
  void OnAgentOutput(uint64_t job, std::string_view data, AgentFeed feed = AgentFeed::kChunk);
  // Before a finished agent job's state is set: its usage summary; a loop
  // job's state from its stop reason.
  void FinishAgent(JobRecord& job, JobState& state, std::string& reason);
  // Loop mode: a finished iteration is recorded and its stop conditions
  // checked; true when the next iteration has started (the job runs on).
  bool ContinueLoop(const RunnerMessage& message);
  Result<void> StartIteration(uint64_t job, AgentRun& run, std::string upload_tar);
  Result<Reply> Iterations(uint64_t job);
  Result<Reply> PauseLoop(uint64_t job, bool pause);
  // A loop iteration's diff, and the workspace rolled back to an
  // iteration's commit (docs/ralphd.md "Diff and rollback").
  Result<Reply> LoopDiff(const JobDiffCommand& command);
  Result<Reply> LoopRollback(const Caller& caller, const JobRollbackCommand& command);
  // kNotFound / kInvalidArgument naming the iteration when `job` has no
  // such iteration or it has no commit.
  Result<IterationRecord> CommittedIteration(uint64_t job, uint64_t iteration,
                                             std::string_view field);
  // Cancel of a running loop job: its running iteration is killed and is
  // its last; a paused loop between iterations (nothing runs) ends now.
  // False when `job` is not a loop job.
  Result<bool> CancelLoop(JobRecord& job);
  std::string AgentDir(uint64_t job) const;

  // Credentials (credentials.cpp, docs/credentials.md). The account a job
  // of agent profile `tool` under `profile` would hold: the first of the
  // granted scopes, most specific first, that has a stored credential.
  Result<std::optional<creds::AccountId>> GrantedAccount(std::string_view tool,
                                                         const Profile& profile);
  // Whether `profile`'s holder limit keeps a job from the account now.
  bool AccountBusy(const creds::AccountId& account, const Profile& profile) const;
  // A "creds.wait" event, once per waiting job.
  void NoteWaiting(uint64_t job, const creds::AccountId& account);
  // --creds-live-dir made (0711 root) if absent and checked to be on a
  // memory filesystem: where credentials are in the clear.
  Result<void> PrepareCredsLiveDir();
  // The job holds the account: its live copy (checked out when nobody
  // held it, into a tmpfs of its own as `credential_file`'s name, with the
  // profile's `settings` for that directory), a "creds.grant" audit row.
  // Returns the live directory, which the job binds as the tool's own.
  Result<std::string> HoldAccount(uint64_t job, const creds::AccountId& account,
                                  const Profile& profile, std::string_view credential_file,
                                  std::span<const agents::HomeFile> settings);
  // The job's account, if it held one, is released; its last holder writes
  // the live copy back and removes it ("creds.release"). Idempotent.
  void ReleaseAccount(uint64_t job);
  // Live copies a previous daemon left (it died holding them) written back.
  void RecoverCredentials();
  Result<Reply> CredsList();
  Result<Reply> CredsRevoke(const CredsRevokeCommand& command);
  // A login job: queued like a job, on a pty the caller attaches to.
  Result<Reply> CredsLogin(const Caller& caller, const CredsLoginCommand& command);
  // The login's sandbox (agent_jobs.cpp): the tool's login_argv, the
  // policy profile's limits and mounts, its egress the tool's login hosts
  // only, a home on the memory filesystem.
  Result<bool> LaunchLogin(JobRecord& job, const Profile& profile);
  // A finished login: what the tool wrote into its credential file is
  // stored ("creds.login"), the home removed; a login that wrote none fails.
  void FinishLogin(JobRecord& job, JobState& state, std::string& reason);
  // The shared agent memory (docs/memory.md): a job whose profile grants
  // it gets its socket bound at kMemorySocketDir and kMemorySocketEnv set.
  Result<void> GrantMemory(uint64_t job, const Profile& profile, sandbox::SandboxSpec& spec);
  Result<Reply> Memory(const Caller& caller, const Command& command);
  // The agent image (agent_image.cpp, docs/agents.md "On the appliance").
  // Checks the store's current image against its digest: the base of agent
  // jobs, or the reason there is none.
  void LoadAgentImage();
  // At start: the factory bundle, when the store has no image yet, on the
  // install thread.
  void InstallFactoryAgentImage();
  // Starts an install of `bundle` on its own thread (kBusy while one runs).
  Result<void> StartAgentImageInstall(std::string bundle, std::string caller, bool factory);
  // On the loop: a finished install's audit rows, event and new image;
  // false when none had finished.
  bool CollectAgentImageInstall();
  // An install was started and its outcome not yet collected.
  bool InstallRunning() const;
  // An install is running and no image is usable yet: agent jobs wait.
  bool AwaitingAgentImage() const;
  // The base of a job with an agent.
  Result<JobEnvironment> AgentEnvironment() const;
  Result<Reply> AgentImageStatus();
  Result<Reply> AgentImageInstall(const Caller& caller, const std::string& path);
  Result<Reply> AgentImageRollback(const Caller& caller);
  Result<Reply> RecoveryReboot(const Caller& caller, const RecoveryRebootCommand& command);
  bool reboot_after_reply_ = false;  // a recovery reboot waits for its reply

  DaemonOptions options_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<audit::AuditLog> audit_;
  // The jobs' exec rows (its own connection to the log); outlives runner_,
  // whose job threads record into it.
  std::unique_ptr<ExecAuditWriter> exec_audit_;
  std::unique_ptr<JobRunner> runner_;
  std::array<std::function<void(const Event&)>, 2> listeners_;
  PairingAdminInterface* pairing_ = nullptr;
  TerminalHub terminals_;
  // Audit records not yet stored, in order, with the job each is about.
  std::vector<std::pair<audit::AuditEvent, uint64_t>> pending_audit_;
  // The running agent jobs' parsers and counters (shared_ptr: AgentRun is
  // complete only in agent_jobs.cpp).
  std::map<uint64_t, std::shared_ptr<AgentRun>> agent_runs_;
  std::unique_ptr<creds::CredentialStore> creds_;
  struct Holding {
    std::string live_dir;   // the account's tmpfs, bound as the tool's directory
    std::string live_file;  // the credential in it
    std::set<uint64_t> jobs;
    bool revoked = false;     // revoked while held: nothing is written back
    bool superseded = false;  // a new login stored while held: neither
  };
  std::map<creds::AccountId, Holding> holdings_;
  std::map<uint64_t, creds::AccountId> held_by_job_;
  std::set<uint64_t> waiting_told_;
  struct LoginRun {
    creds::AccountId account;
    std::string dir;              // on the memory filesystem: the home's parent
    std::string credential_file;  // relative to the home
  };
  std::map<uint64_t, LoginRun> login_runs_;
  // Why loop mode is unavailable (DaemonOptions::git does not run); unset
  // when it is available.
  std::optional<Error> git_error_;
  // The memory's store for the API's commands (this thread), and the jobs'
  // sockets (a thread and connection of their own).
  std::unique_ptr<memory::MemoryStore> memory_;
  std::unique_ptr<MemoryServer> memory_server_;
  // The verified current agent image, or why there is none usable.
  std::optional<std::string> agent_image_;
  std::string agent_image_problem_;
  // The running or last agent-image install. Its thread sets `result` and
  // `done` under the mutex and wakes the loop (notify_fd); everything else,
  // `collected` and `install_` itself included, is the loop's alone.
  struct ImageInstall {
    std::string bundle;
    std::string caller;
    bool factory = false;
    std::string started;
    std::thread thread;
    bool done = false;
    bool collected = false;
    // What the install reports: "installed", "reused", "previous".
    std::optional<Result<nlohmann::json>> result;
  };
  std::mutex install_mutex_;
  std::unique_ptr<ImageInstall> install_;
  nlohmann::json install_status_;  // the API's view of install_ (null: none yet)
};

// What a terminal's `closed` reports: the exit code of a job that exited,
// 128 + the signal of one a signal ended (killed, timed out), -1 for one
// that never ran.
int TerminalExitStatus(const JobRecord& job);

// A job record as the API shows it.
nlohmann::json JobToJson(const JobRecord& job);
// The submit command in the request body's own format (DecodeRequest reads
// it back).
nlohmann::json SubmitToJson(const JobSubmitCommand& command);
// The agent object of a submit body.
nlohmann::json AgentToJson(const AgentRequest& agent);
// The loop object of a submit body.
nlohmann::json LoopToJson(const LoopRequest& loop);

}  // namespace ralph::ralphd
