// The agent profiles: argv, environment and settings files of each tool's
// unattended run, the options each refuses, and the refusal of API keys.
#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "services/agents/profile.h"

namespace ralph::agents {
namespace {

using Strings = std::vector<std::string>;

bool Has(const Strings& list, const std::string& item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

AgentOptions Prompt(std::string prompt) {
  AgentOptions options;
  options.prompt = std::move(prompt);
  options.home = "/home/agent";
  return options;
}

TEST(ProfileTest, NamesRoundTripAndUnknownOnesAreRefused) {
  for (AgentKind kind :
       {AgentKind::kClaude, AgentKind::kCodex, AgentKind::kOpenCode, AgentKind::kCommand}) {
    Result<AgentKind> parsed = ParseAgentKind(AgentKindName(kind));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, kind);
    EXPECT_EQ(GetProfile(kind).kind, kind);
  }
  Result<AgentKind> bad = ParseAgentKind("gemini");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().message(),
            "unknown agent profile 'gemini' (known: claude, codex, opencode, command)");
}

TEST(ProfileTest, ClaudeRunsPrintModeWithStreamJsonAndBypassPermissions) {
  AgentOptions options = Prompt("fix the failing test");
  options.model = "sonnet";
  options.max_turns = 40;
  Result<AgentLaunch> launch = MakeLaunch(AgentKind::kClaude, options);
  ASSERT_TRUE(launch.has_value()) << launch.error().ToString();
  EXPECT_EQ(launch->argv, (Strings{"claude", "-p", "--output-format", "stream-json", "--verbose",
                                   "--dangerously-skip-permissions", "--model", "sonnet",
                                   "--max-turns", "40", "--", "fix the failing test"}));
  EXPECT_FALSE(Has(launch->argv, "--bare"));  // it would skip the OAuth login
  EXPECT_TRUE(Has(launch->env, "HOME=/home/agent"));
  EXPECT_TRUE(Has(launch->env, "XDG_CONFIG_HOME=/home/agent/.config"));
  EXPECT_TRUE(Has(launch->env, "XDG_DATA_HOME=/home/agent/.local/share"));
  EXPECT_TRUE(Has(launch->env, "XDG_STATE_HOME=/home/agent/.local/state"));
  EXPECT_TRUE(Has(launch->env, "XDG_CACHE_HOME=/home/agent/.cache"));
  EXPECT_TRUE(Has(launch->env, "IS_SANDBOX=1"));
  EXPECT_TRUE(Has(launch->env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"));
  ASSERT_EQ(launch->files.size(), 1u);
  EXPECT_EQ(launch->files[0].path, ".claude/settings.json");
  EXPECT_EQ(launch->files[0].mode, 0600u);
  nlohmann::json settings = nlohmann::json::parse(launch->files[0].content, nullptr, false);
  EXPECT_EQ(settings["permissions"]["defaultMode"], "bypassPermissions");
  EXPECT_EQ(GetProfile(AgentKind::kClaude).credential_file, ".claude/.credentials.json");
}

TEST(ProfileTest, CodexRunsExecJsonWithFullAccessAndNoApprovals) {
  AgentOptions options = Prompt("-leading dash is a prompt, not an option");
  Result<AgentLaunch> launch = MakeLaunch(AgentKind::kCodex, options);
  ASSERT_TRUE(launch.has_value()) << launch.error().ToString();
  EXPECT_EQ(launch->argv,
            (Strings{"codex", "exec", "--json", "--sandbox", "danger-full-access",
                     "--skip-git-repo-check", "--", "-leading dash is a prompt, not an option"}));
  EXPECT_TRUE(Has(launch->env, "CODEX_HOME=/home/agent/.codex"));
  ASSERT_EQ(launch->files.size(), 1u);
  EXPECT_EQ(launch->files[0].path, ".codex/config.toml");
  const std::string& config = launch->files[0].content;
  EXPECT_NE(config.find("approval_policy = \"never\"\n"), std::string::npos);
  EXPECT_NE(config.find("sandbox_mode = \"danger-full-access\"\n"), std::string::npos);
  EXPECT_NE(config.find("cli_auth_credentials_store = \"file\"\n"), std::string::npos);
  EXPECT_EQ(GetProfile(AgentKind::kCodex).credential_file, ".codex/auth.json");

  options.max_turns = 3;
  Result<AgentLaunch> refused = MakeLaunch(AgentKind::kCodex, options);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().message(), "max_turns: codex exec has no turn limit");
}

TEST(ProfileTest, OpenCodeRunsRunFormatJsonWithEveryPermissionAllowed) {
  AgentOptions options = Prompt("add a test");
  options.model = "anthropic/claude-sonnet-4-5";
  Result<AgentLaunch> launch = MakeLaunch(AgentKind::kOpenCode, options);
  ASSERT_TRUE(launch.has_value()) << launch.error().ToString();
  EXPECT_EQ(launch->argv, (Strings{"opencode", "run", "--format", "json", "--model",
                                   "anthropic/claude-sonnet-4-5", "--", "add a test"}));
  EXPECT_TRUE(Has(launch->env, "OPENCODE_DISABLE_AUTOUPDATE=1"));
  ASSERT_EQ(launch->files.size(), 1u);
  EXPECT_EQ(launch->files[0].path, ".config/opencode/opencode.json");
  nlohmann::json config = nlohmann::json::parse(launch->files[0].content, nullptr, false);
  EXPECT_EQ(config["permission"], "allow");
  EXPECT_EQ(config["share"], "disabled");
  EXPECT_EQ(GetProfile(AgentKind::kOpenCode).credential_file, ".local/share/opencode/auth.json");

  options.model = "sonnet";
  Result<AgentLaunch> refused = MakeLaunch(AgentKind::kOpenCode, options);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().message(), "model: 'sonnet': opencode names a model as provider/model");
}

TEST(ProfileTest, CommandProfileRunsItsArgvWithTheHomeEnvironment) {
  AgentOptions options;
  options.command = {"make", "-j2"};
  Result<AgentLaunch> launch = MakeLaunch(AgentKind::kCommand, options);
  ASSERT_TRUE(launch.has_value()) << launch.error().ToString();
  EXPECT_EQ(launch->argv, (Strings{"make", "-j2"}));
  EXPECT_TRUE(Has(launch->env, "HOME=/home/agent"));
  EXPECT_TRUE(launch->files.empty());
  EXPECT_TRUE(GetProfile(AgentKind::kCommand).api_hosts.empty());

  Result<AgentLaunch> empty = MakeLaunch(AgentKind::kCommand, AgentOptions{});
  ASSERT_FALSE(empty.has_value());
  EXPECT_EQ(empty.error().message(), "command: the command profile needs an argv");
}

TEST(ProfileTest, BadOptionsAreRefusedNamingTheOption) {
  struct Case {
    AgentKind kind;
    AgentOptions options;
    std::string message;
  };
  AgentOptions relative = Prompt("x");
  relative.home = "home";
  AgentOptions too_long = Prompt(std::string(kMaxPromptBytes + 1, 'p'));
  AgentOptions with_command = Prompt("x");
  with_command.command = {"ls"};
  AgentOptions empty_model = Prompt("x");
  empty_model.model = "";
  std::vector<Case> cases = {
      {AgentKind::kClaude, Prompt(""), "prompt: an agent profile needs a prompt"},
      {AgentKind::kClaude, relative, "home: 'home' is not an absolute path"},
      {AgentKind::kCodex, too_long,
       "prompt: 102401 bytes is longer than the limit of 102400 bytes"},
      {AgentKind::kClaude, Prompt(std::string("a\0b", 3)), "prompt: contains a NUL byte"},
      {AgentKind::kOpenCode, with_command, "command: the opencode profile runs its own tool"},
      {AgentKind::kClaude, empty_model, "model: empty"},
  };
  for (const Case& c : cases) {
    Result<AgentLaunch> launch = MakeLaunch(c.kind, c.options);
    ASSERT_FALSE(launch.has_value()) << c.message;
    EXPECT_EQ(launch.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(launch.error().message(), c.message);
  }
}

TEST(ProfileTest, EachAgentProfileNamesItsHosts) {
  auto has = [](std::span<const std::string_view> hosts, std::string_view host) {
    return std::find(hosts.begin(), hosts.end(), host) != hosts.end();
  };
  EXPECT_TRUE(has(GetProfile(AgentKind::kClaude).api_hosts, "api.anthropic.com"));
  EXPECT_TRUE(has(GetProfile(AgentKind::kClaude).login_hosts, "claude.ai"));
  EXPECT_TRUE(has(GetProfile(AgentKind::kCodex).api_hosts, "chatgpt.com"));
  EXPECT_TRUE(has(GetProfile(AgentKind::kCodex).login_hosts, "auth.openai.com"));
  EXPECT_TRUE(has(GetProfile(AgentKind::kOpenCode).api_hosts, "opencode.ai"));
  EXPECT_EQ(GetProfile(AgentKind::kCodex).login_argv[2], "--device-auth");
}

TEST(ProfileTest, ApiKeysInTheJobEnvironmentAreRefusedWithTheLoginFlow) {
  Result<void> refused = CheckJobEnvironment(
      AgentKind::kClaude, {{"ANTHROPIC_API_KEY", "sk-ant-x"}, {"TERM", "xterm"}});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kRefused);
  EXPECT_EQ(refused.error().message(),
            "env.ANTHROPIC_API_KEY: API keys and tokens are not accepted in a job's environment. "
            "Log the agent in once with `ralphctl creds login claude` (its own login flow, in a "
            "sandbox); jobs whose policy grants that credential use it");
  struct Case {
    AgentKind kind;
    std::string name;
    bool refused;
  };
  std::vector<Case> cases = {
      {AgentKind::kCodex, "OPENAI_API_KEY", true},
      {AgentKind::kCodex, "CODEX_API_KEY", true},
      {AgentKind::kClaude, "CLAUDE_CODE_OAUTH_TOKEN", true},
      {AgentKind::kClaude, "ANTHROPIC_AUTH_TOKEN", true},
      {AgentKind::kOpenCode, "OPENCODE_ZEN_API_KEY", true},
      {AgentKind::kOpenCode, "OPENROUTER_API_KEY", true},  // any *_API_KEY for an agent
      {AgentKind::kCommand, "ANTHROPIC_API_KEY", true},    // vendor keys for every profile
      {AgentKind::kCommand, "OPENCODE_X_API_KEY", true},
      {AgentKind::kCommand, "STRIPE_API_KEY", false},  // the command's own business
      {AgentKind::kClaude, "API_KEYRING", false},
      {AgentKind::kClaude, "MAX_TOKENS", false},
  };
  for (const Case& c : cases) {
    Result<void> result = CheckJobEnvironment(c.kind, {{c.name, "v"}});
    EXPECT_EQ(!result.has_value(), c.refused) << AgentKindName(c.kind) << " " << c.name;
  }
  EXPECT_TRUE(CheckJobEnvironment(AgentKind::kClaude, {}).has_value());
}

}  // namespace
}  // namespace ralph::agents

namespace ralph::agents {
namespace {

TEST(ProfileTest, EachAgentProfileLogsInWithItsOwnCommandInItsHome) {
  auto claude = MakeLoginLaunch(AgentKind::kClaude, "/home/agent");
  ASSERT_TRUE(claude) << claude.error().ToString();
  EXPECT_EQ(claude->argv, (std::vector<std::string>{"claude", "auth", "login"}));
  EXPECT_NE(std::find(claude->env.begin(), claude->env.end(), "HOME=/home/agent"),
            claude->env.end());
  auto codex = MakeLoginLaunch(AgentKind::kCodex, "/home/agent");
  ASSERT_TRUE(codex);
  EXPECT_EQ(codex->argv, (std::vector<std::string>{"codex", "login", "--device-auth"}));
  EXPECT_NE(std::find(codex->env.begin(), codex->env.end(), "CODEX_HOME=/home/agent/.codex"),
            codex->env.end());
  ASSERT_EQ(codex->files.size(), 1u);
  EXPECT_NE(codex->files[0].content.find("cli_auth_credentials_store = \"file\""),
            std::string::npos);
  auto opencode = MakeLoginLaunch(AgentKind::kOpenCode, "/home/agent");
  ASSERT_TRUE(opencode);
  EXPECT_EQ(opencode->argv, (std::vector<std::string>{"opencode", "auth", "login"}));

  auto command = MakeLoginLaunch(AgentKind::kCommand, "/home/agent");
  ASSERT_FALSE(command);
  EXPECT_EQ(command.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(command.error().message().find("'command' has no login"), std::string::npos);
  EXPECT_FALSE(MakeLoginLaunch(AgentKind::kClaude, "home"));
}

}  // namespace
}  // namespace ralph::agents
