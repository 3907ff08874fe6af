// The coding agents on the appliance, in one boot of the factory image
// that carries an agent-image bundle on VAR (build_agents_image.sh):
// ralphd installs the bundle at its first start while it serves, so the
// health gate commits meanwhile; an agent job of each CLI (`claude`,
// `codex`, `opencode --version` under the command profile, submitted with
// ralphctl on the appliance) waits queued for the image if it is still
// being installed, then runs in a sandbox on it and prints the version the
// lock file names. The install is reported by `ralphctl agent-image
// status` and in the audit log.
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

using nlohmann::json;

// The factory install reads the 1.4 GiB of bundle and image three times
// under TCG; the first job waits for it.
constexpr std::chrono::seconds kInstallTimeout{900};

// The version agents.lock pins for an npm package ("" when it has none).
std::string LockedVersion(const std::string& package) {
  const char* source = std::getenv("RALPH_SOURCE_DIR");
  std::ifstream lock(std::string(source ? source : ".") + "/tools/agent-image/agents.lock");
  std::string line;
  while (std::getline(lock, line)) {
    std::istringstream words(line);
    std::string kind, arch, variant, name, version;
    words >> kind >> arch >> variant >> name >> version;
    if (kind == "npm" && arch == "amd64" && name == package) return version;
  }
  return "";
}

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
    std::string version = LockedVersion(package);
    ASSERT_FALSE(version.empty()) << package << " is not in agents.lock";
    auto run =
        machine.Agent({"ralphctl", "job", "run", "--agent", "command", "--", command, "--version"},
                      kInstallTimeout);
    ASSERT_TRUE(run) << command << ": " << run.error().ToString();
    EXPECT_EQ(run->exit, 0) << command << ": " << run->output;
    // The version as a word of its own: 2.1.3 must not pass for 2.1.33.
    std::regex word("(^|[^0-9.])" + std::regex_replace(version, std::regex(R"(\.)"), R"(\.)") +
                    "($|[^0-9.])");
    EXPECT_TRUE(std::regex_search(run->output, word))
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
