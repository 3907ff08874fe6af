#include "services/ralphd/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "services/ralphd/workspace.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;

// Details of a "job.files" audit row stay far below the audit log's bound.
constexpr size_t kMaxAuditedFiles = 200;

Result<void> MakeDir(const std::string& path, mode_t mode = 0700) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", path), errno);
  }
  return {};
}

json FileToJson(const FileRecord& file) {
  json out = {{"path", file.path}, {"kind", file.kind}, {"size", file.size}};
  if (!file.sha256.empty()) out["sha256"] = file.sha256;
  return out;
}

std::string ProtocolName(sandbox::Protocol protocol) {
  switch (protocol) {
    case sandbox::Protocol::kTcp: return "tcp";
    case sandbox::Protocol::kUdp: return "udp";
    case sandbox::Protocol::kAny: return "any";
  }
  return "?";
}

json UsageToJson(const sandbox::JobResult& result) {
  return {
      {"wall_ms", std::chrono::duration_cast<std::chrono::milliseconds>(result.wall).count()},
      {"user_cpu_ms", result.usage.ru_utime.tv_sec * 1000 + result.usage.ru_utime.tv_usec / 1000},
      {"system_cpu_ms", result.usage.ru_stime.tv_sec * 1000 + result.usage.ru_stime.tv_usec / 1000},
      {"max_rss_kib", result.usage.ru_maxrss},
      {"cgroup_cpu_ns", result.cgroup.cpu_usage_ns},
      {"memory_peak_bytes", result.cgroup.memory_peak_bytes},
      {"oom_kills", result.cgroup.oom_kills}};
}

// The profile a job runs under when it names none: agent jobs get the
// policy's "agent" profile (the default policy's gives them their tools'
// API hosts and room to work), anything else "default".
std::string ResolveProfileName(const JobSubmitCommand& command, const Policy& policy) {
  if (command.profile) return *command.profile;
  if (command.agent && command.agent->profile != "command" && policy.Find("agent")) return "agent";
  return "default";
}

}  // namespace

json SubmitToJson(const JobSubmitCommand& command) {
  json out = {{"start", command.start}};
  if (command.profile) out["profile"] = *command.profile;
  if (!command.argv.empty()) out["argv"] = command.argv;
  if (command.agent) out["agent"] = AgentToJson(*command.agent);
  if (command.loop) out["loop"] = LoopToJson(*command.loop);
  if (!command.env.empty()) out["env"] = command.env;
  if (command.cwd) out["cwd"] = *command.cwd;
  json limits = json::object();
  if (command.limits.memory_bytes) limits["memory_bytes"] = *command.limits.memory_bytes;
  if (command.limits.cpu_millis) limits["cpu_millis"] = *command.limits.cpu_millis;
  if (command.limits.pids) limits["pids"] = *command.limits.pids;
  if (command.limits.disk_bytes) limits["disk_bytes"] = *command.limits.disk_bytes;
  if (command.limits.timeout_ms) limits["timeout_ms"] = *command.limits.timeout_ms;
  if (!limits.empty()) out["limits"] = limits;
  if (command.isolation) out["isolation"] = IsolationName(*command.isolation);
  if (command.tty) out["tty"] = true;
  if (command.columns) out["columns"] = *command.columns;
  if (command.rows) out["rows"] = *command.rows;
  if (command.workspace_git) {
    json git = {{"url", command.workspace_git->url}};
    if (command.workspace_git->ref) git["ref"] = *command.workspace_git->ref;
    out["workspace_git"] = std::move(git);
  }
  return out;
}

json JobToJson(const JobRecord& job) {
  json out = {{"id", job.id},
              {"state", JobStateName(job.state)},
              {"profile", job.profile},
              {"argv", job.request.value("argv", json::array())},
              {"request", job.request},
              {"policy_version", job.policy_version},
              {"created", job.created},
              {"started", job.started.empty() ? json() : json(job.started)},
              {"finished", job.finished.empty() ? json() : json(job.finished)},
              {"workspace_uploaded", job.workspace_uploaded},
              {"isolation", job.request.value("isolation", "namespaces")}};
  if (!job.termination.empty()) {
    out["termination"] = job.termination;
    out["exit_code"] = job.exit_code;
    out["signal"] = job.signal;
    out["usage"] = job.usage;
  } else if (job.usage.is_object() && !job.usage.empty()) {
    out["usage"] = job.usage;  // a loop cancelled between iterations: its agent's usage
  }
  if (!job.reason.empty()) out["reason"] = job.reason;
  return out;
}

Result<std::unique_ptr<Daemon>> Daemon::Open(DaemonOptions options) {
  if (options.audit_db.empty()) options.audit_db = options.state_dir + "/audit.db";
  // The jobs' mapped uids mount their overlays below sandbox/: they may
  // pass through (not list) the state dir; everything else is root's.
  TRY(MakeDir(options.state_dir, 0711));
  TRY(MakeDir(options.state_dir + "/jobs"));
  TRY(MakeDir(options.state_dir + "/sandbox", 0711));
  std::unique_ptr<Store> store = TRY(Store::Open(options.state_dir + "/ralphd.db", options.store));
  std::unique_ptr<audit::AuditLog> audit =
      TRY(audit::AuditLog::Open(options.audit_db, audit::OpenMode::kCreateIfMissing));
  // Every exec of every job is recorded, on a connection of its own.
  std::unique_ptr<ExecAuditWriter> exec_audit;
  if (options.record_exec) {
    exec_audit = std::make_unique<ExecAuditWriter>(
        TRY(audit::AuditLog::Open(options.audit_db, audit::OpenMode::kExisting)),
        ExecAuditOptions{}, options.log);
  }
  if (options.vm) {
    if (options.vm->run_dir.empty()) options.vm->run_dir = options.state_dir + "/vm";
    options.vm_support = {true, ""};
    Result<void> host = sandbox::vm::CheckVmHost(*options.vm);
    if (options.environment.base_kind != sandbox::BaseKind::kImage) {
      options.vm_support = {false,
                            "a VM job's base must be an image file (ralphd --job-image), and "
                            "this ralphd's is a directory"};
    } else if (!host) {
      options.vm_support = {false, host.error().message()};
    } else {
      // A dead ralphd's VMs died with it (the jail's parent-death signal);
      // their run directories stay until now.
      Result<size_t> swept = sandbox::vm::SweepDeadRunDirs(options.vm->run_dir);
      if (!swept && options.log) options.log(LogLevel::kError, swept.error().ToString());
    }
  }
  RunnerOptions runner_options{.sandbox_state_dir = options.state_dir + "/sandbox",
                               .ids = options.ids,
                               .log = options.log,
                               .execs = exec_audit.get(),
                               .git = options.git,
                               .vm = options.vm_support.available ? options.vm : std::nullopt};
  std::unique_ptr<JobRunner> runner = TRY(JobRunner::Create(runner_options));
  if (options.creds_dir.empty()) options.creds_dir = options.state_dir + "/credentials";
  if (options.creds_key.empty()) options.creds_key = options.state_dir + "/credentials.key";
  std::unique_ptr<creds::CredentialStore> credentials =
      TRY(creds::CredentialStore::Open(options.creds_dir, options.creds_key));
  std::unique_ptr<memory::MemoryStore> memory_store =
      TRY(memory::MemoryStore::Open(options.state_dir + "/memory.db"));
  std::unique_ptr<MemoryServer> memory_server = TRY(MemoryServer::Create(
      {.store_path = options.state_dir + "/memory.db",
       .socket_dir = options.state_dir + "/memory",
       .job_uid = options.ids.host_base,
       .log = options.log},
      TRY(audit::AuditLog::Open(options.audit_db, audit::OpenMode::kExisting))));
  std::unique_ptr<Daemon> daemon(new Daemon(std::move(options), std::move(store), std::move(audit),
                                            std::move(exec_audit), std::move(runner)));
  daemon->creds_ = std::move(credentials);
  // Loop mode commits every iteration with git: a daemon without it says
  // so now and refuses loop jobs, rather than a loop stopping later.
  Result<std::string> git = ProbeGit(daemon->options_.git);
  if (!git) {
    daemon->git_error_ = git.error();
    daemon->Log(LogLevel::kWarning, git.error().message() + "; loop jobs are refused");
  }
  daemon->memory_ = std::move(memory_store);
  daemon->memory_server_ = std::move(memory_server);
  TRY(daemon->Recover());
  daemon->ApplyVmPools();
  if (!daemon->options_.agent_images.empty()) {
    daemon->InstallFactoryAgentImage();
    daemon->LoadAgentImage();
  }
  daemon->Schedule();
  daemon->FlushAudit();
  return daemon;
}

Daemon::~Daemon() {
  // An install is not cut short: it finishes, and is audited, before the
  // daemon exits.
  if (install_ && install_->thread.joinable()) {
    install_->thread.join();
    CollectAgentImageInstall();
  }
  FlushAudit();
}

void Daemon::Log(LogLevel level, const std::string& message) const {
  if (options_.log) options_.log(level, message);
}

std::string Daemon::JobDir(uint64_t job) const {
  return fmt::format("{}/jobs/{}", options_.state_dir, job);
}

void Daemon::Emit(std::string kind, uint64_t job, json body) {
  Result<Event> event = store_->AppendEvent(std::move(kind), job, std::move(body));
  if (!event) {
    Log(LogLevel::kError, event.error().ToString());
    return;
  }
  for (const auto& listener : listeners_) {
    if (listener) listener(*event);
  }
}

void Daemon::Audit(std::string type, std::string subject, json details, uint64_t job) {
  pending_audit_.emplace_back(audit::AuditEvent{.actor = "ralphd",
                                                .type = std::move(type),
                                                .subject = std::move(subject),
                                                .details = std::move(details)},
                              job);
}

void Daemon::FlushAudit() {
  if (pending_audit_.empty()) return;
  std::vector<std::pair<audit::AuditEvent, uint64_t>> pending;
  pending.swap(pending_audit_);
  std::vector<audit::AuditEvent> events;
  events.reserve(pending.size());
  for (auto& [event, job] : pending) events.push_back(std::move(event));
  Result<std::vector<audit::AuditRecord>> records = audit_->AppendBatch(events);
  if (!records && records.error().code() == ErrorCode::kInvalidArgument) {
    // One malformed event refuses the batch: the others still go in, one by
    // one, as they would have alone.
    records = std::vector<audit::AuditRecord>();
    for (size_t i = 0; i < events.size(); ++i) {
      Result<audit::AuditRecord> record = audit_->Append(events[i]);
      if (!record) {
        Log(LogLevel::kError, fmt::format("audit: {}", record.error().ToString()));
        continue;
      }
      Emit("audit", pending[i].second, audit::RecordToJson(*record));
    }
    return;
  }
  if (!records) {
    // The actions are not undone for a broken audit log; the failure is loud.
    Log(LogLevel::kError,
        fmt::format("audit: {} records lost: {}", events.size(), records.error().ToString()));
    return;
  }
  for (size_t i = 0; i < records->size(); ++i) {
    Emit("audit", pending[i].second, audit::RecordToJson((*records)[i]));
  }
}

Result<void> Daemon::SetState(JobRecord& job, JobState state, std::string reason) {
  job.state = state;
  if (!reason.empty()) job.reason = std::move(reason);
  if (state == JobState::kRunning) job.started = NowText();
  if (IsFinal(state)) job.finished = NowText();
  TRY(store_->UpdateJob(job));
  json details = {{"state", JobStateName(state)}};
  if (!job.reason.empty()) details["reason"] = job.reason;
  if (!job.termination.empty()) {
    details["termination"] = job.termination;
    details["exit_code"] = job.exit_code;
    details["signal"] = job.signal;
  }
  Emit("state", job.id, details);
  Audit("job.state", fmt::format("job {}", job.id), details, job.id);
  if (IsFinal(state)) {
    if (memory_server_) memory_server_->RemoveJob(job.id);
    for (const TerminalAttachment& closed : terminals_.Close(job.id, TerminalExitStatus(job))) {
      Audit("terminal.detach", fmt::format("job {}", job.id),
            {{"caller", closed.caller}, {"attachment", closed.id}, {"reason", "job ended"}},
            job.id);
    }
  }
  return {};
}

Result<void> Daemon::Recover() {
  std::vector<JobRecord> running = TRY(store_->JobsIn(JobState::kRunning));
  std::vector<uint64_t> lost;
  for (JobRecord& job : running) {
    TRY(SetState(job, JobState::kLost,
                 "ralphd stopped while the job ran: its sandbox died with the daemon "
                 "(parent-death signal) and what it left was removed"));
    lost.push_back(job.id);
    waiting_told_.erase(job.id);
    // An agent job's home and loop workspace (its commits stay in jobs/ID).
    std::error_code ec;
    std::filesystem::remove_all(AgentDir(job.id), ec);
  }
  if (!lost.empty()) {
    RunnerOptions options{.sandbox_state_dir = options_.state_dir + "/sandbox",
                          .ids = options_.ids,
                          .log = options_.log};
    Result<void> swept = JobRunner::SweepLost(options, lost);
    if (!swept) Log(LogLevel::kError, swept.error().ToString());
  }
  if (options_.vm_support.available) {
    // A dead ralphd's pooled VMs (no job record names them).
    RunnerOptions options{.sandbox_state_dir = options_.state_dir + "/sandbox",
                          .ids = options_.ids,
                          .log = options_.log};
    Result<void> swept = JobRunner::SweepLostPools(options);
    if (!swept) Log(LogLevel::kError, swept.error().ToString());
  }
  RecoverCredentials();
  return {};
}

void Daemon::ApplyVmPools() {
  if (!options_.vm_support.available) return;
  Result<PolicyVersion> version = store_->ActivePolicy();
  if (!version) return;  // no policy yet: no pools
  Result<Policy> policy = ParsePolicy(version->document);
  if (!policy) return Log(LogLevel::kError, policy.error().ToString());
  std::vector<VmPoolSpec> pools;
  for (const auto& [name, profile] : policy->profiles) {
    if (profile.vm_pool == 0) continue;
    // The shape: the most a job of the profile may ask for, on the job
    // base; any job of it fits.
    Result<sandbox::SandboxSpec> shape =
        MakeJobSpec(profile, {.argv = {"true"}}, options_.environment);
    if (shape) {
      Result<sandbox::SandboxSpec> guest = sandbox::vm::GuestSpec(*shape);
      if (!guest) shape = guest.error();
    }
    if (!shape) {
      Log(LogLevel::kError,
          fmt::format("the VM pool of profile '{}': {}", name, shape.error().ToString()));
      continue;
    }
    pools.push_back({.profile = name, .shape = std::move(*shape), .size = profile.vm_pool});
  }
  runner_->SetVmPools(std::move(pools));
}

void Daemon::Schedule() {
  // Jobs waiting for an account others hold stay queued; the ones after
  // them may start.
  std::set<uint64_t> waiting;
  while (runner_->running() < options_.max_running) {
    Result<std::vector<JobRecord>> queue = store_->JobsIn(JobState::kQueued);
    if (!queue) {
      Log(LogLevel::kError, queue.error().ToString());
      return;
    }
    auto next = std::find_if(queue->begin(), queue->end(),
                             [&](const JobRecord& job) { return !waiting.count(job.id); });
    if (next == queue->end()) return;
    JobRecord job = std::move(*next);
    Result<bool> launched = Launch(job);
    if (!launched) {
      ReleaseAccount(job.id);
      Result<void> failed = SetState(job, JobState::kFailed, launched.error().message());
      if (!failed) Log(LogLevel::kError, failed.error().ToString());
    } else if (!*launched) {
      waiting.insert(job.id);
    }
  }
}

Result<bool> Daemon::Launch(JobRecord job) {
  // The job runs under the policy it was accepted with.
  PolicyVersion version = TRY(store_->Policy(job.policy_version));
  Policy policy = TRY(ParsePolicy(version.document));
  const Profile* profile = policy.Find(job.profile);
  if (!profile) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("profile '{}' is not in policy version {}",
                                                         job.profile, job.policy_version));
  }
  if (job.request.contains("login")) return LaunchLogin(job, *profile);
  Command command =
      TRY(DecodeRequest({.verb = "POST", .path = "/v1/jobs", .body = DumpJson(job.request)}));
  const auto& submit = std::get<JobSubmitCommand>(command);
  // Checked at submit too; a job accepted under a policy is launched under
  // it, and never as a namespace job when it needs a VM.
  const bool in_vm =
      TRY(JobIsolation(*profile, submit.isolation, options_.vm_support)) == Isolation::kVm;
  if (in_vm) TRY(CheckVmJob(submit, *profile));
  if (submit.agent) return LaunchAgent(job, submit, *profile);
  sandbox::SandboxSpec spec = TRY(MakeJobSpec(
      *profile,
      {.argv = submit.argv, .env = submit.env, .cwd = submit.cwd, .limits = submit.limits},
      options_.environment));
  if (!in_vm) TRY(GrantMemory(job.id, *profile, spec));
  if (submit.workspace_git) CloneIntoWorkspace(spec, *submit.workspace_git);
  if (submit.tty) {
    spec.stdio = sandbox::StdioMode::kPty;
    if (submit.columns) spec.terminal_size.columns = *submit.columns;
    if (submit.rows) spec.terminal_size.rows = *submit.rows;
    if (auto size = terminals_.TakeSize(job.id)) spec.terminal_size = {size->first, size->second};
  }
  TRY(SetState(job, JobState::kRunning));
  std::string dir = JobDir(job.id);
  TRY(MakeDir(dir));
  runner_->Start({.job = job.id,
                  .spec = std::move(spec),
                  .upload_tar = job.workspace_uploaded ? dir + "/upload.tar" : "",
                  .result_tar_path = dir + "/workspace.tar",
                  .in_vm = in_vm,
                  .vm_pool = in_vm ? job.profile : ""});
  if (std::string input = terminals_.TakeInput(job.id); !input.empty()) {
    Result<void> written = runner_->WriteTerminal(job.id, input);
    if (!written) Log(LogLevel::kError, written.error().ToString());
  }
  return true;
}

void Daemon::OnRunnerMessages() {
  // Agent jobs may have waited for the image just installed.
  if (CollectAgentImageInstall()) Schedule();
  for (RunnerMessage& message : runner_->Take()) {
    const uint64_t id = message.job;
    switch (message.kind) {
      case RunnerMessage::Kind::kStarted: break;
      case RunnerMessage::Kind::kOutput: {
        Result<uint64_t> offset = store_->OutputEnd(id, message.stream);
        Result<void> stored = store_->AppendOutput(id, message.stream, message.data);
        if (!offset || !stored) {
          Log(LogLevel::kError, fmt::format("job {}: storing output failed", id));
          break;
        }
        Emit("output", id,
             {{"stream", OutputStreamName(message.stream)},
              {"offset", *offset},
              {"size", message.data.size()},
              {"data_base64", Base64Encode(message.data)}});
        terminals_.Output(id, message.data);
        if (message.stream == OutputStream::kStdout) OnAgentOutput(id, message.data);
        break;
      }
      case RunnerMessage::Kind::kNet: {
        const sandbox::NetEvent& net = message.net;
        bool allowed = net.verdict == sandbox::NetVerdict::kAllowed;
        Audit(allowed ? "net.allowed" : "net.denied", fmt::format("job {}", id),
              {{"destination", net.destination},
               {"port", net.port},
               {"protocol", ProtocolName(net.protocol)},
               {"reason", net.reason}},
              id);
        break;
      }
      case RunnerMessage::Kind::kFinished: {
        if (ContinueLoop(message)) break;
        Result<JobRecord> job = store_->Job(id);
        if (!job) {
          Log(LogLevel::kError, job.error().ToString());
          break;
        }
        // A job that ran has its (maybe empty) list of changed files recorded.
        if (message.result || !message.files.empty() || message.files_error) {
          Result<void> recorded = store_->RecordFiles(id, message.files);
          if (!recorded) Log(LogLevel::kError, recorded.error().ToString());
          json listed = json::array();
          for (size_t i = 0; i < message.files.size() && i < kMaxAuditedFiles; ++i) {
            listed.push_back(FileToJson(message.files[i]));
          }
          json details = {{"count", message.files.size()}, {"files", listed}};
          if (message.files_error) details["error"] = message.files_error->message();
          Audit("job.files", fmt::format("job {}", id), details, id);
        }
        JobState state = JobState::kFailed;
        std::string reason;
        if (message.result) {
          const sandbox::JobResult& result = *message.result;
          job->termination = std::string(sandbox::TerminationName(result.termination));
          job->exit_code = result.exit_code;
          job->signal = result.signal;
          job->usage = UsageToJson(result);
          if (message.cancelled) {
            state = JobState::kCancelled;
            reason = "cancelled while running";
          } else if (result.termination == sandbox::Termination::kTimedOut) {
            state = JobState::kTimedOut;
            reason = "killed by its timeout";
          } else if (result.termination == sandbox::Termination::kExited && result.exit_code == 0) {
            state = JobState::kSucceeded;
          } else if (result.termination == sandbox::Termination::kExited) {
            reason = fmt::format("exit status {}", result.exit_code);
          } else {
            reason = fmt::format("killed by signal {}", result.signal);
          }
        } else {
          reason = message.error ? message.error->message() : "the sandbox failed";
        }
        if (message.result && message.error) {
          reason += fmt::format(" (teardown: {})", message.error->message());
        }
        FinishAgent(*job, state, reason);
        FinishLogin(*job, state, reason);
        Result<void> set = SetState(*job, state, reason);
        if (!set) Log(LogLevel::kError, set.error().ToString());
        break;
      }
    }
  }
  Schedule();
}

Result<Reply> Daemon::Status() {
  Store::Summary summary = TRY(store_->Summarize());
  json counts = json::object();
  for (JobState state : {JobState::kCreated, JobState::kQueued, JobState::kRunning}) {
    auto it = summary.job_counts.find(state);
    counts[std::string(JobStateName(state))] = it == summary.job_counts.end() ? 0 : it->second;
  }
  audit::ChainTip tip = TRY(audit_->Tip());
  return Reply::Json({{"jobs", counts},
                      {"max_running", options_.max_running},
                      {"policy_version", summary.policy_version},
                      {"last_event_seq", summary.last_event_seq},
                      {"audit_tip", tip.ToString()},
                      {"secure_boot", options_.secure_boot},
                      {"vm", VmStatus()}});
}

nlohmann::json Daemon::VmStatus() const {
  json vm = {{"available", options_.vm_support.available}};
  if (!options_.vm_support.available) vm["reason"] = options_.vm_support.reason;
  json pools = json::array();
  for (const VmPoolStatus& pool : runner_->VmPools()) {
    json entry = {{"profile", pool.profile},
                  {"size", pool.size},
                  {"waiting", pool.waiting},
                  {"booted", pool.booted},
                  {"taken", pool.taken}};
    if (!pool.last_error.empty()) entry["last_error"] = pool.last_error;
    pools.push_back(std::move(entry));
  }
  vm["pools"] = std::move(pools);
  return vm;
}

Result<void> Daemon::CheckVmJob(const JobSubmitCommand& submit, const Profile& profile) const {
  auto refuse = [](std::string_view field, std::string_view what) {
    return Error::Make(
        ErrorCode::kUnsupported,
        fmt::format("{}: {}; a VM job shares no filesystem with the host yet", field, what));
  };
  if (submit.agent) return refuse("agent", "an agent job's home and tool are bound from the host");
  if (profile.memory) {
    return refuse("memory",
                  fmt::format("profile '{}' grants the shared memory, whose socket is bound "
                              "from the host",
                              profile.name));
  }
  sandbox::SandboxSpec spec = TRY(MakeJobSpec(
      profile, {.argv = submit.argv, .env = submit.env, .cwd = submit.cwd, .limits = submit.limits},
      options_.environment));
  // The guest's view of the spec refuses what a VM cannot have yet,
  // naming the field (binds: the profile's mounts; network.enabled: its
  // egress).
  TRY_CTX(sandbox::vm::GuestSpec(spec), fmt::format("profile '{}' in a VM", profile.name));
  return {};
}

Result<Reply> Daemon::Submit(const Caller& caller, const JobSubmitCommand& command) {
  PolicyVersion version = TRY(store_->ActivePolicy());
  Policy policy = TRY(ParsePolicy(version.document));
  const std::string profile_name = ResolveProfileName(command, policy);
  const Profile* profile = policy.Find(profile_name);
  if (!profile) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("profile: '{}' is not in the active policy (version {})",
                                   profile_name, version.version));
  }
  // Checked now, so that a job asking for more is refused at once. The
  // isolation it gets is recorded in its request (the job's `isolation`).
  JobSubmitCommand accepted = command;
  accepted.isolation = TRY(JobIsolation(*profile, command.isolation, options_.vm_support));
  if (accepted.isolation == Isolation::kVm) TRY(CheckVmJob(command, *profile));
  if (command.workspace_git) {
    TRY(CheckWorkspaceGit(*profile, TRY(ParseGitUrl(command.workspace_git->url))));
  }
  if (command.agent) {
    TRY(CheckAgentSubmit(command, *profile));
  } else {
    TRY(MakeJobSpec(
        *profile,
        {.argv = command.argv, .env = command.env, .cwd = command.cwd, .limits = command.limits},
        options_.environment));
  }
  JobRecord job{.state = command.start ? JobState::kQueued : JobState::kCreated,
                .profile = profile_name,
                .request = SubmitToJson(accepted),
                .policy_version = version.version,
                .created = NowText()};
  job.id = TRY(store_->InsertJob(job));
  json submitted = {
      {"caller", caller.ToString()}, {"argv", command.argv}, {"profile", profile_name}};
  if (command.agent) submitted["agent"] = command.agent->profile;
  if (command.workspace_git) submitted["workspace_git"] = command.workspace_git->url;
  Audit("job.submit", fmt::format("job {}", job.id), submitted, job.id);
  Emit("state", job.id, {{"state", JobStateName(job.state)}});
  Schedule();
  job = TRY(store_->Job(job.id));
  return Reply::Json(JobToJson(job));
}

Result<Reply> Daemon::Start(uint64_t id) {
  JobRecord job = TRY(store_->Job(id));
  if (job.state != JobState::kCreated) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is {}: only a created job can be started", id,
                                   JobStateName(job.state)));
  }
  if (job.request.contains("agent")) TRY(CheckAgentStart(job));
  TRY(SetState(job, JobState::kQueued));
  Schedule();
  return Reply::Json(JobToJson(TRY(store_->Job(id))));
}

Result<Reply> Daemon::Cancel(uint64_t id) {
  JobRecord job = TRY(store_->Job(id));
  if (IsFinal(job.state)) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is already {}", id, JobStateName(job.state)));
  }
  if (job.state == JobState::kRunning && TRY(CancelLoop(job))) {
    return Reply::Json(JobToJson(TRY(store_->Job(id))));
  }
  if (job.state == JobState::kRunning) {
    // The runner's finished message makes it cancelled.
    if (!runner_->Cancel(id)) {
      return Error::Make(ErrorCode::kInternal, fmt::format("job {} is not running here", id));
    }
    return Reply::Json(JobToJson(job));
  }
  TRY(SetState(job, JobState::kCancelled, "cancelled before it ran"));
  waiting_told_.erase(id);  // it may have waited for an account
  return Reply::Json(JobToJson(job));
}

Result<Reply> Daemon::Logs(const JobLogsCommand& command) {
  JobRecord job = TRY(store_->Job(command.id));
  OutputSlice slice =
      TRY(store_->ReadOutput(command.id, command.stream, command.offset, command.limit));
  return Reply::Json({{"job", command.id},
                      {"state", JobStateName(job.state)},
                      {"stream", OutputStreamName(command.stream)},
                      {"offset", slice.offset},
                      {"end", slice.end},
                      {"dropped_before", slice.dropped_before},
                      {"data_base64", Base64Encode(slice.data)}});
}

Result<Reply> Daemon::Upload(const WorkspaceUploadCommand& command) {
  JobRecord job = TRY(store_->Job(command.id));
  if (job.state != JobState::kCreated) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is {}: a workspace is uploaded before start (submit "
                                   "with \"start\": false)",
                                   command.id, JobStateName(job.state)));
  }
  if (job.request.value("isolation", "") == "vm") {
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("workspace: job {} runs in a VM, which shares no filesystem "
                                   "with the host yet: a VM job takes no workspace",
                                   command.id));
  }
  std::string dir = JobDir(command.id);
  TRY(MakeDir(dir));
  TRY(WriteWholeFile(dir + "/upload.tar", command.tar, 0600));
  // Checked now: a broken archive is the upload's error, not the job's.
  TRY(ListTar(dir + "/upload.tar"));
  job.workspace_uploaded = true;
  TRY(store_->UpdateJob(job));
  Audit("job.workspace-upload", fmt::format("job {}", command.id), {{"bytes", command.tar.size()}},
        command.id);
  return Reply::Json(JobToJson(job));
}

Result<Reply> Daemon::Download(const WorkspaceDownloadCommand& command) {
  JobRecord job = TRY(store_->Job(command.id));
  std::string dir = JobDir(command.id);
  std::optional<std::string> live = runner_->WorkspacePath(command.id);
  std::string tar_path;
  if (!live) {
    if (::access((dir + "/workspace.tar").c_str(), F_OK) == 0) {
      tar_path = dir + "/workspace.tar";
    } else if (job.workspace_uploaded) {
      tar_path = dir + "/upload.tar";
    } else {
      return Error::Make(ErrorCode::kNotFound, fmt::format("job {} ({}) has no workspace yet",
                                                           command.id, JobStateName(job.state)));
    }
  }
  if (command.format == WorkspaceFormat::kList) {
    std::vector<FileRecord> files = live ? TRY(ListFiles(*live, "/work")) : TRY(ListTar(tar_path));
    json list = json::array();
    for (const FileRecord& file : files) list.push_back(FileToJson(file));
    return Reply::Json({{"job", command.id}, {"files", list}});
  }
  std::string tar = live ? TRY(ArchiveDirectory(*live)) : TRY(ReadWholeFile(tar_path));
  return Reply::Bytes(ReplyKind::kTar, std::move(tar));
}

Result<Reply> Daemon::PolicyGet(const PolicyGetCommand& command) {
  PolicyVersion version =
      command.version ? TRY(store_->Policy(*command.version)) : TRY(store_->ActivePolicy());
  PolicyVersion active = TRY(store_->ActivePolicy());
  json profiles = json::array();
  Result<Policy> policy = ParsePolicy(version.document);
  if (policy) {
    for (const auto& [name, profile] : policy->profiles) profiles.push_back(ProfileToJson(profile));
  }
  return Reply::Json({{"version", version.version},
                      {"active", version.version == active.version},
                      {"time", version.time},
                      {"actor", version.actor},
                      {"comment", version.comment},
                      {"document", version.document},
                      {"profiles", profiles}});
}

Result<Reply> Daemon::PolicySet(const Caller& caller, const std::string& document,
                                const std::string& comment, std::string_view type) {
  PolicyCheck check = CheckPolicy(document);
  if (!check.ok()) {
    // Nothing changes: the active version stays.
    Result<Policy> parsed = ParsePolicy(document);
    Reply reply = Reply::Failure(parsed.error());
    json issues = json::array();
    for (const PolicyIssue& issue : check.issues) {
      issues.push_back(
          {{"line", issue.line}, {"column", issue.column}, {"message", issue.message}});
    }
    reply.body["error"]["issues"] = issues;
    return reply;
  }
  PolicyVersion version = TRY(store_->AddPolicy(document, comment, caller.ToString()));
  Audit(std::string(type), fmt::format("policy version {}", version.version),
        {{"caller", caller.ToString()}, {"version", version.version}, {"comment", comment}});
  ApplyVmPools();
  return Reply::Json({{"version", version.version}, {"comment", comment}});
}

Result<Reply> Daemon::PolicyRollback(const Caller& caller, uint64_t version) {
  PolicyVersion old = TRY(store_->Policy(version));
  return PolicySet(caller, old.document, fmt::format("rollback to version {}", version),
                   "policy.rollback");
}

Result<Reply> Daemon::AuditList(const AuditListCommand& command) {
  FlushAudit();
  audit::ListQuery query{
      .limit = command.limit,
      .from = command.after ? audit::ListFrom::kOldest : audit::ListFrom::kNewest,
      .after_seq = static_cast<int64_t>(command.after),
      .type = command.type,
      .since = command.since,
      .until = command.until};
  if (command.job) query.subject = fmt::format("job {}", *command.job);
  std::vector<audit::AuditRecord> rows = TRY(audit_->List(query));
  json records = json::array();
  for (const audit::AuditRecord& row : rows) records.push_back(audit::RecordToJson(row));
  return Reply::Json({{"records", records}});
}

Result<Reply> Daemon::AuditVerify(const AuditVerifyCommand& command) {
  FlushAudit();
  std::optional<audit::ChainTip> anchor;
  if (command.anchor) anchor = TRY_CTX(audit::ParseChainTip(*command.anchor), "query.anchor");
  audit::VerifyReport report = TRY(audit_->Verify(anchor));
  json out = {{"path", audit_->path()},
              {"ok", report.ok()},
              {"rows", report.rows},
              {"tip", report.tip.ToString()}};
  if (report.broken) {
    out["broken"] = {{"seq", report.broken->seq},
                     {"kind", audit::BreakKindName(report.broken->kind)},
                     {"message", report.broken->message}};
  }
  return Reply::Json(out);
}

Result<Reply> Daemon::AuditExport(const AuditExportCommand& command) {
  FlushAudit();
  audit::ListQuery query{.after_seq = static_cast<int64_t>(command.after),
                         .type = command.type,
                         .since = command.since,
                         .until = command.until};
  if (command.job) query.subject = fmt::format("job {}", *command.job);
  std::vector<audit::AuditRecord> rows = TRY(audit_->List(query));
  std::string lines;
  for (const audit::AuditRecord& row : rows) lines += DumpJson(audit::RecordToJson(row)) + "\n";
  return Reply::Bytes(ReplyKind::kJsonLines, std::move(lines));
}

Result<Reply> Daemon::Carry(const Caller& caller, const Command& command) {
  if (std::holds_alternative<StatusCommand>(command)) return Status();
  if (const auto* c = std::get_if<JobSubmitCommand>(&command)) return Submit(caller, *c);
  if (const auto* c = std::get_if<JobListCommand>(&command)) {
    std::vector<JobRecord> jobs = TRY(store_->Jobs(c->state, c->limit));
    json list = json::array();
    for (const JobRecord& job : jobs) list.push_back(JobToJson(job));
    return Reply::Json({{"jobs", list}});
  }
  if (const auto* c = std::get_if<JobShowCommand>(&command)) {
    return Reply::Json(JobToJson(TRY(store_->Job(c->id))));
  }
  if (const auto* c = std::get_if<JobStartCommand>(&command)) return Start(c->id);
  if (const auto* c = std::get_if<JobCancelCommand>(&command)) return Cancel(c->id);
  if (const auto* c = std::get_if<JobLogsCommand>(&command)) return Logs(*c);
  if (const auto* c = std::get_if<JobFilesCommand>(&command)) {
    JobRecord job = TRY(store_->Job(c->id));
    json list = json::array();
    for (const FileRecord& file : TRY(store_->Files(c->id))) list.push_back(FileToJson(file));
    return Reply::Json({{"job", c->id}, {"state", JobStateName(job.state)}, {"files", list}});
  }
  if (const auto* c = std::get_if<JobIterationsCommand>(&command)) return Iterations(c->id);
  if (const auto* c = std::get_if<JobPauseCommand>(&command)) return PauseLoop(c->id, true);
  if (const auto* c = std::get_if<JobResumeCommand>(&command)) return PauseLoop(c->id, false);
  if (const auto* c = std::get_if<JobDiffCommand>(&command)) return LoopDiff(*c);
  if (const auto* c = std::get_if<JobRollbackCommand>(&command)) return LoopRollback(caller, *c);
  if (const auto* c = std::get_if<WorkspaceUploadCommand>(&command)) return Upload(*c);
  if (const auto* c = std::get_if<WorkspaceDownloadCommand>(&command)) return Download(*c);
  if (const auto* c = std::get_if<PolicyGetCommand>(&command)) return PolicyGet(*c);
  if (const auto* c = std::get_if<PolicySetCommand>(&command)) {
    return PolicySet(caller, c->document, c->comment, "policy.set");
  }
  if (const auto* c = std::get_if<PolicyValidateCommand>(&command)) {
    PolicyCheck check = CheckPolicy(c->document);
    json issues = json::array();
    for (const PolicyIssue& issue : check.issues) {
      issues.push_back(
          {{"line", issue.line}, {"column", issue.column}, {"message", issue.message}});
    }
    return Reply::Json({{"valid", check.ok()}, {"issues", issues}});
  }
  if (const auto* c = std::get_if<PolicyHistoryCommand>(&command)) {
    PolicyVersion active = TRY(store_->ActivePolicy());
    json list = json::array();
    for (const PolicyVersion& version : TRY(store_->PolicyHistory(c->limit))) {
      list.push_back({{"version", version.version},
                      {"active", version.version == active.version},
                      {"time", version.time},
                      {"actor", version.actor},
                      {"comment", version.comment}});
    }
    return Reply::Json({{"versions", list}});
  }
  if (const auto* c = std::get_if<PolicyRollbackCommand>(&command)) {
    return PolicyRollback(caller, c->version);
  }
  if (const auto* c = std::get_if<AuditListCommand>(&command)) return AuditList(*c);
  if (const auto* c = std::get_if<AuditVerifyCommand>(&command)) return AuditVerify(*c);
  if (const auto* c = std::get_if<AuditExportCommand>(&command)) return AuditExport(*c);
  if (const auto* c = std::get_if<EventsCommand>(&command)) {
    std::vector<Event> events = TRY(store_->EventsAfter(c->after, c->job, c->limit));
    json list = json::array();
    for (const Event& event : events) list.push_back(event.ToJson());
    return Reply::Json({{"events", list}, {"last_seq", TRY(store_->LastEventSeq())}});
  }
  if (std::holds_alternative<AgentImageStatusCommand>(command)) return AgentImageStatus();
  if (const auto* c = std::get_if<AgentImageInstallCommand>(&command)) {
    return AgentImageInstall(caller, c->path);
  }
  if (std::holds_alternative<AgentImageRollbackCommand>(command)) {
    return AgentImageRollback(caller);
  }
  if (const auto* c = std::get_if<RecoveryRebootCommand>(&command)) {
    return RecoveryReboot(caller, *c);
  }
  if (const auto* c = std::get_if<TerminalAttachCommand>(&command)) {
    TRY(store_->Job(c->id));
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("job {}'s terminal is a stream: attach with \"attach\": true "
                                   "on the local socket, or a WebSocket over HTTPS",
                                   c->id));
  }
  if (std::holds_alternative<CredsListCommand>(command)) return CredsList();
  if (const auto* c = std::get_if<CredsRevokeCommand>(&command)) return CredsRevoke(*c);
  if (const auto* c = std::get_if<CredsLoginCommand>(&command)) return CredsLogin(caller, *c);
  if (std::holds_alternative<MemoryPutCommand>(command) ||
      std::holds_alternative<MemoryGetCommand>(command) ||
      std::holds_alternative<MemoryQueryCommand>(command) ||
      std::holds_alternative<MemoryHistoryCommand>(command) ||
      std::holds_alternative<MemoryListCommand>(command)) {
    return Memory(caller, command);
  }
  if (std::holds_alternative<PairCommand>(command) ||
      std::holds_alternative<PairingsListCommand>(command) ||
      std::holds_alternative<PairingRevokeCommand>(command)) {
    if (caller.kind != Caller::Kind::kLocalUid) {
      return Error::Make(
          ErrorCode::kPermissionDenied,
          fmt::format("{} is for the console (the local socket) only", CommandName(command)));
    }
    if (pairing_ == nullptr) {
      return Error::Make(ErrorCode::kInvalidState,
                         "the HTTPS API is off (start ralphd with --api-listen)");
    }
    if (std::holds_alternative<PairCommand>(command))
      return Reply::Json(TRY(pairing_->CreateOffer()));
    if (std::holds_alternative<PairingsListCommand>(command)) {
      return Reply::Json(TRY(pairing_->List()));
    }
    const auto& revoke = std::get<PairingRevokeCommand>(command);
    TRY(pairing_->Revoke(revoke.id, caller.ToString()));
    return Reply::Json({{"revoked", revoke.id}});
  }
  return Error::Make(ErrorCode::kInternal, "unhandled command");
}

Result<void> Daemon::GrantMemory(uint64_t job, const Profile& profile, sandbox::SandboxSpec& spec) {
  if (!profile.memory) return {};
  std::string dir = TRY(memory_server_->AddJob(job, *profile.memory));
  spec.binds.push_back({.source = dir,
                        .destination = std::string(kMemorySocketDir),
                        .access = sandbox::BindAccess::kReadOnly});
  spec.env.push_back(
      fmt::format("{}={}/{}", kMemorySocketEnv, kMemorySocketDir, kMemorySocketName));
  return {};
}

Result<Reply> Daemon::Memory(const Caller& caller, const Command& command) {
  auto page = [](const memory::Page& page) {
    json entries = json::array();
    for (const memory::Entry& entry : page.entries) entries.push_back(entry.ToJson());
    json out = {{"entries", entries}};
    if (page.next_after) out["next_after"] = *page.next_after;
    return out;
  };
  if (const auto* c = std::get_if<MemoryPutCommand>(&command)) {
    // The caller is the agent: "uid:0", "cert:<id>" (lower case, as the
    // memory's agent names are).
    std::string agent = caller.ToString();
    for (char& ch : agent) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    memory::PutResult put = TRY(memory_->Put(agent, c->key, c->value));
    Audit("memory.put", "memory",
          {{"agent", agent},
           {"key", put.entry.key},
           {"hash", put.entry.hash},
           {"created", put.created},
           {"bytes", put.entry.value.size()},
           {"result", "ok"}});
    return Reply::Json({{"entry", put.entry.ToJson()}, {"created", put.created}});
  }
  if (const auto* c = std::get_if<MemoryGetCommand>(&command)) {
    return Reply::Json({{"entry", TRY(memory_->Get(c->hash)).ToJson()}});
  }
  if (const auto* c = std::get_if<MemoryQueryCommand>(&command)) {
    return Reply::Json(
        page(TRY(memory_->Query(c->prefix, {.after = c->after, .limit = c->limit}))));
  }
  if (const auto* c = std::get_if<MemoryHistoryCommand>(&command)) {
    return Reply::Json(page(TRY(memory_->History(c->key, {.after = c->after, .limit = c->limit}))));
  }
  if (const auto* c = std::get_if<MemoryListCommand>(&command)) {
    return Reply::Json(
        page(TRY(memory_->ByAgent(c->agent, {.after = c->after, .limit = c->limit}))));
  }
  return Error::Make(ErrorCode::kInternal, "unhandled memory command");
}

Result<Reply> Daemon::RecoveryReboot(const Caller& caller, const RecoveryRebootCommand& command) {
  if (!options_.recovery_reboot) {
    return Error::Make(ErrorCode::kUnsupported,
                       "recovery.reboot: this ralphd does not reboot the machine (only the "
                       "appliance's, started by ralph-init with --recovery-reboot, does)");
  }
  // On disk before the machine goes down: the record of who sent it there
  // must not depend on the shutdown that follows.
  Audit("recovery.reboot", "machine", {{"caller", caller.ToString()}, {"reason", command.reason}});
  FlushAudit();
  TRY(options_.recovery_reboot->arm());
  Log(LogLevel::kInfo, fmt::format("recovery reboot asked by {}: RECOVERY is armed for the next "
                                   "boot; rebooting",
                                   caller.ToString()));
  reboot_after_reply_ = true;
  return Reply::Json({{"rebooting", true}, {"next_boot", "RECOVERY"}});
}

void Daemon::AfterReply() {
  // The reply is with its transport (on the local socket: in the client's
  // receive buffer), so a client on this machine reads it whatever the
  // shutdown does to this daemon.
  if (std::exchange(reboot_after_reply_, false)) options_.recovery_reboot->reboot();
}

Reply Daemon::Dispatch(const Caller& caller, const Command& command) {
  Result<Reply> reply = Carry(caller, command);
  Reply out = reply ? std::move(*reply) : Reply::Failure(reply.error());
  // A read that succeeded is traced by its connection's session record.
  if (out.ok() && IsReadOnly(command)) return out;
  json details = {{"caller", caller.ToString()}, {"result", "ok"}};
  if (out.error) {
    details["result"] = std::string(ErrorCodeName(out.error->code()));
    details["error"] = out.error->message();
  }
  Audit("command", std::string(CommandName(command)), details);
  return out;
}

void Daemon::SessionOpened(const Caller& caller, std::string_view peer) {
  std::string_view type = caller.kind == Caller::Kind::kLocalUid ? "local.session" : "api.session";
  std::string who = caller.ToString();
  Audit(std::string(type), who, {{"caller", who}, {"peer", peer}});
}

namespace {

// The runner lets go of a job's terminal when the job exits, a moment
// before the loop hears of it: what is typed then is lost, as it would be
// on the pty itself, rather than an error racing the `closed` that follows.
Result<void> LostAtTheEnd(Result<void> done) {
  if (!done && done.error().code() == ErrorCode::kInvalidState) return {};
  return done;
}

}  // namespace

int TerminalExitStatus(const JobRecord& job) {
  if (job.termination == "exited") return job.exit_code;
  if (!job.termination.empty() && job.signal > 0) return 128 + job.signal;
  return -1;
}

Result<Daemon::AttachedTerminal> Daemon::AttachTerminal(const Caller& caller, uint64_t id,
                                                        TerminalCallbacks callbacks) {
  JobRecord job = TRY(store_->Job(id));
  if (!job.request.value("tty", false)) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} has no terminal: it was not submitted with \"tty\": "
                                   "true (its output is in its logs)",
                                   id));
  }
  if (IsFinal(job.state)) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is {}: its terminal is closed (its output is in its "
                                   "logs)",
                                   id, JobStateName(job.state)));
  }
  // A pty has one stream: the runner stores its output as stdout.
  const uint64_t end = TRY(store_->OutputEnd(id, OutputStream::kStdout));
  const uint64_t from = end > kTerminalReplayBytes ? end - kTerminalReplayBytes : 0;
  OutputSlice recent =
      TRY(store_->ReadOutput(id, OutputStream::kStdout, from, kTerminalReplayBytes));
  if (recent.offset > 0) {
    // Cut in the middle: start at a line so no half escape sequence or
    // character leads the replay.
    size_t line = recent.data.find('\n');
    recent.data.erase(0, line == std::string::npos ? 0 : line + 1);
  }
  TerminalAttachment attachment = terminals_.Attach(id, caller.ToString(), std::move(callbacks));
  Audit("terminal.attach", fmt::format("job {}", id),
        {{"caller", attachment.caller},
         {"attachment", attachment.id},
         {"replayed", recent.data.size()}},
        id);
  return AttachedTerminal{.attachment = attachment.id, .replay = std::move(recent.data)};
}

Result<void> Daemon::WriteTerminal(uint64_t attachment, std::string_view input) {
  std::optional<TerminalAttachment> found = terminals_.Find(attachment);
  if (!found) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("terminal attachment {} is closed", attachment));
  }
  JobRecord job = TRY(store_->Job(found->job));
  if (job.state == JobState::kRunning)
    return LostAtTheEnd(runner_->WriteTerminal(found->job, input));
  if (!terminals_.QueueInput(found->job, input, JobRunner::kMaxTerminalInputBytes)) {
    return Error::Make(
        ErrorCode::kBusy,
        fmt::format("job {} is {}: more than {} bytes of input wait for it to run", found->job,
                    JobStateName(job.state), JobRunner::kMaxTerminalInputBytes));
  }
  return {};
}

Result<void> Daemon::ResizeTerminal(uint64_t attachment, uint16_t columns, uint16_t rows) {
  std::optional<TerminalAttachment> found = terminals_.Find(attachment);
  if (!found) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("terminal attachment {} is closed", attachment));
  }
  for (auto [name, value] : {std::pair{"columns", columns}, std::pair{"rows", rows}}) {
    if (value < 1 || value > kMaxTerminalDimension) {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("{}: {} is out of range 1..{}", name, value, kMaxTerminalDimension));
    }
  }
  JobRecord job = TRY(store_->Job(found->job));
  if (job.state == JobState::kRunning) {
    return LostAtTheEnd(runner_->ResizeTerminal(found->job, {.columns = columns, .rows = rows}));
  }
  terminals_.SetSize(found->job, columns, rows);
  return {};
}

void Daemon::DetachTerminal(uint64_t attachment, std::string_view reason) {
  std::optional<TerminalAttachment> gone = terminals_.Detach(attachment);
  if (!gone) return;
  Audit("terminal.detach", fmt::format("job {}", gone->job),
        {{"caller", gone->caller}, {"attachment", gone->id}, {"reason", reason}}, gone->job);
}

}  // namespace ralph::ralphd
