// Test network for the sandbox network tests. Nothing here touches the
// machine's real network: the test process first moves itself into a fresh
// network namespace that plays the appliance host, and everything else
// (the "internet", the metadata server, an RFC 1918 host, the upstream DNS
// server, the jobs) lives in further namespaces joined to it by veths.
//
//   job netns (eth0 10.254.x.2) ==veth rjN== host netns (this process)
//   host netns (wv<pid> 192.0.2.1, 2001:db8:ffff::1) ==veth== world netns
//   world netns: 203.0.113.10, 203.0.113.20 (web), 198.51.100.53 (DNS),
//                169.254.169.254 + fd00:ec2::254 + 100.100.100.200 (metadata),
//                10.9.9.9 (RFC 1918), 2001:db8:1::10, 2001:db8:1::20,
//                203.0.113.31..34 (the coding agents' API hosts, kAgentHosts),
//                203.0.113.40 (git.allowed.test: nothing listens until a test
//                Spawns a server there)
//   The world answers TCP on 22/80/443/8080 ("hello\n") and DNS on 53, and
//   logs every connection and query it sees to a file the tests read.
//   Its DNS zone: api.allowed.test (A 203.0.113.10, AAAA 2001:db8:1::10),
//   meta.allowed.test (A 169.254.169.254), git.allowed.test (A 203.0.113.40)
//   and kAgentHosts (A).
//
// Also used by tests/ralphd's egress test (ralphd's agent jobs in this
// topology).
#pragma once

#include <sys/types.h>
#include <time.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "sandbox/net/job_network.h"

namespace ralph::sandbox::testing {

// Names of the coding agents' API hosts (services/agents profile.h) in the
// world's DNS zone, one test host per vendor.
struct AgentHost {
  const char* name;
  const char* address;
};
inline constexpr AgentHost kAgentHosts[] = {
    {"api.anthropic.com", "203.0.113.31"},   {"console.anthropic.com", "203.0.113.31"},
    {"platform.claude.com", "203.0.113.31"}, {"api.openai.com", "203.0.113.32"},
    {"auth.openai.com", "203.0.113.32"},     {"chatgpt.com", "203.0.113.33"},
    {"opencode.ai", "203.0.113.34"},         {"models.dev", "203.0.113.34"},
};

// A host of the world for a test's own server (World::Spawn).
inline constexpr const char* kGitHostName = "git.allowed.test";
inline constexpr const char* kGitHostAddress = "203.0.113.40";

// Moves the calling (main) thread into a fresh network namespace with lo up.
// Must run before any other thread exists. Aborts the test binary on failure.
void EnterPrivateNetns();

// Runs `command` with /bin/sh; returns its exit status.
int Shell(const std::string& command);
// Runs `command`, returns its stdout.
std::string ShellOutput(const std::string& command);

class World {
 public:
  // Forks the world process, joins it to this netns, installs routes.
  static World* Start();
  ~World();
  // Everything the world saw so far, one event per line:
  //   "tcp <local addr> <local port> from <peer addr>"
  //   "dns <name> <type>"
  std::vector<std::string> Log() const;
  bool SawAny(const std::string& needle) const;
  // Forgets what was seen so far (each test checks only its own traffic).
  void ClearLog();
  // Starts `command` (with /bin/sh) in the world's network namespace: a
  // server of the test's own on one of the world's addresses. The caller
  // kills and reaps it.
  pid_t Spawn(const std::string& command) const;
  const std::string& veth() const { return veth_; }

 private:
  World() = default;
  pid_t pid_ = -1;
  std::string log_path_;
  std::string veth_;
};

// What a job probe learns about its own network.
struct JobContext {
  std::string resolver_v4;
  std::string resolver_v6;
};

// Probes run inside the job (a forked child in its own netns).
// "connected:hello" or "failed:<reason>".
std::string ProbeConnect(const std::string& address, uint16_t port);
// "rcode:REFUSED" / "rcode:NOERROR A 203.0.113.10 ..." / "failed:<reason>".
std::string ProbeResolve(const std::string& server, const std::string& name, int type,
                         bool tcp = false);
// Sends `count` UDP datagrams as fast as possible; "sent <n>".
std::string ProbeUdpFlood(const std::string& address, uint16_t port, int count);
// "reply" or "no-reply" (ICMP / ICMPv6 echo over a raw socket).
std::string ProbePing(const std::string& address);

// Forks a child that unshares a network namespace and waits; Create() the
// network for its pid, then Go() lets it run `probe` and collects its output.
class JobProcess {
 public:
  static JobProcess Fork(std::function<std::string(const JobContext&)> probe);
  JobProcess(JobProcess&& other) noexcept;
  ~JobProcess();
  pid_t pid() const { return pid_; }
  // Sends the context, waits for the probe's output and the child's exit.
  std::string Go(const JobContext& context);
  // Kills the child without running the probe.
  void Kill();

 private:
  JobProcess() = default;
  pid_t pid_ = -1;
  int go_fd_ = -1;
  int out_fd_ = -1;
};

class RecordingSink : public NetEventSinkInterface {
 public:
  void OnNetEvent(const NetEvent& event) override;
  // Waits up to 5 s for an event matching `match`.
  bool WaitFor(const std::function<bool(const NetEvent&)>& match);
  std::vector<NetEvent> events() const;
  std::string Dump() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<NetEvent> events_;
};

// Polls `done` for up to 20 s (state the kernel or a service's thread
// reaches asynchronously: a dead netns's veths, a drained NFLOG backlog);
// true once it holds.
template <typename F>
bool Eventually(F done) {
  for (int i = 0; i < 400; ++i) {
    if (done()) return true;
    timespec pause{0, 50'000'000};
    nanosleep(&pause, nullptr);
  }
  return done();
}

// Kernel objects and process resources that a job network could leak.
struct ResourceCounts {
  int interfaces = 0;
  int nft_tables = 0;
  int fds = 0;
  int threads = 0;
  int foreign_netns_refs = 0;  // fds or threads referring to another netns
  bool operator==(const ResourceCounts&) const = default;
};
ResourceCounts CountResources();
std::string ToString(const ResourceCounts& counts);

}  // namespace ralph::sandbox::testing
