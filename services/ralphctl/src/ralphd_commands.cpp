// `ralphctl status|job|policy|memory`: ralphd's commands over its local socket
// (services/ralphd/local_socket.h).
#include <unistd.h>

#include <charconv>
#include <cstdio>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "ralphd_client.h"
#include "services/ralphctl/command.h"
#include "services/ralphd/commands.h"
#include "services/ralphd/policy.h"
#include "terminal_attach.h"
#include "transport.h"

namespace ralph::ralphctl {
namespace {

using nlohmann::json;

constexpr std::string_view kJobUsage =
    R"(usage: ralphctl job <subcommand> [options]

subcommands:
  run [options] -- ARGV...    submit a job, stream its output, exit with its status
  run --agent PROFILE [--prompt TEXT | --prompt-file PATH] [--model M] [--max-turns N]
                              an agent job (claude, codex, opencode; command takes
                              the ARGV after --): ralphd makes the tool's command
                              line, its events are on the event stream, the raw
                              stream is its output; --prompt-file is a path in
                              the --workspace archive
      --loop [--max-iterations N] [--promise TEXT] [--stop-file PATH] [--max-wall-ms N]
             [--max-tokens N] [--max-cost-microusd N] [--stall N]
                              loop mode: the agent again and again in the same
                              workspace until a stop condition (`job iterations`)
      --profile NAME          the policy profile (default: "agent" for an agent
                              job when the policy has it, else "default")
      --workspace TAR         upload TAR into the workspace before it starts
      --workspace-git URL [--ref BRANCH|TAG]
                              clone URL (http/https; its host must be allowed by
                              the profile's egress) into the workspace, inside the
                              job's sandbox, before the command runs
      --cwd DIR               its working directory (default the workspace, /work)
      --memory BYTES --cpu-millis N --pids N --disk BYTES --timeout-ms N
                              ask for less than the profile allows
      --detach                print the job and return at once
      --tty                   run it on a pty and attach to it (as `attach`; the
                              end of a piped stdin types Ctrl-D instead of detaching)
  list [--state S] [--limit N]
  show ID
  logs ID [--stream stdout|stderr] [--offset N] [--follow]
  start ID                    start a job submitted with --detach before its upload
  cancel ID
  attach ID                   this terminal on a tty job's pty (raw mode; Ctrl-]
                              detaches, the job keeps running); with stdin not a
                              terminal, its bytes are the input and its end detaches;
                              exits with the job's status if it ends meanwhile
  files ID                    the files the job changed (path, size, SHA-256)
  iterations ID               a loop job's iterations: exit, commit, usage, stop reason
  pause ID | resume ID        a loop job: no next iteration until resume
  diff ID N [M] [--limit BYTES]
                              a loop job's iteration N: its change (against the
                              workspace it started from), or against iteration M
  rollback ID N               a paused (idle) or ended loop job's workspace back to
                              iteration N's commit, exactly
  download ID [--output FILE] [--list]
                              its workspace as a tar (or the listing)

options:
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --remote https://HOST:PORT  an appliance's HTTPS API instead (also before the
                              command: `ralphctl --remote URL job ...`)
  --identity DIR              the paired client identity for --remote (default
                              $XDG_CONFIG_HOME/ralphctl; see `ralphctl remote`)
  --json                      machine-readable output
)";

constexpr std::string_view kPolicyUsage =
    R"(usage: ralphctl policy <subcommand> [options]

subcommands:
  get [--version N]           the active policy document (or version N)
  set FILE [--comment TEXT]   make FILE the active policy (a bad one changes nothing)
  validate FILE               check FILE locally: every issue as FILE:LINE:COLUMN
  history [--limit N]         the versions, newest first
  rollback VERSION            make an earlier version active again (as a new version)

options:
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --remote https://HOST:PORT  an appliance's HTTPS API instead
  --identity DIR              the paired client identity for --remote
  --json                      machine-readable output
)";

constexpr std::string_view kMemoryUsage =
    R"(usage: ralphctl memory <subcommand> [options]

The shared agent memory (docs/memory.md): immutable JSON values under keys,
each named by the SHA-256 of (agent, key, value). Jobs whose policy grants
it reach the same store through a socket in their sandbox.

subcommands:
  put KEY VALUE               write VALUE (JSON text) under KEY as this caller;
                              prints the entry's hash
  get HASH                    the entry with that hash
  query [PREFIX]              entries whose key starts with PREFIX (every key
                              without one), in write order
  history KEY                 every value KEY has had, in write order
  list AGENT                  the entries AGENT wrote (job:7, uid:0, cert:ID)

options:
  --after SEQ                 entries after this one (a previous page's "more")
  --limit N                   at most N entries (1..1000, default 100)
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --remote https://HOST:PORT  an appliance's HTTPS API instead
  --identity DIR              the paired client identity for --remote
  --json                      machine-readable output
)";

constexpr std::string_view kPairUsage =
    R"(usage: ralphctl pair [--unless-paired] [--json] [--socket PATH]

Makes a one-time pairing offer in ralphd's HTTPS API (ralphd --api-listen)
and prints its pairing string and QR code: a client that presents it over
TLS to this device gets a client certificate (docs/api.md "Pairing").
With --unless-paired, makes none while a client is paired and not revoked
(the appliance's boot-time offer on the console).
)";

constexpr std::string_view kPairingsUsage =
    R"(usage: ralphctl pairings <subcommand> [options]

subcommands:
  list                        the paired clients (id, name, times, revoked)
  revoke ID                   the client's certificate is refused from now on

options:
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --json                      machine-readable output
)";

constexpr std::string_view kCredsUsage =
    R"(usage: ralphctl creds <subcommand> [options]

The agents' logins (docs/credentials.md): captured from each tool's own
login flow, stored encrypted on the appliance, granted to the jobs whose
policy says so (<credentials scopes=...>). No API key is ever asked for.

subcommands:
  login PROFILE [--scope agent|tenant|global] [--name NAME] [--policy-profile P]
                              run the tool's own login (claude, codex, opencode)
                              in a sandbox that reaches only its login hosts, on
                              this terminal: open the URL it prints or enter its
                              device code, paste what the provider shows; the
                              credential it writes is stored for the account
                              (PROFILE, scope, NAME: the policy profile for agent,
                              the tenant for tenant, none for global).
                              --policy-profile: whose limits and mounts the
                              login's sandbox gets (default "default")
  list                        the accounts stored and the jobs holding each
  revoke PROFILE [--scope S] [--name NAME]
                              remove the account's credential; jobs holding it
                              lose it at once

options:
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --remote https://HOST:PORT  an appliance's HTTPS API instead
  --identity DIR              the paired client identity for --remote
  --json                      machine-readable output
)";

constexpr OptionSpec kOptions[] = {
    {"--socket", true},
    {"--json", false},
    {"--help", false},
    {"--profile", true},
    {"--workspace", true},
    {"--workspace-git", true},
    {"--ref", true},
    {"--cwd", true},
    {"--memory", true},
    {"--cpu-millis", true},
    {"--pids", true},
    {"--disk", true},
    {"--timeout-ms", true},
    {"--detach", false},
    {"--state", true},
    {"--limit", true},
    {"--stream", true},
    {"--offset", true},
    {"--follow", false},
    {"--output", true},
    {"--list", false},
    {"--version", true},
    {"--comment", true},
    {"--tty", false},
    kRemoteOption,
    kIdentityOption,
    {"--unless-paired", false},
    {"--scope", true},
    {"--name", true},
    {"--policy-profile", true},
    {"--agent", true},
    {"--prompt", true},
    {"--prompt-file", true},
    {"--model", true},
    {"--max-turns", true},
    {"--loop", false},
    {"--max-iterations", true},
    {"--promise", true},
    {"--stop-file", true},
    {"--max-wall-ms", true},
    {"--max-tokens", true},
    {"--max-cost-microusd", true},
    {"--stall", true},
    {"--after", true},
};

Result<uint64_t> Number(std::string_view what, const std::string& text) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: '{}' is not a number", what, text));
  }
  return n;
}

// Each of `options` given (a number) as its field of `into`.
Result<void> NumberOptions(const ParsedArgs& args,
                           std::span<const std::pair<std::string_view, std::string_view>> options,
                           json& into) {
  for (const auto& [option, field] : options) {
    if (auto text = args.Value(option)) into[std::string(field)] = TRY(Number(option, *text));
  }
  return {};
}

void PrintIssues(const json& reply, std::string_view file) {
  if (!reply.contains("error") || !reply["error"].contains("issues")) return;
  for (const json& issue : reply["error"]["issues"]) {
    int column = issue.value("column", 0);
    fmt::print(stderr, "{}:{}{}: {}\n", file, issue.value("line", 0),
               column ? fmt::format(":{}", column) : "", issue.value("message", ""));
  }
}

// One request through the transport the options select (local socket or
// --remote); the reply's body, or the error.
Result<json> Request(const ParsedArgs& args, std::string verb, std::string path,
                     json query = json::object(), std::optional<json> body = std::nullopt,
                     std::optional<std::string> raw_body = std::nullopt) {
  std::unique_ptr<RalphdTransport> transport = TRY(OpenTransport(args));
  json refusal;
  Result<json> reply = transport->Call({.verb = std::move(verb),
                                        .path = std::move(path),
                                        .query = std::move(query),
                                        .body = std::move(body),
                                        .raw_body = std::move(raw_body)},
                                       &refusal);
  if (!reply) PrintIssues(refusal, "policy");
  return reply;
}

std::string Str(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_null()) return "-";
  return ralphd::DumpJson(value);
}

void PrintJob(const json& job) {
  fmt::print("job {}: {}\n", Str(job["id"]), Str(job["state"]));
  fmt::print("  argv:     {}\n", Str(job["argv"]));
  fmt::print("  profile:  {} (policy version {})\n", Str(job["profile"]),
             Str(job["policy_version"]));
  fmt::print("  created:  {}\n  started:  {}\n  finished: {}\n", Str(job["created"]),
             Str(job["started"]), Str(job["finished"]));
  if (job.contains("termination")) {
    fmt::print("  result:   {} exit={} signal={}\n", Str(job["termination"]), Str(job["exit_code"]),
               Str(job["signal"]));
    fmt::print("  usage:    {}\n", Str(job["usage"]));
  }
  if (job.contains("reason")) fmt::print("  reason:   {}\n", Str(job["reason"]));
}

// The job's exit status as ralphctl's: its own exit code when it exited.
int JobExit(const json& job) {
  std::string state = job.value("state", "");
  if (state == "succeeded") return kExitOk;
  if (job.value("termination", "") == "exited") return job.value("exit_code", kExitFailed);
  return kExitFailed;
}

void WriteOut(std::string_view bytes) {
  std::fwrite(bytes.data(), 1, bytes.size(), stdout);
  std::fflush(stdout);
}

// Streams the job's `stream` from `offset` to stdout until it is over; the
// final record.
Result<json> Follow(const ParsedArgs& args, uint64_t id, std::string stream, uint64_t offset) {
  std::unique_ptr<RalphdTransport> transport = TRY(OpenTransport(args));
  return transport->FollowOutput(id, stream, offset, WriteOut);
}

int JobRun(const ParsedArgs& args, std::vector<std::string> argv) {
  const std::string command = "job run";
  std::optional<std::string> agent = args.Value("--agent");
  if (argv.empty() && (!agent || *agent == "command")) {
    return UsageError(command, "the command to run goes after --");
  }
  json body = json::object();
  if (auto profile = args.Value("--profile")) body["profile"] = *profile;
  if (!argv.empty()) body["argv"] = argv;
  if (agent) {
    json spec = {{"profile", *agent}};
    if (auto prompt = args.Value("--prompt")) spec["prompt"] = *prompt;
    if (auto file = args.Value("--prompt-file")) spec["prompt_file"] = *file;
    if (auto model = args.Value("--model")) spec["model"] = *model;
    if (auto turns = args.Value("--max-turns")) {
      Result<uint64_t> n = Number("--max-turns", *turns);
      if (!n) return UsageError(command, n.error().message());
      spec["max_turns"] = *n;
    }
    body["agent"] = spec;
    if (args.Has("--loop")) {
      json loop = json::object();
      static constexpr std::pair<std::string_view, std::string_view> kNumbers[] = {
          {"--max-iterations", "max_iterations"},
          {"--max-wall-ms", "max_wall_ms"},
          {"--max-tokens", "max_tokens"},
          {"--max-cost-microusd", "max_cost_microusd"},
          {"--stall", "stall_iterations"}};
      Result<void> numbers = NumberOptions(args, kNumbers, loop);
      if (!numbers) return UsageError(command, numbers.error().message());
      if (auto promise = args.Value("--promise")) loop["promise"] = *promise;
      if (auto file = args.Value("--stop-file")) loop["stop_file"] = *file;
      body["loop"] = loop;
    }
  } else {
    for (const char* option : {"--prompt", "--prompt-file", "--model", "--max-turns", "--loop"}) {
      if (args.Has(option)) return UsageError(command, fmt::format("{} needs --agent", option));
    }
  }
  if (auto cwd = args.Value("--cwd")) body["cwd"] = *cwd;
  json limits = json::object();
  static constexpr std::pair<std::string_view, std::string_view> kLimits[] = {
      {"--memory", "memory_bytes"},
      {"--cpu-millis", "cpu_millis"},
      {"--pids", "pids"},
      {"--disk", "disk_bytes"},
      {"--timeout-ms", "timeout_ms"}};
  Result<void> numbers = NumberOptions(args, kLimits, limits);
  if (!numbers) return UsageError(command, numbers.error().message());
  if (!limits.empty()) body["limits"] = limits;
  const bool tty = args.Has("--tty");
  if (tty) {
    body["tty"] = true;
    uint16_t columns = 0, rows = 0;
    if (LocalWindowSize(columns, rows)) {
      body["columns"] = columns;
      body["rows"] = rows;
    }
  }
  if (auto url = args.Value("--workspace-git")) {
    if (args.Has("--workspace")) {
      return UsageError(command, "--workspace and --workspace-git exclude each other");
    }
    json git = {{"url", *url}};
    if (auto ref = args.Value("--ref")) git["ref"] = *ref;
    body["workspace_git"] = git;
  } else if (args.Has("--ref")) {
    return UsageError(command, "--ref needs --workspace-git");
  }
  std::optional<std::string> upload;
  if (auto tar = args.Value("--workspace")) {
    Result<std::string> bytes = ReadWholeFile(*tar);
    if (!bytes) return Failed(command, bytes.error());
    upload = std::move(*bytes);
    body["start"] = false;
  }
  Result<json> job = Request(args, "POST", "/v1/jobs", json::object(), body);
  if (!job) return Failed(command, job.error());
  uint64_t id = (*job)["id"].get<uint64_t>();
  if (upload) {
    Result<json> uploaded = Request(args, "PUT", fmt::format("/v1/jobs/{}/workspace", id),
                                    json::object(), std::nullopt, *upload);
    if (!uploaded) return Failed(command, uploaded.error());
    job = Request(args, "POST", fmt::format("/v1/jobs/{}/start", id));
    if (!job) return Failed(command, job.error());
  }
  if (args.Has("--detach")) {
    if (args.Has("--json")) {
      fmt::print("{}\n", ralphd::DumpJson(*job, 2));
    } else {
      fmt::print("job {}: {}\n", id, Str((*job)["state"]));
    }
    return kExitOk;
  }
  if (tty) {
    Result<std::unique_ptr<TerminalTransportInterface>> transport = OpenTerminalTransport(args);
    if (!transport) return Failed(command, transport.error());
    return RunTerminal(**transport, id, InputEnd::kSendEof, command);
  }
  Result<json> end = Follow(args, id, "stdout", 0);
  if (!end) return Failed(command, end.error());
  // stderr after the job, whole.
  Result<json> err = Request(args, "GET", fmt::format("/v1/jobs/{}/logs", id),
                             {{"stream", "stderr"}, {"limit", "1048576"}});
  if (err) {
    Result<std::string> bytes =
        ralphd::Base64Decode((*err).value("data_base64", ""), "data_base64");
    if (bytes) std::fwrite(bytes->data(), 1, bytes->size(), stderr);
  }
  if (args.Has("--json")) {
    fmt::print("{}\n", ralphd::DumpJson(*end, 2));
  } else if ((*end).value("state", "") != "succeeded") {
    fmt::print(stderr, "ralphctl job run: job {} {}{}\n", id, Str((*end)["state"]),
               (*end).contains("reason") ? ": " + Str((*end)["reason"]) : "");
  }
  return JobExit(*end);
}

// `job diff ID N [M]` and `job rollback ID N`: a loop job's repository.
int LoopRepositoryVerb(const ParsedArgs& args, const std::string& verb,
                       const std::vector<std::string>& operands) {
  const std::string command = "job " + verb;
  const bool diff = verb == "diff";
  if (operands.size() < 2 || operands.size() > (diff ? 3u : 2u)) {
    return UsageError(command, diff ? "expected ID N [M] (the job, its iteration, and the "
                                      "iteration to compare with)"
                                    : "expected ID N (the job and the iteration to restore)");
  }
  Result<uint64_t> id = Number("job id", operands[0]);
  if (!id) return UsageError(command, id.error().message());
  Result<uint64_t> iteration = Number("iteration", operands[1]);
  if (!iteration) return UsageError(command, iteration.error().message());
  std::string path = fmt::format("/v1/jobs/{}/{}", *id, verb);
  Result<json> reply = Error::Make(ErrorCode::kInternal, "");
  if (diff) {
    json query = {{"iteration", std::to_string(*iteration)}};
    if (operands.size() == 3) {
      Result<uint64_t> from = Number("iteration", operands[2]);
      if (!from) return UsageError(command, from.error().message());
      query["from"] = std::to_string(*from);
    }
    if (auto limit = args.Value("--limit")) {
      Result<uint64_t> n = Number("--limit", *limit);
      if (!n) return UsageError(command, n.error().message());
      query["limit"] = std::to_string(*n);
    }
    reply = Request(args, "GET", path, query);
  } else {
    reply = Request(args, "POST", path, json::object(), json{{"iteration", *iteration}});
  }
  if (!reply) return Failed(command, reply.error());
  if (args.Has("--json")) {
    fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  } else if (diff) {
    // The diff itself, as git prints it (its truncation marker included).
    WriteOut((*reply).value("diff", std::string()));
  } else {
    fmt::print("job {}: workspace rolled back to iteration {} ({}), recorded as {}\n", *id,
               *iteration, Str((*reply)["commit"]), Str((*reply)["rollback_commit"]));
  }
  return kExitOk;
}

int RunJobVerb(const ParsedArgs& args, const std::string& verb,
               const std::vector<std::string>& operands) {
  const std::string command = "job " + verb;
  bool as_json = args.Has("--json");
  if (verb == "list") {
    json query = json::object();
    if (auto state = args.Value("--state")) query["state"] = *state;
    if (auto limit = args.Value("--limit")) query["limit"] = *limit;
    Result<json> reply = Request(args, "GET", "/v1/jobs", query);
    if (!reply) return Failed(command, reply.error());
    if (as_json) {
      fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
      return kExitOk;
    }
    for (const json& job : (*reply)["jobs"]) {
      fmt::print("{:>6}  {:<10} {:<10} {}\n", Str(job["id"]), Str(job["state"]),
                 Str(job["profile"]), Str(job["argv"]));
    }
    return kExitOk;
  }
  if (verb == "diff" || verb == "rollback") return LoopRepositoryVerb(args, verb, operands);
  if (operands.size() != 1) return UsageError(command, "which job? (one ID)");
  Result<uint64_t> id = Number("job id", operands[0]);
  if (!id) return UsageError(command, id.error().message());
  std::string path = fmt::format("/v1/jobs/{}", *id);
  if (verb == "attach") {
    Result<std::unique_ptr<TerminalTransportInterface>> transport = OpenTerminalTransport(args);
    if (!transport) return Failed(command, transport.error());
    return RunTerminal(**transport, *id, InputEnd::kDetach, command);
  }
  if (verb == "logs") {
    std::string stream = args.Value("--stream").value_or("stdout");
    uint64_t offset = 0;
    if (auto text = args.Value("--offset")) {
      Result<uint64_t> n = Number("--offset", *text);
      if (!n) return UsageError(command, n.error().message());
      offset = *n;
    }
    if (args.Has("--follow")) {
      Result<json> end = Follow(args, *id, stream, offset);
      if (!end) return Failed(command, end.error());
      return kExitOk;
    }
    // Everything from the offset, in pieces.
    while (true) {
      Result<json> reply =
          Request(args, "GET", path + "/logs",
                  {{"stream", stream}, {"offset", std::to_string(offset)}, {"limit", "1048576"}});
      if (!reply) return Failed(command, reply.error());
      Result<std::string> bytes =
          ralphd::Base64Decode((*reply).value("data_base64", ""), "data_base64");
      if (!bytes) return Failed(command, bytes.error());
      if (bytes->empty()) return kExitOk;
      WriteOut(*bytes);
      offset = (*reply)["offset"].get<uint64_t>() + bytes->size();
    }
  }
  if (verb == "download") {
    bool list = args.Has("--list");
    Result<json> reply =
        Request(args, "GET", path + "/workspace", {{"format", list ? "list" : "tar"}});
    if (!reply) return Failed(command, reply.error());
    if (list) {
      if (as_json) {
        fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
      } else {
        for (const json& file : (*reply)["files"]) {
          fmt::print("{:<10} {:>10}  {}\n", Str(file["kind"]), Str(file["size"]),
                     Str(file["path"]));
        }
      }
      return kExitOk;
    }
    const std::string& tar = (*reply)["bytes"].get_ref<const std::string&>();
    if (auto output = args.Value("--output")) {
      Result<void> written = WriteWholeFile(*output, tar, 0644);
      if (!written) return Failed(command, written.error());
    } else if (::isatty(STDOUT_FILENO)) {
      return UsageError(command, "not writing a tar archive to a terminal (use --output FILE)");
    } else {
      WriteOut(tar);
    }
    return kExitOk;
  }
  Result<json> reply = verb == "show"         ? Request(args, "GET", path)
                       : verb == "cancel"     ? Request(args, "POST", path + "/cancel")
                       : verb == "files"      ? Request(args, "GET", path + "/files")
                       : verb == "iterations" ? Request(args, "GET", path + "/iterations")
                       : verb == "pause"      ? Request(args, "POST", path + "/pause")
                       : verb == "resume"     ? Request(args, "POST", path + "/resume")
                       : verb == "start"      ? Request(args, "POST", path + "/start")
                                              : Error::Make(ErrorCode::kInvalidArgument, "");
  if (!reply && reply.error().message().empty()) {
    return UsageError("job", fmt::format("unknown subcommand '{}'", verb));
  }
  if (!reply) return Failed(command, reply.error());
  if (as_json) {
    fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  } else if (verb == "files") {
    for (const json& file : (*reply)["files"]) {
      fmt::print("{:<8} {:>10}  {}  {}\n", Str(file["kind"]), Str(file["size"]),
                 file.contains("sha256") ? Str(file["sha256"]) : std::string(64, '-'),
                 Str(file["path"]));
    }
  } else if (verb == "pause" || verb == "resume") {
    fmt::print("job {}: {}{}\n", *id, (*reply).value("paused", false) ? "paused" : "running",
               (*reply).value("idle", false) ? " (between iterations)" : "");
  } else if (verb == "iterations") {
    for (const json& it : (*reply)["iterations"]) {
      fmt::print("{:>5}  {:<8} exit={:<4} {:<9} {}  {}\n", Str(it["iteration"]),
                 it.contains("termination") ? Str(it["termination"]) : std::string("-"),
                 it.contains("exit_code") ? Str(it["exit_code"]) : std::string("-"),
                 it.value("changed", false) ? "changed" : "unchanged", Str(it["commit"]),
                 it.contains("stop") ? "stop: " + Str(it["stop"]) : std::string());
    }
  } else {
    PrintJob(*reply);
  }
  return kExitOk;
}

int PolicyValidate(const std::string& file, bool as_json) {
  Result<std::string> document = ReadWholeFile(file);
  if (!document) return Failed("policy validate", document.error());
  ralphd::PolicyCheck check = ralphd::CheckPolicy(*document);
  if (as_json) {
    json issues = json::array();
    for (const ralphd::PolicyIssue& issue : check.issues) {
      issues.push_back(
          {{"line", issue.line}, {"column", issue.column}, {"message", issue.message}});
    }
    fmt::print("{}\n",
               ralphd::DumpJson({{"file", file}, {"valid", check.ok()}, {"issues", issues}}, 2));
  } else if (check.ok()) {
    fmt::print("{}: valid ({} profiles)\n", file, check.policy->profiles.size());
  } else {
    for (const ralphd::PolicyIssue& issue : check.issues) {
      fmt::print(stderr, "{}:{}\n", file, issue.ToString());
    }
  }
  return check.ok() ? kExitOk : kExitFailed;
}

int RunPolicyVerb(const ParsedArgs& args, const std::string& verb,
                  const std::vector<std::string>& operands) {
  const std::string command = "policy " + verb;
  bool as_json = args.Has("--json");
  size_t want = verb == "set" || verb == "validate" || verb == "rollback" ? 1 : 0;
  if (operands.size() != want) {
    return UsageError(command, want ? "expects one argument" : "takes no arguments");
  }
  if (verb == "validate") return PolicyValidate(operands[0], as_json);
  Result<json> reply = Error::Make(ErrorCode::kInvalidArgument, "");
  if (verb == "get") {
    json query = json::object();
    if (auto version = args.Value("--version")) query["version"] = *version;
    reply = Request(args, "GET", "/v1/policy", query);
    if (reply && !as_json) {
      fmt::print("{}", Str((*reply)["document"]));
      return kExitOk;
    }
  } else if (verb == "set") {
    Result<std::string> document = ReadWholeFile(operands[0]);
    if (!document) return Failed(command, document.error());
    Result<std::unique_ptr<RalphdTransport>> transport = OpenTransport(args);
    if (!transport) return Failed(command, transport.error());
    json refusal;
    reply = (*transport)
                ->Call({.verb = "PUT",
                        .path = "/v1/policy",
                        .body = json{{"document", *document},
                                     {"comment", args.Value("--comment").value_or("")}}},
                       &refusal);
    if (!reply && refusal.is_object() && refusal.contains("error") &&
        refusal["error"].contains("issues")) {
      PrintIssues(refusal, operands[0]);
      fmt::print(stderr, "ralphctl policy set: {} is invalid; the active policy is unchanged\n",
                 operands[0]);
      return kExitFailed;
    }
    if (reply && !as_json) {
      fmt::print("policy version {} is active\n", Str((*reply)["version"]));
      return kExitOk;
    }
  } else if (verb == "history") {
    json query = json::object();
    if (auto limit = args.Value("--limit")) query["limit"] = *limit;
    reply = Request(args, "GET", "/v1/policy/history", query);
    if (reply && !as_json) {
      for (const json& version : (*reply)["versions"]) {
        fmt::print("{:>4}{} {}  {:<8} {}\n", Str(version["version"]),
                   version.value("active", false) ? "*" : " ", Str(version["time"]),
                   Str(version["actor"]), Str(version["comment"]));
      }
      return kExitOk;
    }
  } else if (verb == "rollback") {
    Result<uint64_t> version = Number("version", operands[0]);
    if (!version) return UsageError(command, version.error().message());
    reply =
        Request(args, "POST", "/v1/policy/rollback", json::object(), json{{"version", *version}});
    if (reply && !as_json) {
      fmt::print("policy version {} is active ({})\n", Str((*reply)["version"]),
                 Str((*reply)["comment"]));
      return kExitOk;
    }
  } else {
    return UsageError("policy", fmt::format("unknown subcommand '{}'", verb));
  }
  if (!reply) return Failed(command, reply.error());
  fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  return kExitOk;
}

// Pairing is the console's: ralphd refuses it from a client certificate
// (a paired client can neither pair others nor revoke anyone).
int ConsoleOnly(std::string_view command) {
  return UsageError(command,
                    "pairing is done on the appliance's console (the local socket): ralphd "
                    "refuses it from a paired client's certificate, so not with --remote");
}

// "job run ... -- ARGV": the arguments after "--" are the job's.
std::pair<std::vector<std::string>, std::vector<std::string>> SplitAtDashes(
    std::span<const std::string> args) {
  std::vector<std::string> before, after;
  bool seen = false;
  for (const std::string& arg : args) {
    if (!seen && arg == "--") {
      seen = true;
    } else {
      (seen ? after : before).push_back(arg);
    }
  }
  return {before, after};
}

}  // namespace

int RunStatusCommand(const Invocation&, std::span<const std::string> args) {
  Result<ParsedArgs> parsed = ParseArgs(args, kOptions);
  if (!parsed) return UsageError("status", parsed.error().message());
  if (parsed->Has("--help")) {
    fmt::print("usage: ralphctl status [--json] [--socket PATH | --remote URL [--identity DIR]]\n");
    return kExitOk;
  }
  if (auto bad = TransportUsageError(*parsed)) return UsageError("status", *bad);
  if (!parsed->positional.empty()) {
    return UsageError("status", fmt::format("unexpected argument '{}'", parsed->positional[0]));
  }
  Result<json> reply = Request(*parsed, "GET", "/v1/status");
  if (!reply) return Failed("status", reply.error());
  if (parsed->Has("--json")) {
    fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
    return kExitOk;
  }
  const json& jobs = (*reply)["jobs"];
  fmt::print("ralphd: {} running (at most {}), {} queued, {} created\n", Str(jobs["running"]),
             Str((*reply)["max_running"]), Str(jobs["queued"]), Str(jobs["created"]));
  fmt::print("policy version {}; last event {}; audit tip {}\n", Str((*reply)["policy_version"]),
             Str((*reply)["last_event_seq"]), Str((*reply)["audit_tip"]));
  fmt::print("secure boot: {}\n", Str((*reply)["secure_boot"]));
  return kExitOk;
}

int RunPairCommand(const Invocation&, std::span<const std::string> args) {
  Result<ParsedArgs> parsed = ParseArgs(args, kOptions);
  if (!parsed) return UsageError("pair", parsed.error().message());
  if (parsed->Has("--help")) {
    fmt::print("{}", kPairUsage);
    return kExitOk;
  }
  if (parsed->Has("--remote")) return ConsoleOnly("pair");
  if (!parsed->positional.empty()) {
    return UsageError("pair", fmt::format("unexpected argument '{}'", parsed->positional[0]));
  }
  if (parsed->Has("--unless-paired")) {
    Result<json> listed = Request(*parsed, "GET", "/v1/pairings");
    if (!listed) return Failed("pair", listed.error());
    size_t paired = 0;
    for (const json& client : (*listed)["pairings"]) paired += client.value("revoked", 0) == 0;
    if (paired > 0) {
      fmt::print("{} client(s) paired: no pairing offer made (`ralphctl pair` makes one)\n",
                 paired);
      return kExitOk;
    }
  }
  Result<json> reply = Request(*parsed, "POST", "/v1/pairing/offers");
  if (!reply) return Failed("pair", reply.error());
  if (parsed->Has("--json")) {
    fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
    return kExitOk;
  }
  fmt::print("{}\n{}\n", Str((*reply)["pairing"]), Str((*reply)["qr"]));
  fmt::print("one-time offer {} for {}; expires at {} (unix seconds)\n", Str((*reply)["id"]),
             Str((*reply)["address"]), Str((*reply)["expires"]));
  if (reply->contains("note")) fmt::print("note: {}\n", Str((*reply)["note"]));
  return kExitOk;
}

int RunPairingsCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("pairings", args, kOptions, kPairingsUsage, parsed)) {
    return *exit;
  }
  if (parsed.Has("--remote")) return ConsoleOnly("pairings");
  const std::vector<std::string>& operands = parsed.positional;
  Result<json> reply = Error::Make(ErrorCode::kInternal, "unset");
  if (operands[0] == "list" && operands.size() == 1) {
    reply = Request(parsed, "GET", "/v1/pairings");
    if (reply && !parsed.Has("--json")) {
      for (const json& client : (*reply)["pairings"]) {
        fmt::print("{}  {:<24} paired {} expires {}{}\n", Str(client["id"]), Str(client["name"]),
                   Str(client["paired"]), Str(client["expires"]),
                   client.value("revoked", 0) != 0 ? " REVOKED" : "");
      }
      return kExitOk;
    }
  } else if (operands[0] == "revoke" && operands.size() == 2) {
    reply =
        Request(parsed, "POST", "/v1/pairings/revoke", json::object(), json{{"id", operands[1]}});
    if (reply && !parsed.Has("--json")) {
      fmt::print("client {} revoked\n", operands[1]);
      return kExitOk;
    }
  } else {
    return UsageError("pairings", "expected 'list' or 'revoke ID'");
  }
  if (!reply) return Failed("pairings", reply.error());
  fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  return kExitOk;
}

int RunJobCommand(const Invocation&, std::span<const std::string> args) {
  auto [options, argv] = SplitAtDashes(args);
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("job", options, kOptions, kJobUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("job", *bad);
  std::string verb = parsed.positional[0];
  std::vector<std::string> operands(parsed.positional.begin() + 1, parsed.positional.end());
  if (verb == "run") {
    if (!operands.empty()) argv.insert(argv.begin(), operands.begin(), operands.end());
    return JobRun(parsed, argv);
  }
  if (!argv.empty()) return UsageError("job " + verb, "'--' goes with run");
  return RunJobVerb(parsed, verb, operands);
}

int RunCredsCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("creds", args, kOptions, kCredsUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("creds", *bad);
  const std::vector<std::string>& operands = parsed.positional;
  const std::string& verb = operands[0];
  const std::string command = "creds " + verb;
  if (verb == "list") {
    if (operands.size() != 1) return UsageError(command, "takes no arguments");
    Result<json> reply = Request(parsed, "GET", "/v1/creds");
    if (!reply) return Failed(command, reply.error());
    if (parsed.Has("--json")) {
      fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
      return kExitOk;
    }
    if ((*reply)["accounts"].empty()) fmt::print("no accounts (`ralphctl creds login PROFILE`)\n");
    for (const json& account : (*reply)["accounts"]) {
      std::string holders;
      for (const json& job : account["holders"]) {
        holders += (holders.empty() ? " held by job " : ", ") + Str(job);
      }
      fmt::print("{:<32} updated {} (unix){}\n", Str(account["account"]),
                 Str(account["updated_unix"]), holders);
    }
    return kExitOk;
  }
  if (verb != "login" && verb != "revoke") {
    return UsageError("creds", fmt::format("unknown subcommand '{}' (login, list, revoke)", verb));
  }
  if (operands.size() != 2) return UsageError(command, "expects PROFILE (claude, codex, opencode)");
  json body = {{"profile", operands[1]}, {"scope", parsed.Value("--scope").value_or("global")}};
  if (auto name = parsed.Value("--name")) body["name"] = *name;
  if (verb == "revoke") {
    if (parsed.Has("--policy-profile")) {
      return UsageError(command, "--policy-profile goes with login");
    }
    Result<json> reply = Request(parsed, "POST", "/v1/creds/revoke", json::object(), body);
    if (!reply) return Failed(command, reply.error());
    if (parsed.Has("--json")) {
      fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
    } else {
      fmt::print("account {} revoked\n", Str((*reply)["revoked"]));
    }
    return kExitOk;
  }
  if (auto policy_profile = parsed.Value("--policy-profile")) {
    body["policy_profile"] = *policy_profile;
  }
  uint16_t columns = 0, rows = 0;
  if (LocalWindowSize(columns, rows)) {
    body["columns"] = columns;
    body["rows"] = rows;
  }
  Result<json> job = Request(parsed, "POST", "/v1/creds/login", json::object(), body);
  if (!job) return Failed(command, job.error());
  uint64_t id = (*job)["id"].get<uint64_t>();
  std::string account = Str((*job)["account"]);
  fmt::print(stderr, "logging in {} (job {}) ...\r\n", account, id);
  Result<std::unique_ptr<TerminalTransportInterface>> transport = OpenTerminalTransport(parsed);
  if (!transport) return Failed(command, transport.error());
  int status = RunTerminal(**transport, id, InputEnd::kSendEof, command);
  // The login's outcome is the job's: captured, or why not.
  Result<json> done = Request(parsed, "GET", fmt::format("/v1/jobs/{}", id));
  if (!done) return Failed(command, done.error());
  std::string state = Str((*done)["state"]);
  if (state == "succeeded") {
    fmt::print(stderr, "logged in: {} stored\n", account);
    return kExitOk;
  }
  if (state == "running" || state == "queued") {
    fmt::print(stderr, "detached: the login (job {}) goes on; `ralphctl job attach {}`\n", id, id);
    return status;
  }
  fmt::print(stderr, "login failed ({}): {}\n", state, Str((*done)["reason"]));
  return status == 0 ? kExitFailed : status;
}

int RunPolicyCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("policy", args, kOptions, kPolicyUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("policy", *bad);
  std::string verb = parsed.positional[0];
  std::vector<std::string> operands(parsed.positional.begin() + 1, parsed.positional.end());
  return RunPolicyVerb(parsed, verb, operands);
}

namespace {

void PrintEntries(const json& reply) {
  for (const json& entry : reply.value("entries", json::array())) {
    fmt::print("{:>6}  {}  {:<12} {}  {}\n", Str(entry["seq"]), Str(entry["hash"]).substr(0, 12),
               Str(entry["agent"]), Str(entry["key"]), ralphd::DumpJson(entry["value"]));
  }
  if (reply.contains("next_after")) {
    fmt::print("more: --after {}\n", Str(reply["next_after"]));
  }
}

}  // namespace

int RunMemoryCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("memory", args, kOptions, kMemoryUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("memory", *bad);
  const std::string verb = parsed.positional[0];
  const std::string command = "memory " + verb;
  std::vector<std::string> operands(parsed.positional.begin() + 1, parsed.positional.end());
  const bool as_json = parsed.Has("--json");
  json query = json::object();
  if (verb == "query" || verb == "history" || verb == "list") {
    if (auto after = parsed.Value("--after")) query["after"] = *after;
    if (auto limit = parsed.Value("--limit")) query["limit"] = *limit;
  } else if (parsed.Has("--after") || parsed.Has("--limit")) {
    return UsageError(command, "--after and --limit go with query, history and list");
  }
  Result<json> reply = Error::Make(ErrorCode::kInternal, "unset");
  if (verb == "put") {
    if (operands.size() != 2) return UsageError(command, "expects KEY VALUE");
    json value = json::parse(operands[1], nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) {
      return UsageError(
          command, fmt::format("VALUE: '{}' is not JSON (a string is \"quoted\")", operands[1]));
    }
    reply = Request(parsed, "POST", "/v1/memory", json::object(),
                    json{{"key", operands[0]}, {"value", value}});
    if (reply && !as_json) {
      fmt::print("{} ({})\n", Str((*reply)["entry"]["hash"]),
                 (*reply).value("created", false) ? "stored" : "already stored");
      return kExitOk;
    }
  } else if (verb == "get") {
    if (operands.size() != 1) return UsageError(command, "expects HASH");
    reply = Request(parsed, "GET", "/v1/memory/entry", json{{"hash", operands[0]}});
    if (reply && !as_json) {
      const json& entry = (*reply)["entry"];
      fmt::print("{} {} {} {}\n{}\n", Str(entry["seq"]), Str(entry["agent"]), Str(entry["key"]),
                 Str(entry["time"]), ralphd::DumpJson(entry["value"], 2));
      return kExitOk;
    }
  } else if (verb == "query" || verb == "history" || verb == "list") {
    std::string path = "/v1/memory/query";
    if (verb == "query") {
      if (operands.size() > 1) return UsageError(command, "expects at most a PREFIX");
      if (!operands.empty()) query["prefix"] = operands[0];
    } else {
      if (operands.size() != 1) {
        return UsageError(command, verb == "history" ? "expects KEY" : "expects AGENT");
      }
      path = verb == "history" ? "/v1/memory/history" : "/v1/memory/agent";
      query[verb == "history" ? "key" : "agent"] = operands[0];
    }
    reply = Request(parsed, "GET", path, query);
    if (reply && !as_json) {
      PrintEntries(*reply);
      return kExitOk;
    }
  } else {
    return UsageError("memory", fmt::format("unknown subcommand '{}'", verb));
  }
  if (!reply) return Failed(command, reply.error());
  fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  return kExitOk;
}

}  // namespace ralph::ralphctl
