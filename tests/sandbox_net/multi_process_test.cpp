// Two processes, each owning its NetworkService with the same (default)
// configuration — what two `ralph-sandbox run`, or ralphd next to one, do —
// share one network namespace at the same time: both start, both network a
// job, and each gets the events of its own job and only those. Runs in a
// private netns that plays the appliance host (test_topology.h).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "private_netns_environment.h"
#include "sandbox/net/network_service.h"
#include "test_topology.h"

namespace ralph::sandbox {
namespace {

using testing::JobContext;
using testing::JobProcess;
using testing::ProbeConnect;
using testing::RecordingSink;
using testing::World;

const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new testing::PrivateNetnsEnvironment);

void WriteLine(int fd, const std::string& line) {
  std::string text = line + "\n";
  if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) ::_exit(3);
}

// One line from `fd`, waiting at most 120 s; "" on timeout or EOF.
std::string ReadLine(int fd) {
  std::string line;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 120'000) != 1) return line;
    char c;
    if (::read(fd, &c, 1) != 1 || c == '\n') return line;
    line += c;
  }
}

// The body of one service process (a forked child of the test, forked
// while the test had no threads). Reports "ready <instance> <nflog group>
// <veth>" once its job is networked, waits for the test's go (so both
// services and both job networks are alive at once), runs the job's probe
// and reports "done <probe output> <checks>".
int ServiceProcess(int index, int report_fd, int go_fd) {
  JobProcess job = JobProcess::Fork([](const JobContext&) {
    return ProbeConnect("203.0.113.10", 80) + " " + ProbeConnect("10.9.9.9", 80);
  });
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  auto service = NetworkService::Start(config);
  if (!service) {
    WriteLine(report_fd, "error " + service.error().ToString());
    return 1;
  }
  RecordingSink sink;
  std::string job_id = fmt::format("process-{}-job", index);
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.10", .port_min = 80}};
  auto network = (*service)->CreateJob(job_id, job.pid(), spec, &sink);
  if (!network) {
    WriteLine(report_fd, "error " + network.error().ToString());
    return 1;
  }
  WriteLine(report_fd, fmt::format("ready {} {} {}", (*service)->instance(),
                                   (*service)->nflog_group(), (*network)->host_interface()));
  char go;
  if (::read(go_fd, &go, 1) != 1) return 1;
  std::string out = job.Go({(*network)->resolver_address(), (*network)->resolver_address_v6()});
  auto event = [&](NetVerdict verdict, const std::string& address, const std::string& reason) {
    return sink.WaitFor([&](const NetEvent& e) {
      return e.job_id == job_id && e.verdict == verdict && e.destination == address &&
             e.port == 80 && e.reason == reason;
    });
  };
  bool denied = event(NetVerdict::kDenied, "10.9.9.9", "rfc1918");
  bool allowed = event(NetVerdict::kAllowed, "203.0.113.10", "allowlist");
  bool only_own = true;
  for (const NetEvent& e : sink.events()) only_own &= e.job_id == job_id;
  auto torn_down = (*network)->Teardown();
  WriteLine(report_fd, fmt::format("done {} denied={} allowed={} only-own={} teardown={}", out,
                                   denied, allowed, only_own, torn_down.has_value()));
  return 0;
}

TEST(MultiProcessNetworkTest, TwoServiceProcessesInOneNetnsBothGetTheirEvents) {
  World* world = World::Start();
  struct Child {
    pid_t pid = -1;
    int report = -1;  // read end
    int go = -1;      // write end
  };
  Child children[2];
  for (int i = 0; i < 2; ++i) {
    int report[2], go[2];
    ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
    ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(report[0]);
      ::close(go[1]);
      ::_exit(ServiceProcess(i, report[1], go[0]));
    }
    ::close(report[1]);
    ::close(go[0]);
    children[i] = {pid, report[0], go[1]};
  }
  std::string ready[2];
  for (int i = 0; i < 2; ++i) {
    ready[i] = ReadLine(children[i].report);
    EXPECT_EQ(ready[i].rfind("ready ", 0), 0u) << "process " << i << ": " << ready[i];
  }
  // Different instances, NFLOG groups and veths, chosen at run time.
  unsigned instance[2] = {99, 99}, group[2] = {0, 0};
  char veth[2][32] = {};
  for (int i = 0; i < 2; ++i)
    std::sscanf(ready[i].c_str(), "ready %u %u %31s", &instance[i], &group[i], veth[i]);
  EXPECT_NE(instance[0], instance[1]);
  EXPECT_NE(group[0], group[1]);
  EXPECT_STRNE(veth[0], veth[1]);

  for (const Child& child : children) ASSERT_EQ(::write(child.go, "g", 1), 1);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(ReadLine(children[i].report),
              "done connected:hello failed:timeout denied=true allowed=true only-own=true "
              "teardown=true")
        << "process " << i;
  }
  for (const Child& child : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(child.pid, &status, 0), child.pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    ::close(child.report);
    ::close(child.go);
  }
  // Both services removed what they made: no tables, only lo and the
  // world's veth.
  EXPECT_EQ(testing::ShellOutput("nft list tables"), "");
  EXPECT_EQ(testing::CountResources().interfaces, 2);
  delete world;
}

}  // namespace
}  // namespace ralph::sandbox
