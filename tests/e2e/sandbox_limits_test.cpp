// cgroup v2 limits proven inside the guest (the appliance kernel is cgroup
// v2 only): the test agent runs `ralph-sandbox run` in the booted appliance
// with a memory bomb under a small memory.max and a fork bomb under a small
// pids.max (ralph-test-bomb, bound into the slot's read-only sandbox base;
// each job's writable upper on VAR), and the host checks the verdicts and
// that the guest is healthy afterwards.
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "harness/e2e_test.h"

namespace ralph::e2e {
namespace {

constexpr std::chrono::seconds kSandboxTimeout{300};

// `ralph-sandbox run` with the slot's base, the bomb bound in at /bomb, no
// network (not what this test is about) and --stats.
std::vector<std::string> SandboxRun(std::vector<std::string> limits,
                                    std::vector<std::string> command) {
  std::vector<std::string> argv = {"ralph-sandbox", "run",
                                   "--rootfs",      "/usr/lib/ralph/sandbox-base",
                                   "--ro-bind",     "/usr/libexec/ralph-test-bomb:/bomb",
                                   "--no-network",  "--timeout",
                                   "240",           "--stats"};
  argv.insert(argv.end(), limits.begin(), limits.end());
  argv.push_back("--");
  argv.insert(argv.end(), command.begin(), command.end());
  return argv;
}

// The number after "<key>=" in the --stats line; -1 when absent.
long long Stat(const std::string& output, const std::string& key) {
  std::smatch match;
  if (!std::regex_search(output, match, std::regex(" " + key + "=(-?[0-9]+)"))) return -1;
  return std::stoll(match[1]);
}

TEST_F(E2eTest, SandboxMemoryAndPidsLimitsHoldInTheGuest) {
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();

  // Memory bomb under memory.max = 64 MiB: killed by the kernel's OOM
  // killer inside its cgroup (SIGKILL, 128 + 9), and the job cgroup's
  // memory.events counts the kill (what the launcher reports as oom_kills).
  auto memory =
      machine.Agent(SandboxRun({"--memory", "64M"}, {"/bomb", "memory"}), kSandboxTimeout);
  ASSERT_TRUE(memory) << memory.error().ToString();
  std::printf("memory bomb (exit %d):\n%s\n", memory->exit, memory->output.c_str());
  EXPECT_EQ(memory->exit, 128 + 9) << memory->output;
  EXPECT_NE(memory->output.find("ralph-sandbox: signaled exit=-1 signal=9"), std::string::npos)
      << memory->output;
  EXPECT_NE(memory->output.find(" cgroup=v2"), std::string::npos) << memory->output;
  EXPECT_GE(Stat(memory->output, "oom_kills"), 1) << memory->output;
  long long peak = Stat(memory->output, "cgroup_mem_peak");
  EXPECT_GT(peak, 0) << memory->output;
  EXPECT_LE(peak, 64ll << 20) << memory->output;
  EXPECT_EQ(memory->output.find("no memory limit"), std::string::npos) << memory->output;

  // Fork bomb under pids.max = 16: fork fails (EAGAIN) before 64 children,
  // the bomb reports it and exits 0; its sleeping children die with the
  // sandbox's pid namespace.
  auto fork = machine.Agent(SandboxRun({"--pids", "16"}, {"/bomb", "fork", "64"}), kSandboxTimeout);
  ASSERT_TRUE(fork) << fork.error().ToString();
  std::printf("fork bomb (exit %d):\n%s\n", fork->exit, fork->output.c_str());
  EXPECT_EQ(fork->exit, 0) << fork->output;
  std::smatch forked;
  ASSERT_TRUE(
      std::regex_search(fork->output, forked, std::regex("forked ([0-9]+) children, then: (.*)")))
      << fork->output;
  EXPECT_LT(std::stoi(forked[1]), 16) << fork->output;
  EXPECT_EQ(forked[2], "Resource temporarily unavailable") << fork->output;
  EXPECT_NE(fork->output.find(" cgroup=v2"), std::string::npos) << fork->output;

  // The guest is healthy afterwards: the agent and ralphctl answer, a new
  // sandbox runs, and no sandbox mount, process or job state is left.
  auto status = Ralphctl(machine, {"boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  auto hello = machine.Agent(SandboxRun({}, {"/bomb", "hello"}), kSandboxTimeout);
  ASSERT_TRUE(hello) << hello.error().ToString();
  EXPECT_EQ(hello->exit, 0) << hello->output;
  EXPECT_NE(hello->output.find("hello from the sandbox, pid 1"), std::string::npos)
      << hello->output;
  auto mounts = machine.Agent({"cat", "/proc/mounts"}, kAgentTimeout);
  ASSERT_TRUE(mounts && mounts->exit == 0);
  EXPECT_EQ(mounts->output.find("overlay"), std::string::npos) << mounts->output;
  EXPECT_EQ(mounts->output.find("/var/lib/ralph/sandbox/jobs"), std::string::npos)
      << mounts->output;
  auto meminfo = machine.Agent({"cat", "/proc/meminfo"}, kAgentTimeout);
  ASSERT_TRUE(meminfo && meminfo->exit == 0);
  std::smatch available;
  ASSERT_TRUE(
      std::regex_search(meminfo->output, available, std::regex("MemAvailable: +([0-9]+) kB")))
      << meminfo->output;
  EXPECT_GT(std::stoll(available[1]), 128ll << 10) << meminfo->output;  // of 512 MiB
  // The kernel's own verdicts, as far as the console shows them: the OOM
  // kill was a memory cgroup's, never the whole guest's.
  EXPECT_EQ(machine.Count("Kernel panic"), 0u);
  EXPECT_EQ(machine.Count("Out of memory: Killed process"), 0u) << "the whole guest ran out";
}

}  // namespace
}  // namespace ralph::e2e
