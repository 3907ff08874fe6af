// Agent jobs (docs/agent-profiles.md, docs/ralphd.md "Agent jobs"): the
// profile (services/agents) makes the command line, the environment and
// the settings files of the job's home; the tool's stdout goes through the
// profile's parser into agent.* events, every tool call into the audit log
// (batched with the round's other records by FlushAudit), and the last
// usage into the job's record.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "services/agents/events.h"
#include "services/agents/parser.h"
#include "services/agents/profile.h"
#include "services/ralphd/daemon.h"
#include "services/ralphd/workspace.h"

namespace ralph::ralphd {

using nlohmann::json;

namespace {

// The job's home inside its sandbox: never the workspace (docs/agent-profiles.md).
constexpr std::string_view kAgentHome = "/home/agent";
// A loop stops after this many failed iterations in a row (a tool that
// cannot start would otherwise use up max_iterations at once).
constexpr uint64_t kMaxLoopFailures = 3;

void AddUsage(agents::UsageEvent& total, const agents::UsageEvent& usage) {
  total.input_tokens += usage.input_tokens;
  total.output_tokens += usage.output_tokens;
  total.cache_read_tokens += usage.cache_read_tokens;
  total.cache_write_tokens += usage.cache_write_tokens;
  if (usage.cost_usd) total.cost_usd = total.cost_usd.value_or(0) + *usage.cost_usd;
}

// Whether `relative` exists below `dir`, resolved without leaving it or
// following a symlink the job made.
bool ExistsBeneath(const std::string& dir, const std::string& relative) {
  struct stat st;
  std::string path = dir;
  size_t start = 0;
  while (start < relative.size()) {
    size_t end = relative.find('/', start);
    if (end == std::string::npos) end = relative.size();
    if (end > start) {
      path += "/" + relative.substr(start, end - start);
      if (::lstat(path.c_str(), &st) != 0) return false;
      if (end < relative.size() && !S_ISDIR(st.st_mode)) return false;
    }
    start = end + 1;
  }
  return path != dir;
}

Error Prefixed(const Error& error, std::string_view prefix) {
  return Error::Make(error.code(), fmt::format("{}{}", prefix, error.message()));
}

// The job's home: `home`, a host directory of the job's root holding the
// profile's files and the empty directory `mount_point` (relative; none
// when empty) for a bind over it, bound read-write at kAgentHome.
Result<void> BindAgentHome(const std::string& home, uid_t root,
                           std::span<const agents::HomeFile> files, sandbox::SandboxSpec& spec,
                           std::string_view mount_point = {}) {
  TRY(MakeOwnedDir(home, 0700, root));
  TRY(agents::WriteHomeFiles(home, files));
  if (!mount_point.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(home + "/" + std::string(mount_point), ec);
    if (ec) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("mkdir {}/{}: {}", home, mount_point, ec.message()));
    }
  }
  TRY(ChownRootOwned(home, root));
  spec.binds.push_back({.source = home,
                        .destination = std::string(kAgentHome),
                        .access = sandbox::BindAccess::kReadWrite});
  return {};
}

json UsageToJson(const agents::UsageEvent& usage) {
  json out = {{"input_tokens", usage.input_tokens},
              {"output_tokens", usage.output_tokens},
              {"cache_read_tokens", usage.cache_read_tokens},
              {"cache_write_tokens", usage.cache_write_tokens}};
  if (usage.cost_usd) out["cost_usd"] = *usage.cost_usd;
  return out;
}

// The prompt: the request's text, or the prompt file from the uploaded
// workspace.
Result<std::string> AgentPrompt(const std::string& job_dir, bool uploaded,
                                const AgentRequest& agent) {
  if (agent.prompt) return *agent.prompt;
  if (!agent.prompt_file) return std::string();
  if (!uploaded) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("agent.prompt_file: '{}': the job has no workspace (upload one "
                                   "with the prompt file before start)",
                                   *agent.prompt_file));
  }
  std::optional<std::string> text =
      TRY_CTX(ReadTarFile(job_dir + "/upload.tar", *agent.prompt_file, kMaxAgentPromptBytes),
              "agent.prompt_file");
  if (!text) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("agent.prompt_file: '{}' is not a file in the uploaded "
                                   "workspace",
                                   *agent.prompt_file));
  }
  if (text->empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("agent.prompt_file: '{}' is empty", *agent.prompt_file));
  }
  return std::move(*text);
}

// The profile's launch for `submit` with `prompt`, its tool replaced by
// `programs`' entry for the profile when there is one.
Result<agents::AgentLaunch> MakeAgentLaunch(const JobSubmitCommand& submit,
                                            const std::string& prompt,
                                            const std::map<std::string, std::string>& programs) {
  const AgentRequest& agent = *submit.agent;
  agents::AgentKind kind = TRY_CTX(agents::ParseAgentKind(agent.profile), "body.agent.profile");
  agents::AgentOptions options{.prompt = prompt,
                               .model = agent.model,
                               .max_turns = agent.max_turns,
                               .home = std::string(kAgentHome),
                               .command = submit.argv};
  Result<agents::AgentLaunch> launch = agents::MakeLaunch(kind, options);
  if (!launch) return Prefixed(launch.error(), "body.agent.");
  if (kind != agents::AgentKind::kCommand) {
    if (auto it = programs.find(agent.profile); it != programs.end()) launch->argv[0] = it->second;
  }
  return launch;
}

// The job's request with the profile's command line and its API hosts (for
// the job's egress, as its policy profile lets them through); the profile's
// environment wins over the job's own.
JobRequest AgentJobRequest(const JobSubmitCommand& submit, const agents::AgentLaunch& launch) {
  JobRequest request{
      .argv = launch.argv, .env = submit.env, .cwd = submit.cwd, .limits = submit.limits};
  for (const std::string& entry : launch.env) {
    size_t eq = entry.find('=');
    request.env[entry.substr(0, eq)] = eq == std::string::npos ? "" : entry.substr(eq + 1);
  }
  // The profile name was checked when the launch was made.
  if (Result<agents::AgentKind> kind = agents::ParseAgentKind(submit.agent->profile)) {
    for (std::string_view host : agents::GetProfile(*kind).api_hosts) {
      request.agent_hosts.emplace_back(host);
    }
  }
  return request;
}

}  // namespace

struct Daemon::AgentRun {
  agents::AgentKind kind = agents::AgentKind::kCommand;
  std::unique_ptr<agents::EventParser> parser;
  std::optional<agents::UsageEvent> usage;  // the run's last (its totals)
  uint64_t tool_calls = 0;
  // Loop mode.
  std::optional<LoopRequest> loop;
  sandbox::SandboxSpec spec;  // each iteration's
  std::string workspace;      // the host directory bound at the spec's workspace
  // The workspace's clone, made by the first iteration (CloneIntoWorkspace).
  std::optional<WorkspaceGitRequest> workspace_git;
  uint64_t iteration = 0;  // the one running, 1-based
  std::string iteration_started;
  uint64_t stdout_start = 0;
  std::chrono::steady_clock::time_point started;
  bool promise_seen = false;  // in this iteration's text
  std::string raw_tail;       // the command profile: the end of the last chunk
  agents::UsageEvent totals;  // summed over the iterations
  bool cost_known = false;
  uint64_t unchanged = 0;  // iterations in a row that changed nothing
  uint64_t failures = 0;   // iterations in a row that failed
  std::string stop;        // why the loop stopped
  bool pause = false;      // asked to pause: no next iteration
  bool idle = false;       // paused between iterations: nothing runs
  bool cancel = false;     // cancelled: the running iteration is the last
};

json AgentToJson(const AgentRequest& agent) {
  json out = {{"profile", agent.profile}};
  if (agent.prompt) out["prompt"] = *agent.prompt;
  if (agent.prompt_file) out["prompt_file"] = *agent.prompt_file;
  if (agent.model) out["model"] = *agent.model;
  if (agent.max_turns) out["max_turns"] = *agent.max_turns;
  return out;
}

json LoopToJson(const LoopRequest& loop) {
  json out = {{"max_iterations", loop.max_iterations}};
  if (loop.promise) out["promise"] = *loop.promise;
  if (loop.stop_file) out["stop_file"] = *loop.stop_file;
  if (loop.max_wall_ms) out["max_wall_ms"] = *loop.max_wall_ms;
  if (loop.max_tokens) out["max_tokens"] = *loop.max_tokens;
  if (loop.max_cost_microusd) out["max_cost_microusd"] = *loop.max_cost_microusd;
  if (loop.stall_iterations) out["stall_iterations"] = *loop.stall_iterations;
  return out;
}

std::string Daemon::AgentDir(uint64_t job) const {
  return fmt::format("{}/agents/{}", options_.state_dir, job);
}

Result<void> Daemon::CheckAgentSubmit(const JobSubmitCommand& command, const Profile& profile) {
  const AgentRequest& agent = *command.agent;
  agents::AgentKind kind = TRY_CTX(agents::ParseAgentKind(agent.profile), "body.agent.profile");
  if (command.loop && git_error_) {
    return Error::Make(git_error_->code(), fmt::format("body.loop: {}", git_error_->message()));
  }
  Result<void> clean = agents::CheckJobEnvironment(kind, command.env);
  if (!clean) return Prefixed(clean.error(), "body.");
  if (agent.prompt_file && command.start) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("body.agent.prompt_file: '{}' is read from the job's "
                                   "workspace: submit with \"start\": false, upload the "
                                   "workspace, then start",
                                   *agent.prompt_file));
  }
  // The prompt file's content is known at start; its place is held here.
  std::string prompt = agent.prompt.value_or(agent.prompt_file ? "prompt file" : "");
  agents::AgentLaunch launch = TRY(MakeAgentLaunch(command, prompt, options_.agent_programs));
  // While the first image installs, the job is checked against its place
  // (it waits, queued, for the image to start).
  JobEnvironment environment =
      AwaitingAgentImage()
          ? JobEnvironment{.base_kind = sandbox::BaseKind::kImage, .base = options_.agent_images}
          : TRY(AgentEnvironment());
  TRY(MakeJobSpec(profile, AgentJobRequest(command, launch), environment));
  return {};
}

Result<void> Daemon::CheckAgentStart(const JobRecord& job) {
  Command command =
      TRY(DecodeRequest({.verb = "POST", .path = "/v1/jobs", .body = DumpJson(job.request)}));
  const auto& submit = std::get<JobSubmitCommand>(command);
  if (submit.agent) TRY(AgentPrompt(JobDir(job.id), job.workspace_uploaded, *submit.agent));
  return {};
}

Result<bool> Daemon::LaunchAgent(JobRecord& job, const JobSubmitCommand& submit,
                                 const Profile& profile) {
  const agents::AgentKind kind = TRY(agents::ParseAgentKind(submit.agent->profile));
  // No image yet, and one is being installed: the job waits for it.
  if (AwaitingAgentImage()) return false;
  // The account the policy grants, if any: a job waits, queued, while the
  // account has as many holders as the profile allows.
  std::optional<creds::AccountId> account;
  if (kind != agents::AgentKind::kCommand) {
    account = TRY(GrantedAccount(agents::AgentKindName(kind), profile));
  }
  if (account && AccountBusy(*account, profile)) {
    NoteWaiting(job.id, *account);
    return false;
  }
  std::string prompt = TRY(AgentPrompt(JobDir(job.id), job.workspace_uploaded, *submit.agent));
  agents::AgentLaunch launch = TRY(MakeAgentLaunch(submit, prompt, options_.agent_programs));
  sandbox::SandboxSpec spec =
      TRY(MakeJobSpec(profile, AgentJobRequest(submit, launch), TRY(AgentEnvironment())));
  // The home: a host directory of the job's root, bound at kAgentHome, with
  // the profile's settings. Its parents may be passed through (0711) by
  // the job's mapped uid, which mounts it.
  const uid_t root = options_.ids.host_base;
  TRY(MakeOwnedDir(options_.state_dir + "/agents", 0711, 0));
  std::string dir = AgentDir(job.id);
  TRY(MakeOwnedDir(dir, 0711, 0));
  if (account) {
    // By reference: every holder binds the account's one live directory
    // as the tool's own (~/.claude, ~/.codex, ...), so a refresh one job
    // makes, in place or by renaming a new file over the old, is what the
    // next sees (docs/credentials.md). The settings files in that
    // directory go into it; the rest of the home is the job's own.
    const std::string_view credential_file = agents::GetProfile(kind).credential_file;
    const std::string tool_dir(credential_file.substr(0, credential_file.rfind('/')));
    std::vector<agents::HomeFile> home_files;
    std::vector<agents::HomeFile> tool_files;
    for (agents::HomeFile& file : launch.files) {
      if (file.path.starts_with(tool_dir + "/")) {
        file.path.erase(0, tool_dir.size() + 1);
        tool_files.push_back(std::move(file));
      } else {
        home_files.push_back(std::move(file));
      }
    }
    TRY(BindAgentHome(dir + "/home", root, home_files, spec, tool_dir));
    std::string live = TRY(HoldAccount(job.id, *account, profile, credential_file, tool_files));
    spec.binds.push_back({.source = live,
                          .destination = std::string(kAgentHome) + "/" + tool_dir,
                          .access = sandbox::BindAccess::kReadWrite});
  } else {
    TRY(BindAgentHome(dir + "/home", root, launch.files, spec));
  }
  TRY(GrantMemory(job.id, profile, spec));

  // A loop queued before a restart onto a daemon without git.
  if (submit.loop && git_error_) return *git_error_;
  auto run = std::make_shared<AgentRun>();
  run->kind = kind;
  run->parser = agents::MakeEventParser(run->kind);
  run->loop = submit.loop;
  run->workspace_git = submit.workspace_git;
  if (submit.workspace_git && !run->loop) CloneIntoWorkspace(spec, *submit.workspace_git);
  if (run->loop) {
    // The workspace outlives each iteration's sandbox: a host directory of
    // the job's root bound over the sandbox's own.
    run->workspace = dir + "/work";
    TRY(MakeOwnedDir(run->workspace, 0755, root));
    spec.binds.push_back({.source = run->workspace,
                          .destination = spec.workspace,
                          .access = sandbox::BindAccess::kReadWrite});
  }

  std::string job_dir = JobDir(job.id);
  if (::mkdir(job_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", job_dir), errno);
  }
  std::string upload = job.workspace_uploaded ? job_dir + "/upload.tar" : "";
  TRY(SetState(job, JobState::kRunning));
  agent_runs_[job.id] = run;
  if (run->loop) {
    run->spec = std::move(spec);
    run->started = std::chrono::steady_clock::now();
    Result<void> started = StartIteration(job.id, *run, upload);
    if (!started) {
      // The job fails (Schedule); nothing of it stays here.
      agent_runs_.erase(job.id);
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      return started.error();
    }
    return true;
  }
  runner_->Start({.job = job.id,
                  .spec = std::move(spec),
                  .upload_tar = upload,
                  .result_tar_path = job_dir + "/workspace.tar"});
  return true;
}

Result<void> Daemon::StartIteration(uint64_t job, AgentRun& run, std::string upload_tar) {
  ++run.iteration;
  run.usage.reset();
  run.promise_seen = false;
  run.raw_tail.clear();
  run.parser = agents::MakeEventParser(run.kind);
  run.iteration_started = NowText();
  run.stdout_start = TRY(store_->OutputEnd(job, OutputStream::kStdout));
  sandbox::SandboxSpec spec = run.spec;
  // The workspace is kept from one iteration to the next: cloned once.
  if (run.iteration == 1 && run.workspace_git) CloneIntoWorkspace(spec, *run.workspace_git);
  runner_->Start({.job = job,
                  .spec = std::move(spec),
                  .upload_tar = std::move(upload_tar),
                  .result_tar_path = JobDir(job) + "/workspace.tar",
                  .host_workspace = run.workspace,
                  .git_dir = JobDir(job) + "/loop.git",
                  .iteration = run.iteration});
  return {};
}

void Daemon::OnAgentOutput(uint64_t job, std::string_view data, AgentFeed feed) {
  auto it = agent_runs_.find(job);
  if (it == agent_runs_.end()) return;
  AgentRun& run = *it->second;
  std::vector<agents::AgentEvent> events;
  if (feed == AgentFeed::kEnd) {
    run.parser->Finish(events);  // a last line without a newline
  } else {
    run.parser->Feed(data, events);
  }
  const std::string* promise = run.loop && run.loop->promise ? &*run.loop->promise : nullptr;
  if (promise && run.kind == agents::AgentKind::kCommand) {
    // No events: the promise is looked for in the raw output, across chunks.
    std::string window = run.raw_tail + std::string(data);
    if (window.find(*promise) != std::string::npos) run.promise_seen = true;
    size_t keep = std::min(window.size(), promise->size());
    run.raw_tail = window.substr(window.size() - keep);
  }
  for (const agents::AgentEvent& event : events) {
    json body = agents::EventToJson(event);
    if (const auto* call = std::get_if<agents::ToolCallEvent>(&event.body)) {
      ++run.tool_calls;
      // Parameters as the parser left them: redacted and bounded.
      json details = {{"id", call->id},
                      {"name", call->name},
                      {"input", call->input},
                      {"input_truncated", call->input_truncated},
                      {"line", event.line}};
      if (run.loop) details["iteration"] = run.iteration;
      Audit("agent.tool_call", fmt::format("job {}", job), std::move(details), job);
    } else if (const auto* usage = std::get_if<agents::UsageEvent>(&event.body)) {
      run.usage = *usage;
    }
    // Only the agent's own words count as its promise: a tool's output
    // (the prompt file read back) does not.
    if (promise && (std::holds_alternative<agents::MessageEvent>(event.body) ||
                    std::holds_alternative<agents::ResultEvent>(event.body))) {
      if (body.value("text", std::string()).find(*promise) != std::string::npos) {
        run.promise_seen = true;
      }
    }
    if (run.loop) body["iteration"] = run.iteration;
    std::string kind = "agent." + body.value("type", std::string("other"));
    Emit(std::move(kind), job, std::move(body));
  }
}

bool Daemon::ContinueLoop(const RunnerMessage& message) {
  const uint64_t id = message.job;
  auto it = agent_runs_.find(id);
  if (it == agent_runs_.end() || !it->second->loop) return false;
  std::shared_ptr<AgentRun> run = it->second;
  const LoopRequest& loop = *run->loop;
  OnAgentOutput(id, {}, AgentFeed::kEnd);

  IterationRecord record{.job = id,
                         .iteration = run->iteration,
                         .started = run->iteration_started,
                         .finished = NowText(),
                         .stdout_start = run->stdout_start};
  record.stdout_end = store_->OutputEnd(id, OutputStream::kStdout).value_or(run->stdout_start);
  bool failed = true;
  if (message.result) {
    record.termination = std::string(sandbox::TerminationName(message.result->termination));
    record.exit_code = message.result->exit_code;
    record.signal = message.result->signal;
    failed = message.result->termination != sandbox::Termination::kExited ||
             message.result->exit_code != 0;
  } else if (message.error) {
    record.error = message.error->message();
  }
  if (message.commit) {
    record.commit = message.commit->commit;
    record.changed = message.commit->changed;
  } else if (message.commit_error) {
    record.error += (record.error.empty() ? "" : "; ") + message.commit_error->message();
  }
  if (run->usage) {
    record.usage = UsageToJson(*run->usage);
    AddUsage(run->totals, *run->usage);
    run->cost_known = run->cost_known || run->usage->cost_usd.has_value();
  }
  run->unchanged = message.commit && !record.changed ? run->unchanged + 1 : 0;
  run->failures = failed ? run->failures + 1 : 0;

  // The stop conditions, in this order; each reason is the condition's name.
  std::string stop;
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - run->started)
                     .count();
  if (message.cancelled || run->cancel) {
    stop = "cancelled";
  } else if (!message.result || !message.commit) {
    stop = "error";
  } else if (run->iteration == 1 && run->workspace_git &&
             message.result->termination == sandbox::Termination::kExited &&
             message.result->exit_code == kCloneFailedExit &&
             !ExistsBeneath(run->workspace, ".git")) {
    // The clone failed (the script said why on stderr): nothing to loop on.
    stop = "workspace_git";
  } else if (loop.promise && run->promise_seen) {
    stop = "promise";
  } else if (loop.stop_file && ExistsBeneath(run->workspace, *loop.stop_file)) {
    stop = "stop_file";
  } else if (run->iteration >= loop.max_iterations) {
    stop = "max_iterations";
  } else if (loop.max_tokens &&
             run->totals.input_tokens + run->totals.output_tokens >= *loop.max_tokens) {
    stop = "max_tokens";
  } else if (loop.max_cost_microusd && run->totals.cost_usd &&
             *run->totals.cost_usd * 1e6 >= static_cast<double>(*loop.max_cost_microusd)) {
    stop = "max_cost_microusd";
  } else if (loop.max_wall_ms && static_cast<uint64_t>(elapsed) >= *loop.max_wall_ms) {
    stop = "max_wall_ms";
  } else if (loop.stall_iterations && run->unchanged >= *loop.stall_iterations) {
    stop = "stall_iterations";
  } else if (run->failures >= kMaxLoopFailures) {
    stop = "failures";
  }
  record.stop = stop;
  Result<void> stored = store_->RecordIteration(record);
  if (!stored) Log(LogLevel::kError, stored.error().ToString());
  json row = record.ToJson();
  Emit("loop.iteration", id, row);
  row.erase("started");
  Audit("loop.iteration", fmt::format("job {}", id), std::move(row), id);
  if (!stop.empty()) {
    run->stop = stop;
    return false;
  }
  if (run->pause) {
    run->idle = true;
    Emit("loop.paused", id, {{"iteration", run->iteration}});
    Audit("loop.paused", fmt::format("job {}", id), {{"iteration", run->iteration}}, id);
    return true;
  }
  Result<void> next = StartIteration(id, *run, "");
  if (!next) {
    Log(LogLevel::kError,
        fmt::format("job {}: iteration {}: {}", id, run->iteration, next.error().ToString()));
    run->stop = "error";
    return false;
  }
  return true;
}

Result<Reply> Daemon::PauseLoop(uint64_t id, bool pause) {
  JobRecord job = TRY(store_->Job(id));
  auto it = agent_runs_.find(id);
  if (job.state != JobState::kRunning || it == agent_runs_.end() || !it->second->loop) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is {}: only a running loop job is paused or resumed", id,
                                   JobStateName(job.state)));
  }
  AgentRun& run = *it->second;
  if (run.pause == pause) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is already {}", id, pause ? "paused" : "running"));
  }
  run.pause = pause;
  if (!pause && run.idle) {
    run.idle = false;
    Audit("loop.resumed", fmt::format("job {}", id), {{"iteration", run.iteration + 1}}, id);
    Result<void> next = StartIteration(id, run, "");
    if (!next) {
      // Nothing runs and nothing will: the loop ends here.
      run.stop = "error";
      JobState state = JobState::kFailed;
      std::string reason = next.error().message();
      FinishAgent(job, state, reason);
      TRY(SetState(job, state, reason));
      return next.error();
    }
  }
  return Reply::Json(
      {{"job", id}, {"paused", run.pause}, {"idle", run.idle}, {"iteration", run.iteration}});
}

Result<bool> Daemon::CancelLoop(JobRecord& job) {
  auto it = agent_runs_.find(job.id);
  if (it == agent_runs_.end() || !it->second->loop) return false;
  AgentRun& run = *it->second;
  // Kept here, not only in the runner: a cancel that reaches the runner as
  // an iteration ends (too late to kill it, or in the moment before the
  // loop hears of its end) still stops the loop there.
  run.cancel = true;
  if (!run.idle) {
    runner_->Cancel(job.id);
    return true;
  }
  run.stop = "cancelled";
  // What the loop left: the workspace as its last iteration committed it.
  Result<std::vector<FileRecord>> files = ListFiles(run.workspace, run.spec.workspace);
  if (files) {
    Result<void> recorded = store_->RecordFiles(job.id, *files);
    if (!recorded) Log(LogLevel::kError, recorded.error().ToString());
  }
  JobState state = JobState::kCancelled;
  std::string reason = "cancelled while paused between iterations";
  FinishAgent(job, state, reason);
  TRY(SetState(job, state, reason));
  return true;
}

Result<Reply> Daemon::Iterations(uint64_t id) {
  JobRecord job = TRY(store_->Job(id));
  json list = json::array();
  for (const IterationRecord& iteration : TRY(store_->Iterations(id))) {
    list.push_back(iteration.ToJson());
  }
  return Reply::Json({{"job", id}, {"state", JobStateName(job.state)}, {"iterations", list}});
}

namespace {

// Whether `job` was submitted with a loop object.
Result<void> CheckLoopJob(const JobRecord& job) {
  if (!job.request.is_object() || !job.request.contains("loop")) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} is not a loop job: it has no iterations", job.id));
  }
  return {};
}

}  // namespace

Result<IterationRecord> Daemon::CommittedIteration(uint64_t job, uint64_t iteration,
                                                   std::string_view field) {
  std::vector<IterationRecord> all = TRY(store_->Iterations(job));
  if (all.empty()) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("{}: job {} has no iterations yet", field, job));
  }
  for (IterationRecord& record : all) {
    if (record.iteration != iteration) continue;
    if (record.commit.empty()) {
      return Error::Make(
          ErrorCode::kNotFound,
          fmt::format("{}: iteration {} of job {} has no commit ({})", field, iteration, job,
                      record.error.empty() ? "it was not committed" : record.error));
    }
    return std::move(record);
  }
  return Error::Make(ErrorCode::kNotFound,
                     fmt::format("{}: job {} has no iteration {} (its iterations are 1..{})", field,
                                 job, iteration, all.back().iteration));
}

Result<Reply> Daemon::LoopDiff(const JobDiffCommand& command) {
  JobRecord job = TRY(store_->Job(command.id));
  TRY(CheckLoopJob(job));
  if (git_error_) return *git_error_;
  IterationRecord to = TRY(CommittedIteration(command.id, command.iteration, "query.iteration"));
  const std::string git_dir = JobDir(command.id) + "/loop.git";
  json from = nullptr;
  std::string from_commit;
  if (command.from) {
    from_commit = TRY(CommittedIteration(command.id, *command.from, "query.from")).commit;
    from = *command.from;
  } else {
    // What the workspace was when the iteration started.
    from_commit = TRY(ParentCommit(options_.git, git_dir, to.commit));
  }
  WorkspaceDiff diff =
      TRY(DiffCommits(options_.git, git_dir, from_commit, to.commit, command.limit));
  if (diff.truncated) {
    diff.text +=
        fmt::format("\n[ralphd: diff truncated: {} of {} bytes shown (limit {}, at most {})]\n",
                    diff.text.size(), diff.bytes, command.limit, kMaxDiffBytes);
  }
  return Reply::Json({{"job", command.id},
                      {"iteration", command.iteration},
                      {"commit", to.commit},
                      {"from", from},
                      {"from_commit", from_commit.empty() ? json(nullptr) : json(from_commit)},
                      {"bytes", diff.bytes},
                      {"truncated", diff.truncated},
                      {"diff", std::move(diff.text)}});
}

Result<Reply> Daemon::LoopRollback(const Caller& caller, const JobRollbackCommand& command) {
  JobRecord job = TRY(store_->Job(command.id));
  TRY(CheckLoopJob(job));
  if (git_error_) return *git_error_;
  auto it = agent_runs_.find(command.id);
  AgentRun* run = it == agent_runs_.end() ? nullptr : it->second.get();
  // Nothing of the job may write the workspace meanwhile: the loop is
  // idle between iterations (no sandbox exists), or the job is over.
  if (!IsFinal(job.state) && (run == nullptr || !run->idle)) {
    return Error::Make(
        ErrorCode::kInvalidState,
        fmt::format("job {} is {}{}: a rollback needs the loop paused between iterations (pause "
                    "it and wait for its loop.paused event) or the job ended",
                    command.id, JobStateName(job.state),
                    run ? fmt::format(" (iteration {} runs)", run->iteration) : ""));
  }
  IterationRecord target = TRY(CommittedIteration(command.id, command.iteration, "body.iteration"));
  const uint64_t last = TRY(store_->Iterations(command.id)).back().iteration;
  const std::string job_dir = JobDir(command.id);
  const std::string git_dir = job_dir + "/loop.git";
  const std::string archive = job_dir + "/workspace.tar";
  const std::string message =
      fmt::format("rollback to iteration {} (after iteration {})", command.iteration, last);
  const uid_t root = options_.ids.host_base;
  std::string work_tree;
  std::string scratch;
  if (run) {
    work_tree = run->workspace;
  } else {
    // The job's workspace is its archive now: restored in a scratch
    // directory made from it, then archived again.
    scratch = job_dir + "/rollback";
    std::error_code ec;
    std::filesystem::remove_all(scratch, ec);
    if (::mkdir(scratch.c_str(), 0700) != 0) {
      return Error::FromErrno(fmt::format("mkdir {}", scratch), errno);
    }
    work_tree = scratch;
  }
  auto restore = [&]() -> Result<std::string> {
    if (!scratch.empty() && ::access(archive.c_str(), F_OK) == 0) {
      TRY_CTX(ExtractTar(archive, scratch, root, root), "reading the job's workspace archive");
    }
    std::string commit =
        TRY(RestoreWorkspace(options_.git, git_dir, work_tree, target.commit, root, last, message));
    // The download serves this archive between iterations and after the end.
    std::string tar = TRY(ArchiveDirectory(work_tree));
    TRY(WriteFileAtomically(archive, tar, 0600, Durability::kFileSynced));
    return commit;
  };
  Result<std::string> rollback = restore();
  if (!scratch.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(scratch, ec);
  }
  if (!rollback) return rollback.error().WithContext(fmt::format("job {}: rollback", command.id));
  json details = {{"caller", caller.ToString()}, {"iteration", command.iteration},
                  {"commit", target.commit},     {"rollback_commit", *rollback},
                  {"after_iteration", last},     {"state", JobStateName(job.state)}};
  Emit("loop.rollback", command.id, details);
  Audit("loop.rollback", fmt::format("job {}", command.id), details, command.id);
  details["job"] = command.id;
  return Reply::Json(details);
}

void Daemon::FinishAgent(JobRecord& job, JobState& state, std::string& reason) {
  ReleaseAccount(job.id);
  auto it = agent_runs_.find(job.id);
  if (it == agent_runs_.end()) return;
  std::shared_ptr<AgentRun> run = it->second;
  if (!run->loop) OnAgentOutput(job.id, {}, AgentFeed::kEnd);
  json summary;
  if (run->loop) {
    summary = UsageToJson(run->totals);
    summary["iterations"] = run->iteration;
    summary["stop"] = run->stop;
  } else {
    summary = run->usage ? UsageToJson(*run->usage) : json::object();
  }
  summary["profile"] = std::string(agents::AgentKindName(run->kind));
  summary["tool_calls"] = run->tool_calls;
  if (!job.usage.is_object()) job.usage = json::object();
  job.usage["agent"] = summary;
  if (run->loop) {
    // The loop's own outcome, not its last run's: done when the agent said
    // so (its promise, its stop file).
    if (run->stop == "promise" || run->stop == "stop_file") {
      state = JobState::kSucceeded;
      reason.clear();
    } else if (run->stop == "cancelled") {
      if (state != JobState::kCancelled) reason = "cancelled while running";
      state = JobState::kCancelled;
    } else {
      state = JobState::kFailed;
      reason = fmt::format("loop stopped by {} after {} iterations{}", run->stop, run->iteration,
                           run->stop == "error" && !reason.empty() ? ": " + reason : "");
    }
    Audit("loop.stopped", fmt::format("job {}", job.id),
          {{"reason", run->stop}, {"iterations", run->iteration}, {"usage", summary}}, job.id);
  }
  agent_runs_.erase(it);
  // The home held the tool's settings for this job only; a loop's workspace
  // is in its archive and its repository.
  std::error_code ec;
  std::filesystem::remove_all(AgentDir(job.id), ec);
  if (ec) Log(LogLevel::kError, fmt::format("job {}: removing its home: {}", job.id, ec.message()));
}

}  // namespace ralph::ralphd

namespace ralph::ralphd {

namespace {

// The file at `relative` below `dir`, read only when every part on the way
// is a real directory and the last a regular file (no symlink the login
// left): the login's sandbox is gone by then, so nothing changes it.
Result<std::string> ReadBeneath(const std::string& dir, const std::string& relative) {
  std::string path = dir;
  size_t start = 0;
  while (start < relative.size()) {
    size_t end = relative.find('/', start);
    if (end == std::string::npos) end = relative.size();
    path += "/" + relative.substr(start, end - start);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0)
      return Error::FromErrno(fmt::format("~/{}", relative), errno);
    bool last = end == relative.size();
    if (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode)) {
      return Error::Make(ErrorCode::kRefused,
                         fmt::format("~/{}: {} is not a {}", relative, path.substr(dir.size() + 1),
                                     last ? "regular file" : "directory"));
    }
    start = end + 1;
  }
  return ReadWholeFile(path);
}

}  // namespace

Result<bool> Daemon::LaunchLogin(JobRecord& job, const Profile& profile) {
  const json& login = job.request["login"];
  creds::Scope scope = TRY(creds::ParseScope(login.value("scope", "")));
  creds::AccountId account =
      TRY(creds::AccountId::Make(login.value("profile", ""), scope, login.value("name", "")));
  agents::AgentKind kind = TRY(agents::ParseAgentKind(account.profile));
  agents::AgentLaunch launch = TRY(agents::MakeLoginLaunch(kind, std::string(kAgentHome)));
  if (auto it = options_.agent_programs.find(account.profile);
      it != options_.agent_programs.end()) {
    launch.argv[0] = it->second;
  }
  const agents::AgentProfile& tool = agents::GetProfile(kind);
  // The policy profile's limits and mounts; its egress is the tool's login
  // hosts by domain and nothing else.
  Profile sandboxed = profile;
  sandboxed.network = sandbox::NetworkSpec{.enabled = true, .domain_ports = {443}};
  for (std::string_view host : tool.login_hosts) {
    sandboxed.network.allowed_domains.emplace_back(host);
  }
  JobRequest request{.argv = launch.argv};
  for (const std::string& entry : launch.env) {
    size_t eq = entry.find('=');
    request.env[entry.substr(0, eq)] = eq == std::string::npos ? "" : entry.substr(eq + 1);
  }
  sandbox::SandboxSpec spec = TRY(MakeJobSpec(sandboxed, request, options_.environment));
  spec.stdio = sandbox::StdioMode::kPty;
  if (job.request.contains("columns")) {
    spec.terminal_size.columns = job.request["columns"].get<uint16_t>();
  }
  if (job.request.contains("rows")) spec.terminal_size.rows = job.request["rows"].get<uint16_t>();
  if (auto size = terminals_.TakeSize(job.id)) spec.terminal_size = {size->first, size->second};

  // The home, on the memory filesystem: the tool writes the credential
  // there in the clear, and VAR never sees it.
  const uid_t root = options_.ids.host_base;
  TRY(PrepareCredsLiveDir());
  std::string dir = fmt::format("{}/login-{}", options_.creds_live_dir, job.id);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);  // a previous daemon's, never reused
  TRY(MakeOwnedDir(dir, 0711, 0));
  login_runs_[job.id] = {account, dir, std::string(tool.credential_file)};
  TRY(BindAgentHome(dir + "/home", root, launch.files, spec));
  TRY(SetState(job, JobState::kRunning));
  std::string job_dir = JobDir(job.id);
  if (::mkdir(job_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", job_dir), errno);
  }
  runner_->Start({.job = job.id,
                  .spec = std::move(spec),
                  .upload_tar = "",
                  .result_tar_path = job_dir + "/workspace.tar"});
  if (std::string input = terminals_.TakeInput(job.id); !input.empty()) {
    Result<void> written = runner_->WriteTerminal(job.id, input);
    if (!written) Log(LogLevel::kError, written.error().ToString());
  }
  return true;
}

void Daemon::FinishLogin(JobRecord& job, JobState& state, std::string& reason) {
  auto it = login_runs_.find(job.id);
  if (it == login_runs_.end()) return;
  LoginRun run = std::move(it->second);
  login_runs_.erase(it);
  json details = {{"account", run.account.ToString()}, {"job", job.id}};
  if (state == JobState::kSucceeded) {
    Result<std::string> written = ReadBeneath(run.dir + "/home", run.credential_file);
    Result<void> stored = written && !written->empty()
                              ? creds_->Put(run.account, *written)
                              : Result<void>(Error::Make(ErrorCode::kNotFound, "empty"));
    if (written) std::fill(written->begin(), written->end(), '\0');
    if (stored) {
      details["result"] = "captured";
      // Jobs still holding the account keep their copy until they end, but
      // it is not written back over the new login.
      if (auto held = holdings_.find(run.account); held != holdings_.end()) {
        held->second.superseded = true;
      }
    } else {
      state = JobState::kFailed;
      reason =
          written && written->empty()
              ? fmt::format("the login wrote an empty credential file (~/{})", run.credential_file)
          : written
              ? fmt::format("storing the credential: {}", stored.error().message())
              : fmt::format("the login wrote no credential file: {}", written.error().message());
      details["result"] = "failed";
      details["reason"] = reason;
    }
  } else {
    details["result"] = "failed";
    details["reason"] = reason;
  }
  Audit("creds.login", fmt::format("account {}", run.account.ToString()), std::move(details),
        job.id);
  std::error_code ec;
  std::filesystem::remove_all(run.dir, ec);
}

}  // namespace ralph::ralphd
