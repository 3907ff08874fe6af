// The coding agents on the appliance, in one boot of the factory image
// that carries an agent-image bundle on VAR (build_agents_image.sh):
// ralphd installs the bundle at its first start while it serves, so the
// health gate commits meanwhile; an agent job of each CLI (`claude`,
// `codex`, `opencode --version` under the command profile, submitted with
// ralphctl on the appliance) waits queued for the image if it is still
// being installed, then runs in a sandbox on it and prints the version the
// lock file names. The install is reported by `ralphctl agent-image
// status` and in the audit log.
#include <cstdlib>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "harness/e2e_test.h"
#include "tests/support/agents_lock.h"

namespace ralph::e2e {
namespace {

using nlohmann::json;

// The factory install reads the 1.4 GiB of bundle and image three times
// under TCG; the first job waits for it.
constexpr std::chrono::seconds kInstallTimeout{900};

TEST_F(E2eTest, AgentClisRunOnTheFactoryAgentImage) {
  memory_mib_ = 1024;
  // Claude Code's and OpenCode's native (Bun) binaries die of SIGILL on
  // QEMU's default qemu64 CPU, which lacks instructions of every CPU the
  // appliance runs on; the codex binary runs there.
  cpu_ = "max";
  ASSERT_NO_FATAL_FAILURE(PrepareImage("agents"));
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();

  const std::map<std::string, std::string> clis = {
      {"claude", "@anthropic-ai/claude-code"},
      {"codex", "@openai/codex"},
      {"opencode", "opencode-ai"},
  };
  for (const auto& [command, package] : clis) {
    const char* source = std::getenv("RALPH_SOURCE_DIR");
    std::string version = ralph::testing::LockedNpmVersion(
        std::string(source ? source : ".") + "/tools/agent-image/agents.lock", package);
    ASSERT_FALSE(version.empty()) << package << " is not in agents.lock";
    auto run =
        machine.Agent({"ralphctl", "job", "run", "--agent", "command", "--", command, "--version"},
                      kInstallTimeout);
    ASSERT_TRUE(run) << command << ": " << run.error().ToString();
    EXPECT_EQ(run->exit, 0) << command << ": " << run->output;
    EXPECT_TRUE(ralph::testing::NamesVersion(run->output, version))
        << command << " --version printed '" << run->output << "', the lock says " << version;
  }

  auto status = Ralphctl(machine, {"agent-image", "status", "--json"});
  ASSERT_EQ(status.exit, 0) << status.output;
  json parsed = json::parse(status.output, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << status.output;
  EXPECT_EQ(parsed["usable"], true) << status.output;
  EXPECT_EQ(parsed["current"]["version"], "1.0.0") << status.output;
  EXPECT_EQ(parsed["install"]["state"], "installed") << status.output;
  EXPECT_EQ(parsed["install"]["caller"], "factory") << status.output;
  auto audited = Ralphctl(machine, {"audit", "list", "--type", "agent-image.install", "--json"});
  ASSERT_EQ(audited.exit, 0) << audited.output;
  json rows = json::parse(audited.output, nullptr, false);
  ASSERT_TRUE(rows.is_array()) << audited.output;
  EXPECT_EQ(rows.size(), 1u) << audited.output;
}

}  // namespace
}  // namespace ralph::e2e
