// Agent profiles: how each coding agent runs headless and unattended in a
// job's sandbox (docs/agent-profiles.md).
//
//   AgentOptions options{.prompt = "fix the failing test", .home = "/home/agent"};
//   AgentLaunch launch = TRY(MakeLaunch(AgentKind::kClaude, options));
//   // launch.argv, launch.env, launch.files (written into the home at start)
//   TRY(CheckJobEnvironment(AgentKind::kClaude, job_env));   // no API keys
//
// Each profile puts its tool in its autonomous mode (no permission prompts,
// the tool's own sandbox off). That is safe only because the job's sandbox
// is the boundary: its own namespaces, filesystem, limits and egress
// allowlist. Credentials come from the tools' own login flows (`ralphctl
// creds login <profile>`), never from API keys in a job's environment.
// Pure functions over plain structs; nothing here touches a file.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph::agents {

enum class AgentKind {
  kClaude,    // Claude Code: `claude -p`, stream-json events
  kCodex,     // Codex: `codex exec --json`, JSONL thread events
  kOpenCode,  // OpenCode: `opencode run --format json`, JSON events
  kCommand,   // any command line; its output is not parsed into events
};

// "claude", "codex", "opencode", "command".
std::string_view AgentKindName(AgentKind kind);
// kInvalidArgument naming the profile and the known ones.
Result<AgentKind> ParseAgentKind(std::string_view name);

// What a profile knows about its tool, as data (policy wiring reads it).
struct AgentProfile {
  AgentKind kind;
  std::string_view name;
  // Hosts a running job of this profile talks to (API and token refresh),
  // for its egress allowlist by domain.
  std::span<const std::string_view> api_hosts;
  // Hosts the tool's own login flow needs (`ralphctl creds login`).
  std::span<const std::string_view> login_hosts;
  // The command that logs the tool in, run on a pty relayed to the operator.
  std::span<const std::string_view> login_argv;
  // Where the tool keeps its login, relative to the job's home; empty for
  // the command profile.
  std::string_view credential_file;
};

const AgentProfile& GetProfile(AgentKind kind);

// The longest prompt accepted: it travels as one argv string, and the kernel
// refuses a single argument longer than 128 KiB (MAX_ARG_STRLEN).
inline constexpr size_t kMaxPromptBytes = 100 * 1024;

struct AgentOptions {
  std::string prompt;                 // the agent profiles: required, non-empty
  std::optional<std::string> model;   // the tool's own model name
  std::optional<uint32_t> max_turns;  // Claude Code only (the others have no such limit)
  std::string home = "/home/agent";   // absolute, inside the sandbox; not the workspace
  std::vector<std::string> command;   // the command profile: its argv
};

// A file the profile writes into the job's home before the tool starts.
struct HomeFile {
  std::string path;  // relative to the home ("<dir>/<name>", no "..")
  std::string content;
  mode_t mode = 0600;
};

struct AgentLaunch {
  std::vector<std::string> argv;
  // "NAME=value": HOME, the XDG directories inside the home, PATH, and what
  // the tool needs for unattended runs. They win over the job's own.
  std::vector<std::string> env;
  std::vector<HomeFile> files;
};

// The command line, environment and settings files of one run. kInvalidArgument
// naming the option when it does not fit the profile (an empty or too long
// prompt, max_turns for a tool without a turn limit, an OpenCode model not
// written provider/model, a relative home, an empty command).
Result<AgentLaunch> MakeLaunch(AgentKind kind, const AgentOptions& options);

// The tool's own login flow (the profile's login_argv) with `home` (absolute,
// inside the sandbox) as its home: the environment every run gets and the
// settings files the login needs (Codex keeps its login in
// $CODEX_HOME/auth.json, not a keyring). What it writes to the profile's
// credential_file is the login captured (`ralphctl creds login`).
// kInvalidArgument for the command profile, which has no login.
Result<AgentLaunch> MakeLoginLaunch(AgentKind kind, const std::string& home);

// Writes `files` into `home_dir` (a host directory that becomes the job's
// home), creating their directories (mode 0700), each file replaced
// atomically with its mode. kInvalidArgument for a path that is absolute,
// empty or has a ".." part; the error names the file otherwise.
Result<void> WriteHomeFiles(const std::string& home_dir, std::span<const HomeFile> files);

// Refuses a job environment that carries an API key or token (kRefused,
// naming the variable and explaining the login flow): the vendors' key and
// token variables for every profile, and any *_API_KEY for the agent
// profiles.
Result<void> CheckJobEnvironment(AgentKind kind, const std::map<std::string, std::string>& env);

}  // namespace ralph::agents
