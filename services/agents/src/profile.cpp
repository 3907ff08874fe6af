#include "services/agents/profile.h"

#include <sys/stat.h>

#include <array>
#include <cerrno>

#include <fmt/format.h>

#include "platform/file_io.h"

namespace ralph::agents {
namespace {

using namespace std::string_view_literals;

// Claude Code: the API, and the OAuth token endpoint its login refreshes
// against (console.anthropic.com, moving to platform.claude.com); the login
// itself starts on claude.ai.
constexpr std::array kClaudeApiHosts = {"api.anthropic.com"sv, "console.anthropic.com"sv,
                                        "platform.claude.com"sv};
constexpr std::array kClaudeLoginHosts = {"claude.ai"sv, "claude.com"sv, "console.anthropic.com"sv,
                                          "platform.claude.com"sv, "api.anthropic.com"sv};
constexpr std::array kClaudeLogin = {"claude"sv, "auth"sv, "login"sv};

// Codex signed in with ChatGPT talks to chatgpt.com's backend and refreshes
// its tokens at auth.openai.com; api.openai.com serves API-billed accounts.
constexpr std::array kCodexApiHosts = {"chatgpt.com"sv, "auth.openai.com"sv, "api.openai.com"sv};
constexpr std::array kCodexLoginHosts = {"auth.openai.com"sv, "chatgpt.com"sv};
constexpr std::array kCodexLogin = {"codex"sv, "login"sv, "--device-auth"sv};

// OpenCode reaches the provider it is logged in to (Anthropic or OpenAI
// accounts, or its own Zen gateway at opencode.ai) and fetches its model list
// from models.dev.
constexpr std::array kOpenCodeApiHosts = {
    "opencode.ai"sv,    "models.dev"sv,      "api.anthropic.com"sv, "console.anthropic.com"sv,
    "api.openai.com"sv, "auth.openai.com"sv, "chatgpt.com"sv};
constexpr std::array kOpenCodeLoginHosts = {"opencode.ai"sv,     "models.dev"sv,
                                            "claude.ai"sv,       "console.anthropic.com"sv,
                                            "auth.openai.com"sv, "chatgpt.com"sv};
constexpr std::array kOpenCodeLogin = {"opencode"sv, "auth"sv, "login"sv};

const AgentProfile kProfiles[] = {
    {AgentKind::kClaude, "claude", kClaudeApiHosts, kClaudeLoginHosts, kClaudeLogin,
     ".claude/.credentials.json"},
    {AgentKind::kCodex, "codex", kCodexApiHosts, kCodexLoginHosts, kCodexLogin, ".codex/auth.json"},
    {AgentKind::kOpenCode, "opencode", kOpenCodeApiHosts, kOpenCodeLoginHosts, kOpenCodeLogin,
     ".local/share/opencode/auth.json"},
    {AgentKind::kCommand, "command", {}, {}, {}, ""},
};

constexpr std::string_view kPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

// HOME, the XDG base directories inside it (so every tool keeps its state
// under the job's home), PATH for the tool's own subprocesses, a UTF-8 locale.
std::vector<std::string> CommonEnvironment(const std::string& home) {
  return {
      "HOME=" + home,
      "XDG_CONFIG_HOME=" + home + "/.config",
      "XDG_DATA_HOME=" + home + "/.local/share",
      "XDG_STATE_HOME=" + home + "/.local/state",
      "XDG_CACHE_HOME=" + home + "/.cache",
      std::string("PATH=") + std::string(kPath),
      "LANG=C.UTF-8",
  };
}

Result<void> CheckPrompt(const AgentOptions& options) {
  if (options.prompt.empty()) return Invalid("prompt: an agent profile needs a prompt");
  if (options.prompt.size() > kMaxPromptBytes) {
    return Invalid(fmt::format("prompt: {} bytes is longer than the limit of {} bytes",
                               options.prompt.size(), kMaxPromptBytes));
  }
  if (options.prompt.find('\0') != std::string::npos) {
    return Invalid("prompt: contains a NUL byte");
  }
  return {};
}

Result<AgentLaunch> ClaudeLaunch(const AgentOptions& options) {
  AgentLaunch launch;
  // -p: print mode, one prompt and exit. stream-json needs --verbose in
  // print mode. Never --bare: it skips the OAuth login the job relies on.
  // The prompt goes last after "--" so that one starting with '-' is not
  // taken for an option.
  launch.argv = {"claude",      "-p",        "--output-format",
                 "stream-json", "--verbose", "--dangerously-skip-permissions"};
  if (options.model) launch.argv.insert(launch.argv.end(), {"--model", *options.model});
  if (options.max_turns) {
    launch.argv.insert(launch.argv.end(), {"--max-turns", std::to_string(*options.max_turns)});
  }
  launch.argv.insert(launch.argv.end(), {"--", options.prompt});
  launch.env = CommonEnvironment(options.home);
  // The job runs as uid 0 of its user namespace, and Claude Code refuses
  // --dangerously-skip-permissions as root unless IS_SANDBOX=1 says the
  // environment is a sandbox (which it is).
  launch.env.push_back("IS_SANDBOX=1");
  // No telemetry, error reports or auto-update: the egress allowlist has
  // only the API hosts.
  launch.env.push_back("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1");
  launch.files.push_back({".claude/settings.json",
                          R"({"permissions": {"defaultMode": "bypassPermissions"}})"
                          "\n",
                          0600});
  return launch;
}

Result<AgentLaunch> CodexLaunch(const AgentOptions& options) {
  if (options.max_turns) return Invalid("max_turns: codex exec has no turn limit");
  AgentLaunch launch;
  // --skip-git-repo-check: a workspace need not be a git repository.
  launch.argv = {
      "codex", "exec", "--json", "--sandbox", "danger-full-access", "--skip-git-repo-check"};
  if (options.model) launch.argv.insert(launch.argv.end(), {"--model", *options.model});
  launch.argv.insert(launch.argv.end(), {"--", options.prompt});
  launch.env = CommonEnvironment(options.home);
  launch.env.push_back("CODEX_HOME=" + options.home + "/.codex");
  launch.env.push_back("NO_COLOR=1");
  // approval_policy never: no command waits for an approval nobody gives.
  // The credential store is the file $CODEX_HOME/auth.json (there is no
  // keyring in a sandbox, and the login is captured as that file).
  launch.files.push_back({".codex/config.toml",
                          "# Written at the job's start: the job's sandbox is the boundary.\n"
                          "approval_policy = \"never\"\n"
                          "sandbox_mode = \"danger-full-access\"\n"
                          "cli_auth_credentials_store = \"file\"\n",
                          0600});
  return launch;
}

Result<AgentLaunch> OpenCodeLaunch(const AgentOptions& options) {
  if (options.max_turns) return Invalid("max_turns: opencode run has no turn limit");
  if (options.model && options.model->find('/') == std::string::npos) {
    return Invalid(
        fmt::format("model: '{}': opencode names a model as provider/model", *options.model));
  }
  AgentLaunch launch;
  launch.argv = {"opencode", "run", "--format", "json"};
  if (options.model) launch.argv.insert(launch.argv.end(), {"--model", *options.model});
  launch.argv.insert(launch.argv.end(), {"--", options.prompt});
  launch.env = CommonEnvironment(options.home);
  launch.env.push_back("OPENCODE_DISABLE_AUTOUPDATE=1");
  // "permission": "allow" sets every permission (edit, bash, webfetch,
  // external_directory, ...) to run without asking; sessions are never
  // shared to opencode.ai.
  launch.files.push_back({".config/opencode/opencode.json",
                          R"({"$schema": "https://opencode.ai/config.json", )"
                          R"("permission": "allow", "autoupdate": false, "share": "disabled"})"
                          "\n",
                          0600});
  return launch;
}

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// Variables that carry an agent vendor's key or token, whatever the profile:
// with one of them a tool would bypass the login the appliance manages.
bool IsVendorCredential(std::string_view name) {
  static constexpr std::array kExact = {
      "ANTHROPIC_API_KEY"sv, "ANTHROPIC_AUTH_TOKEN"sv, "CLAUDE_CODE_OAUTH_TOKEN"sv,
      "OPENAI_API_KEY"sv,    "CODEX_API_KEY"sv,
  };
  for (std::string_view exact : kExact) {
    if (name == exact) return true;
  }
  static constexpr std::array kVendors = {"ANTHROPIC_"sv, "CLAUDE_"sv, "OPENAI_"sv, "CODEX_"sv,
                                          "OPENCODE_"sv};
  for (std::string_view vendor : kVendors) {
    if (StartsWith(name, vendor) && EndsWith(name, "_API_KEY")) return true;
  }
  return false;
}

}  // namespace

std::string_view AgentKindName(AgentKind kind) {
  return GetProfile(kind).name;
}

Result<AgentKind> ParseAgentKind(std::string_view name) {
  for (const AgentProfile& profile : kProfiles) {
    if (profile.name == name) return profile.kind;
  }
  return Invalid(
      fmt::format("unknown agent profile '{}' (known: claude, codex, opencode, command)", name));
}

const AgentProfile& GetProfile(AgentKind kind) {
  for (const AgentProfile& profile : kProfiles) {
    if (profile.kind == kind) return profile;
  }
  return kProfiles[3];
}

Result<AgentLaunch> MakeLaunch(AgentKind kind, const AgentOptions& options) {
  if (options.home.empty() || options.home[0] != '/') {
    return Invalid(fmt::format("home: '{}' is not an absolute path", options.home));
  }
  if (kind == AgentKind::kCommand) {
    if (options.command.empty()) return Invalid("command: the command profile needs an argv");
    if (options.model) return Invalid("model: the command profile has no model");
    if (options.max_turns) return Invalid("max_turns: the command profile has no turn limit");
    return AgentLaunch{options.command, CommonEnvironment(options.home), {}};
  }
  if (!options.command.empty()) {
    return Invalid(fmt::format("command: the {} profile runs its own tool", AgentKindName(kind)));
  }
  TRY(CheckPrompt(options));
  if (options.model && options.model->empty()) return Invalid("model: empty");
  switch (kind) {
    case AgentKind::kClaude: return ClaudeLaunch(options);
    case AgentKind::kCodex: return CodexLaunch(options);
    case AgentKind::kOpenCode: return OpenCodeLaunch(options);
    case AgentKind::kCommand: break;
  }
  return Error::Make(ErrorCode::kInternal, "unhandled agent kind");
}

Result<AgentLaunch> MakeLoginLaunch(AgentKind kind, const std::string& home) {
  if (home.empty() || home[0] != '/') {
    return Invalid(fmt::format("home: '{}' is not an absolute path", home));
  }
  const AgentProfile& profile = GetProfile(kind);
  if (profile.login_argv.empty()) {
    return Invalid(
        fmt::format("profile: '{}' has no login (the agent profiles do: claude, codex, "
                    "opencode)",
                    profile.name));
  }
  AgentLaunch launch;
  for (std::string_view arg : profile.login_argv) launch.argv.emplace_back(arg);
  launch.env = CommonEnvironment(home);
  launch.env.push_back("TERM=xterm-256color");
  if (kind == AgentKind::kCodex) {
    launch.env.push_back("CODEX_HOME=" + home + "/.codex");
    launch.files.push_back({".codex/config.toml", "cli_auth_credentials_store = \"file\"\n", 0600});
  }
  if (kind == AgentKind::kClaude) {
    launch.env.push_back("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1");
  }
  if (kind == AgentKind::kOpenCode) launch.env.push_back("OPENCODE_DISABLE_AUTOUPDATE=1");
  return launch;
}

Result<void> WriteHomeFiles(const std::string& home_dir, std::span<const HomeFile> files) {
  for (const HomeFile& file : files) {
    std::string_view rest = file.path;
    if (rest.empty() || rest[0] == '/') {
      return Invalid(fmt::format("home file '{}': not a relative path", file.path));
    }
    // Each directory on the way, then the file.
    std::string path = home_dir;
    while (true) {
      size_t slash = rest.find('/');
      std::string_view part = rest.substr(0, slash);
      if (part.empty() || part == "." || part == "..") {
        return Invalid(fmt::format("home file '{}': '{}' is not a file name", file.path, part));
      }
      path += '/';
      path += part;
      if (slash == std::string_view::npos) break;
      if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
        return Error::FromErrno(fmt::format("mkdir {}", path), errno);
      }
      rest.remove_prefix(slash + 1);
    }
    TRY_CTX(WriteFileAtomically(path, file.content, file.mode, Durability::kFileSynced),
            fmt::format("writing home file {}", file.path));
  }
  return {};
}

Result<void> CheckJobEnvironment(AgentKind kind, const std::map<std::string, std::string>& env) {
  bool agent = kind != AgentKind::kCommand;
  for (const auto& [name, value] : env) {
    if (!IsVendorCredential(name) && !(agent && EndsWith(name, "_API_KEY"))) continue;
    std::string_view login = agent ? AgentKindName(kind) : "<profile>";
    return Error::Make(
        ErrorCode::kRefused,
        fmt::format("env.{}: API keys and tokens are not accepted in a job's environment. "
                    "Log the agent in once with `ralphctl creds login {}` (its own login flow, "
                    "in a sandbox); jobs whose policy grants that credential use it",
                    name, login));
  }
  return {};
}

}  // namespace ralph::agents
