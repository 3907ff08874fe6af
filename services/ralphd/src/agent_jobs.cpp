// Agent jobs (docs/agent-profiles.md, docs/ralphd.md "Agent jobs"): the
// profile (services/agents) makes the command line, the environment and
// the settings files of the job's home; the tool's stdout goes through the
// profile's parser into agent.* events, every tool call into the audit log
// (batched with the round's other records by FlushAudit), and the last
// usage into the job's record.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

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

Error Prefixed(const Error& error, std::string_view prefix) {
  return Error::Make(error.code(), fmt::format("{}{}", prefix, error.message()));
}

// A directory made (or kept) with `mode`, owned by `uid`:`uid`.
Result<void> MakeOwnedDir(const std::string& path, mode_t mode, uid_t uid) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", path), errno);
  }
  if (::chmod(path.c_str(), mode) != 0 || ::lchown(path.c_str(), uid, uid) != 0) {
    return Error::FromErrno(fmt::format("chown {}", path), errno);
  }
  return {};
}

// Everything below `dir` owned by the job's root (the home's settings files
// are written by ralphd as the host's root).
Result<void> ChownBelow(const std::string& dir, uid_t uid) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (::lchown(it->path().c_str(), uid, uid) != 0) {
      return Error::FromErrno(fmt::format("chown {}", it->path().string()), errno);
    }
  }
  if (ec) return Error::Make(ErrorCode::kIo, fmt::format("listing {}: {}", dir, ec.message()));
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

// The job's request with the profile's command line; the profile's
// environment wins over the job's own.
JobRequest AgentJobRequest(const JobSubmitCommand& submit, const agents::AgentLaunch& launch) {
  JobRequest request{
      .argv = launch.argv, .env = submit.env, .cwd = submit.cwd, .limits = submit.limits};
  for (const std::string& entry : launch.env) {
    size_t eq = entry.find('=');
    request.env[entry.substr(0, eq)] = eq == std::string::npos ? "" : entry.substr(eq + 1);
  }
  return request;
}

}  // namespace

struct Daemon::AgentRun {
  agents::AgentKind kind = agents::AgentKind::kCommand;
  std::unique_ptr<agents::EventParser> parser;
  std::optional<agents::UsageEvent> usage;  // the run's last (its totals)
  uint64_t tool_calls = 0;
};

json AgentToJson(const AgentRequest& agent) {
  json out = {{"profile", agent.profile}};
  if (agent.prompt) out["prompt"] = *agent.prompt;
  if (agent.prompt_file) out["prompt_file"] = *agent.prompt_file;
  if (agent.model) out["model"] = *agent.model;
  if (agent.max_turns) out["max_turns"] = *agent.max_turns;
  return out;
}

std::string Daemon::AgentDir(uint64_t job) const {
  return fmt::format("{}/agents/{}", options_.state_dir, job);
}

Result<void> Daemon::CheckAgentSubmit(const JobSubmitCommand& command, const Profile& profile) {
  const AgentRequest& agent = *command.agent;
  agents::AgentKind kind = TRY_CTX(agents::ParseAgentKind(agent.profile), "body.agent.profile");
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
  TRY(MakeJobSpec(profile, AgentJobRequest(command, launch), options_.environment));
  return {};
}

Result<void> Daemon::CheckAgentStart(const JobRecord& job) {
  Command command =
      TRY(DecodeRequest({.verb = "POST", .path = "/v1/jobs", .body = DumpJson(job.request)}));
  const auto& submit = std::get<JobSubmitCommand>(command);
  if (submit.agent) TRY(AgentPrompt(JobDir(job.id), job.workspace_uploaded, *submit.agent));
  return {};
}

Result<void> Daemon::LaunchAgent(JobRecord& job, const JobSubmitCommand& submit,
                                 const Profile& profile) {
  std::string prompt = TRY(AgentPrompt(JobDir(job.id), job.workspace_uploaded, *submit.agent));
  agents::AgentLaunch launch = TRY(MakeAgentLaunch(submit, prompt, options_.agent_programs));
  sandbox::SandboxSpec spec =
      TRY(MakeJobSpec(profile, AgentJobRequest(submit, launch), options_.environment));
  // The home: a host directory of the job's root, bound at kAgentHome, with
  // the profile's settings. Its parents may be passed through (0711) by
  // the job's mapped uid, which mounts it.
  const uid_t root = options_.ids.host_base;
  TRY(MakeOwnedDir(options_.state_dir + "/agents", 0711, 0));
  std::string dir = AgentDir(job.id);
  TRY(MakeOwnedDir(dir, 0711, 0));
  std::string home = dir + "/home";
  TRY(MakeOwnedDir(home, 0700, root));
  TRY(agents::WriteHomeFiles(home, launch.files));
  TRY(ChownBelow(home, root));
  spec.binds.push_back({.source = home,
                        .destination = std::string(kAgentHome),
                        .access = sandbox::BindAccess::kReadWrite});

  auto run = std::make_shared<AgentRun>();
  run->kind = TRY(agents::ParseAgentKind(submit.agent->profile));
  run->parser = agents::MakeEventParser(run->kind);
  agent_runs_[job.id] = std::move(run);

  TRY(SetState(job, JobState::kRunning));
  std::string job_dir = JobDir(job.id);
  if (::mkdir(job_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", job_dir), errno);
  }
  runner_->Start({.job = job.id,
                  .spec = std::move(spec),
                  .upload_tar = job.workspace_uploaded ? job_dir + "/upload.tar" : "",
                  .result_tar_path = job_dir + "/workspace.tar"});
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
  for (const agents::AgentEvent& event : events) {
    json body = agents::EventToJson(event);
    if (const auto* call = std::get_if<agents::ToolCallEvent>(&event.body)) {
      ++run.tool_calls;
      // Parameters as the parser left them: redacted and bounded.
      Audit("agent.tool_call", fmt::format("job {}", job),
            {{"id", call->id},
             {"name", call->name},
             {"input", call->input},
             {"input_truncated", call->input_truncated},
             {"line", event.line}},
            job);
    } else if (const auto* usage = std::get_if<agents::UsageEvent>(&event.body)) {
      run.usage = *usage;
    }
    std::string kind = "agent." + body.value("type", std::string("other"));
    Emit(std::move(kind), job, std::move(body));
  }
}

void Daemon::FinishAgent(JobRecord& job, JobState&, std::string&) {
  auto it = agent_runs_.find(job.id);
  if (it == agent_runs_.end()) return;
  OnAgentOutput(job.id, {}, AgentFeed::kEnd);
  std::shared_ptr<AgentRun> run = it->second;
  json summary = run->usage ? UsageToJson(*run->usage) : json::object();
  summary["profile"] = std::string(agents::AgentKindName(run->kind));
  summary["tool_calls"] = run->tool_calls;
  if (!job.usage.is_object()) job.usage = json::object();
  job.usage["agent"] = summary;
  agent_runs_.erase(it);
  // The home held the tool's settings for this job only.
  std::error_code ec;
  std::filesystem::remove_all(AgentDir(job.id), ec);
  if (ec) Log(LogLevel::kError, fmt::format("job {}: removing its home: {}", job.id, ec.message()));
}

}  // namespace ralph::ralphd
