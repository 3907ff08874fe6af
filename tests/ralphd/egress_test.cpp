// Egress per agent profile through the real ralphd: each agent job's
// network gets its profile's API hosts by domain (the sandbox's DNS-bound
// allowlist) and nothing else unless its policy profile adds it.
//
// The test binary plays the appliance host in a private network namespace
// (tests/sandbox_net's topology: a "world" namespace with test hosts and a
// DNS server that answers the agents' API host names with test addresses,
// one per vendor), and in a private mount namespace whose /etc/resolv.conf
// names the world's DNS server (ralphd's DNS forwarder asks the first
// nameserver there). ralphd runs there as a child; its agent profiles' tool
// is tests/ralphd/egress_probe.py, which resolves names through the job's
// resolver and connects to what it got. No internet is needed or touched.
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "private_netns_environment.h"
#include "test_topology.h"
#include "tests/support/run_program.h"
#include "tests/support/wait_for.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;
using ralph::testing::ProgramStreams;
using ralph::testing::RunProgramStreams;
using ralph::testing::WaitFor;
using sandbox::testing::World;

World* g_world = nullptr;

// After the private netns (the base environment): the world's resolver in
// /etc/resolv.conf of a private mount namespace, and the world itself.
class EgressEnvironment : public sandbox::testing::PrivateNetnsEnvironment {
 public:
  void SetUp() override {
    PrivateNetnsEnvironment::SetUp();
    ASSERT_EQ(::unshare(CLONE_NEWNS), 0) << "unshare(CLONE_NEWNS): " << std::strerror(errno);
    ASSERT_EQ(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0);
    resolv_ = fmt::format("/tmp/ralphd-egress-resolv-{}", ::getpid());
    std::ofstream(resolv_) << "nameserver 198.51.100.53\n";
    ASSERT_EQ(::mount(resolv_.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr), 0)
        << "binding " << resolv_ << " over /etc/resolv.conf: " << std::strerror(errno);
    g_world = World::Start();
  }
  void TearDown() override {
    delete g_world;
    g_world = nullptr;
    ::umount2("/etc/resolv.conf", MNT_DETACH);
    ::unlink(resolv_.c_str());
  }

 private:
  std::string resolv_;
};

const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new EgressEnvironment);

void Write(const std::string& path, const std::string& content) {
  std::ofstream(path) << content;
}

class EgressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(g_world, nullptr);
    g_world->ClearLog();
    const char* build = std::getenv("RALPH_BINARY_DIR");
    const char* source = std::getenv("RALPH_SOURCE_DIR");
    ASSERT_NE(build, nullptr);
    ASSERT_NE(source, nullptr);
    work_ = fmt::format("/tmp/ralphd-egress-test-{}-{}", ::getpid(), counter_++);
    state_ = work_ + "/var";
    socket_ = work_ + "/ralphd.sock";
    ralphctl_ = std::string(build) + "/bin/ralphctl";
    // The jobs' base: merged-/usr symlinks; the profiles bind the host's
    // /usr (python3) and the probe's directory.
    std::string base = work_ + "/base";
    ASSERT_EQ(RunProgramStreams({"sh", "-c",
                                 fmt::format("mkdir -p {0}/usr {0}/etc {1} && for l in bin lib "
                                             "lib64 sbin; do ln -s usr/$l {0}/$l; done && "
                                             "install -m 0755 {2}/tests/ralphd/egress_probe.py "
                                             "{1}/agent-probe",
                                             base, work_ + "/probe", source)})
                  .exit,
              0);
    std::vector<std::string> argv = {std::string(build) + "/bin/ralphd",
                                     "--state-dir",
                                     state_,
                                     "--socket",
                                     socket_,
                                     "--job-root",
                                     base,
                                     "--max-running",
                                     "4"};
    for (const char* profile : {"claude", "codex", "opencode"}) {
      argv.push_back("--agent-program");
      argv.push_back(fmt::format("{}={}", profile, kProbe));
    }
    std::string why;
    daemon_ = ralph::testing::StartServing(argv, socket_, &why);
    ASSERT_GT(daemon_, 0) << why;

    // Every profile: the same limits and mounts; they differ in egress.
    auto profile = [&](std::string_view name, std::string_view egress) {
      return fmt::format(R"(  <profile name="{}">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    {}
    <mount source="/usr" destination="/usr"/>
    <mount source="{}/probe" destination="/opt/egress-probe"/>
  </profile>
)",
                         name, egress, work_);
    };
    Write(
        work_ + "/policy.xml",
        "<policy format=\"1\">\n" + profile("offline", "") + profile("agents", "<egress/>") +
            profile("plus", R"(<egress><allow domain="api.allowed.test"/></egress>)") +
            profile("no-agent-hosts",
                    R"(<egress agent-hosts="none"><allow domain="api.allowed.test"/></egress>)") +
            profile("narrow", R"(<egress agent-hosts="api.openai.com,api.anthropic.com"/>)") +
            profile("git", fmt::format(R"(<egress domain-ports="{}"><allow domain="{}"/></egress>)",
                                       kGitPort, sandbox::testing::kGitHostName)) +
            "</policy>\n");
    ProgramStreams set = Ctl({"policy", "set", work_ + "/policy.xml"});
    ASSERT_EQ(set.exit, 0) << set.err;
  }

  void TearDown() override {
    if (daemon_ > 0) {
      ::kill(daemon_, SIGTERM);
      ::waitpid(daemon_, nullptr, 0);
    }
    RunProgramStreams({"sh", "-c",
                       fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r "
                                   "umount -l; rm -rf {}",
                                   work_, work_)});
  }

  ProgramStreams Ctl(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"--socket", socket_});
    args.insert(args.begin(), ralphctl_);
    return RunProgramStreams(args);
  }

  // An agent job of `agent` under policy profile `profile` whose prompt
  // lists what the probe tries; its output (one line per destination).
  std::string RunAgent(const std::string& profile, const std::string& agent,
                       const std::string& destinations) {
    ProgramStreams run =
        Ctl({"job", "run", "--profile", profile, "--agent", agent, "--prompt", destinations});
    EXPECT_EQ(run.exit, 0) << run.err;
    return run.out;
  }

  // The audit rows of `job` of type `type`.
  json AuditRows(int job, const std::string& type) {
    ProgramStreams list = Ctl(
        {"audit", "list", "--json", "--job", std::to_string(job), "--type", type, "--limit", "0"});
    EXPECT_EQ(list.exit, 0) << list.err;
    json rows = json::parse(list.out, nullptr, false);
    return rows.is_array() ? rows : json::array();
  }

  static bool HasRow(const json& rows, const std::string& destination, const std::string& reason) {
    for (const json& row : rows) {
      if (row["details"].value("destination", "") == destination &&
          row["details"].value("reason", "") == reason) {
        return true;
      }
    }
    return false;
  }

  static constexpr const char* kProbe = "/opt/egress-probe/agent-probe";
  static constexpr uint16_t kGitPort = 8418;
  std::string work_, state_, socket_, ralphctl_;
  pid_t daemon_ = -1;
  static inline int counter_ = 0;
};

TEST_F(EgressTest, ClaudeReachesItsApiHostsAndNothingElse) {
  std::string out = RunAgent("agents", "claude",
                             "api.anthropic.com platform.claude.com api.openai.com chatgpt.com "
                             "opencode.ai api.allowed.test @203.0.113.32");
  EXPECT_EQ(out,
            "api.anthropic.com 203.0.113.31 hello\n"
            "platform.claude.com 203.0.113.31 hello\n"
            "api.openai.com rcode=REFUSED\n"
            "chatgpt.com rcode=REFUSED\n"
            "opencode.ai rcode=REFUSED\n"
            "api.allowed.test rcode=REFUSED\n"
            "@203.0.113.32 connect-failed\n");
  // A refused name was never asked upstream; the world saw only the
  // allowed ones and the connection to Anthropic's host.
  EXPECT_TRUE(g_world->SawAny("dns api.anthropic.com."));
  EXPECT_TRUE(g_world->SawAny("tcp 203.0.113.31 443"));
  for (const char* name :
       {"api.openai.com.", "chatgpt.com.", "opencode.ai.", "api.allowed.test."}) {
    EXPECT_FALSE(g_world->SawAny(fmt::format("dns {}", name))) << name;
  }
  EXPECT_FALSE(g_world->SawAny("tcp 203.0.113.32"));
  // Audited as any job's network: allowed and refused, with the reason
  // (the events reach the log from the network service's threads).
  EXPECT_TRUE(WaitFor([&] {
    return HasRow(AuditRows(1, "net.allowed"), "api.anthropic.com", "dns: allowed");
  })) << AuditRows(1, "net.allowed").dump();
  for (const auto& [destination, reason] : {std::pair{"api.openai.com", "dns: name not allowed"},
                                            std::pair{"api.allowed.test", "dns: name not allowed"},
                                            std::pair{"203.0.113.32", "not-allowlisted"}}) {
    EXPECT_TRUE(WaitFor([&] { return HasRow(AuditRows(1, "net.denied"), destination, reason); }))
        << destination << ": " << AuditRows(1, "net.denied").dump();
  }
}

TEST_F(EgressTest, CodexReachesOpenAiAndNotAnthropic) {
  std::string out = RunAgent("agents", "codex",
                             "api.openai.com chatgpt.com auth.openai.com api.anthropic.com "
                             "opencode.ai api.allowed.test @203.0.113.31");
  EXPECT_EQ(out,
            "api.openai.com 203.0.113.32 hello\n"
            "chatgpt.com 203.0.113.33 hello\n"
            "auth.openai.com 203.0.113.32 hello\n"
            "api.anthropic.com rcode=REFUSED\n"
            "opencode.ai rcode=REFUSED\n"
            "api.allowed.test rcode=REFUSED\n"
            "@203.0.113.31 connect-failed\n");
  EXPECT_FALSE(g_world->SawAny("dns api.anthropic.com."));
  EXPECT_FALSE(g_world->SawAny("tcp 203.0.113.31"));
}

TEST_F(EgressTest, OpenCodeReachesItsGatewayAndTheProvidersItLogsInTo) {
  std::string out = RunAgent("agents", "opencode",
                             "opencode.ai models.dev api.anthropic.com api.openai.com "
                             "platform.claude.com api.allowed.test");
  EXPECT_EQ(out,
            "opencode.ai 203.0.113.34 hello\n"
            "models.dev 203.0.113.34 hello\n"
            "api.anthropic.com 203.0.113.31 hello\n"
            "api.openai.com 203.0.113.32 hello\n"
            "platform.claude.com rcode=REFUSED\n"
            "api.allowed.test rcode=REFUSED\n");
}

TEST_F(EgressTest, TheCommandProfileGetsNothingExtra) {
  // Under a profile that allows one domain: that one, and no agent's host.
  ProgramStreams run = Ctl({"job", "run", "--profile", "plus", "--agent", "command", "--", kProbe,
                            "api.allowed.test api.anthropic.com api.openai.com opencode.ai"});
  EXPECT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out,
            "api.allowed.test 203.0.113.10 hello\n"
            "api.anthropic.com rcode=REFUSED\n"
            "api.openai.com rcode=REFUSED\n"
            "opencode.ai rcode=REFUSED\n");
  // Nor does a job that is no agent job.
  run = Ctl({"job", "run", "--profile", "plus", "--", kProbe, "api.anthropic.com"});
  EXPECT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out, "api.anthropic.com rcode=REFUSED\n");
  // Under <egress/> alone it names no domain at all, so nothing answers its
  // queries (the forwarder serves jobs that name domains) and nothing is
  // routed.
  run = Ctl({"job", "run", "--profile", "agents", "--agent", "command", "--", kProbe,
             "api.anthropic.com @203.0.113.31"});
  EXPECT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out,
            "api.anthropic.com dns-failed\n"
            "@203.0.113.31 connect-failed\n");
  EXPECT_FALSE(g_world->SawAny("dns api.anthropic.com."));
  EXPECT_FALSE(g_world->SawAny("tcp 203.0.113.31"));
}

TEST_F(EgressTest, WhatThePolicyAddsIsReachedToo) {
  std::string out = RunAgent("plus", "claude", "api.allowed.test api.anthropic.com api.openai.com");
  EXPECT_EQ(out,
            "api.allowed.test 203.0.113.10 hello\n"
            "api.anthropic.com 203.0.113.31 hello\n"
            "api.openai.com rcode=REFUSED\n");
}

TEST_F(EgressTest, APolicyTurnsTheAgentHostsOffOrNarrowsThem) {
  // agent-hosts="none": only what <allow> lists.
  std::string out =
      RunAgent("no-agent-hosts", "claude", "api.anthropic.com api.allowed.test @203.0.113.31");
  EXPECT_EQ(out,
            "api.anthropic.com rcode=REFUSED\n"
            "api.allowed.test 203.0.113.10 hello\n"
            "@203.0.113.31 connect-failed\n");
  // A list: only the listed ones the job's own agent has (never another
  // agent's: api.anthropic.com is listed but is no codex host).
  out = RunAgent("narrow", "codex", "api.openai.com chatgpt.com api.anthropic.com");
  EXPECT_EQ(out,
            "api.openai.com 203.0.113.32 hello\n"
            "chatgpt.com rcode=REFUSED\n"
            "api.anthropic.com rcode=REFUSED\n");
}

TEST_F(EgressTest, WithoutEgressAnAgentJobHasNoNetworkAtAll) {
  // No <egress>: no veth, no resolver, nothing routed; the agent's own
  // hosts included.
  std::string out = RunAgent("offline", "claude", "api.anthropic.com @203.0.113.31");
  EXPECT_EQ(out,
            "api.anthropic.com no-resolver\n"
            "@203.0.113.31 connect-failed\n");
  EXPECT_FALSE(g_world->SawAny("dns "));
  EXPECT_FALSE(g_world->SawAny("tcp "));
}

// A workspace cloned from a git server of the world: through the job's own
// network, by the name its profile allows, and refused at submit under a
// profile that does not allow that host.
TEST_F(EgressTest, AWorkspaceIsClonedThroughTheJobsOwnEgress) {
  // A bare repository over git's dumb HTTP protocol (plain files), with a
  // second branch.
  std::string served = work_ + "/served";
  ASSERT_EQ(
      RunProgramStreams(
          {"sh", "-c",
           fmt::format("set -e; git init -q -b main {0}/src; cd {0}/src; "
                       "echo cloned-content-7f3 > README; git add README; "
                       "git -c user.name=t -c user.email=t@t commit -qm one; "
                       "git checkout -qb feature; echo feature-9c1 > FEATURE; "
                       "git add FEATURE; git -c user.name=t -c user.email=t@t commit -qm two; "
                       "git checkout -q main; mkdir -p {1}; "
                       "git clone -q --bare {0}/src {1}/app.git; "
                       "git -C {1}/app.git update-server-info",
                       work_, served)})
          .exit,
      0);
  const std::string address = sandbox::testing::kGitHostAddress;
  pid_t server = g_world->Spawn(
      fmt::format("exec python3 -m http.server --bind {} --directory {} {} 2>/dev/null", address,
                  served, kGitPort));
  ASSERT_GT(server, 0);
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{server};
  const std::string direct = fmt::format("http://{}:{}/app.git", address, kGitPort);
  ASSERT_TRUE(WaitFor([&] {
    return RunProgramStreams({"git", "ls-remote", direct}).exit == 0;
  })) << "the world's git server did not come up";
  g_world->ClearLog();

  const std::string url =
      fmt::format("http://{}:{}/app.git", sandbox::testing::kGitHostName, kGitPort);
  ProgramStreams run =
      Ctl({"job", "run", "--profile", "git", "--workspace-git", url, "--", "cat", "README"});
  EXPECT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out, "cloned-content-7f3\n");
  // Asked through the job's resolver, which forwarded it upstream.
  EXPECT_TRUE(g_world->SawAny(fmt::format("dns {}.", sandbox::testing::kGitHostName)));
  run = Ctl({"job", "run", "--profile", "git", "--workspace-git", url, "--ref", "feature", "--",
             "cat", "FEATURE"});
  EXPECT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out, "feature-9c1\n");
  json jobs = json::parse(Ctl({"job", "list", "--json"}).out, nullptr, false)["jobs"];
  ASSERT_TRUE(jobs.is_array() && !jobs.empty()) << jobs.dump();
  const int clone_job = jobs[0]["id"].get<int>();
  EXPECT_EQ(jobs[0]["request"]["workspace_git"]["ref"], "feature") << jobs[0].dump();
  EXPECT_TRUE(WaitFor([&] {
    return HasRow(AuditRows(clone_job, "net.allowed"), sandbox::testing::kGitHostName,
                  "dns: allowed");
  })) << AuditRows(clone_job, "net.allowed").dump();

  // A repository that is not there: the job fails, saying why.
  run = Ctl({"job", "run", "--profile", "git", "--workspace-git", url + "-missing", "--", "true"});
  EXPECT_EQ(run.exit, 125) << run.out << run.err;
  EXPECT_NE(run.err.find("ralphd: workspace_git: cloning " + url + "-missing failed"),
            std::string::npos)
      << run.err;

  // A profile that does not allow the host: refused at submit, no job.
  const size_t before = jobs.size();
  run = Ctl({"job", "run", "--profile", "plus", "--workspace-git", url, "--", "true"});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.err.find("host 'git.allowed.test' is not allowed by profile 'plus''s egress"),
            std::string::npos)
      << run.err;
  jobs = json::parse(Ctl({"job", "list", "--json"}).out, nullptr, false)["jobs"];
  EXPECT_EQ(jobs.size(), before + 1) << "only the failed clone's job was added";
  // Nor by address, nor with credentials in the URL.
  run = Ctl({"job", "run", "--profile", "git", "--workspace-git", direct, "--", "true"});
  EXPECT_NE(run.err.find("names an address: give a host name"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace ralph::ralphd
