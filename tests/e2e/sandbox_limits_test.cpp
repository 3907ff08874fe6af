// Sandboxes on the product kernel, in the booted appliance (one boot):
// - cgroup v2 limits (the appliance kernel is cgroup v2 only): the test
//   agent runs `ralph-sandbox run` with a memory bomb under a small
//   memory.max and a fork bomb under a small pids.max (ralph-test-bomb,
//   bound into the slot's read-only sandbox base; each job's writable upper
//   on VAR), and the host checks the verdicts and that the guest is healthy
//   afterwards;
// - networking (veth, host-side nftables default-deny with the job's
//   allowlist, the DNS allowlist forwarder): the guest has a NIC on QEMU
//   user networking, renumbered to 192.0.2.0/24 (TEST-NET-1) because QEMU's
//   default 10.0.2.0/24 is RFC 1918, which a job can never reach whatever
//   its allowlist says. Two TCP servers listen on the host's loopback (the
//   guest reaches them at 192.0.2.2); a job allowed one of them reaches it
//   and is refused the other and the cloud metadata address, a name off its
//   DNS allowlist is REFUSED by the forwarder, and no veth is left
//   afterwards, nor any nft table once `ralph-sandbox drain` has removed
//   the ones launchers keep warm;
// - the control plane, as the companion client sees it (in the same boot):
//   the health gate committed with ralphd's checks passing, the host reads
//   the pairing string from the serial console, pairs through a QEMU host
//   forward to ralphd's API port (dialling the forward, pinning the device
//   key of the string), runs a job in a sandbox with a small uploaded
//   workspace, sees its output streamed and its exit status, and downloads
//   the workspace with the file the job wrote.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "harness/companion.h"
#include "harness/e2e_test.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "tests/support/loop_device.h"

namespace ralph::e2e {
namespace {

constexpr std::chrono::seconds kSandboxTimeout{300};
constexpr std::chrono::seconds kNetworkTimeout{120};
// The guest's view of the host: QEMU user networking with net=192.0.2.0/24
// puts its gateway (the host's loopback) at .2 and its DNS at .3.
constexpr const char* kGuestNetwork = "192.0.2.0/24";
constexpr const char* kHostFromGuest = "192.0.2.2";
// The address QEMU's DHCP server leases the guest on that network (its
// first lease: .15, as 10.0.2.15 on the default one).
constexpr const char* kGuestAddress = "192.0.2.15";
// ralphd's API port in the guest (tools/mkimage: --api-listen 0.0.0.0:8443).
constexpr uint16_t kApiPort = 8443;
// Printed by `ralphctl pair` after the pairing string and its QR code.
constexpr const char* kPairingOfferShown = "one-time offer ";

// A TCP server on the host's loopback: answers every connection with
// "ralph-e2e <name>\n" and counts them.
class BannerServer {
 public:
  explicit BannerServer(std::string name) : name_(std::move(name)) {
    listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (!listener_ || ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listener_.get(), 16) != 0 ||
        ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      ADD_FAILURE() << "banner server " << name_ << ": " << std::strerror(errno);
      return;
    }
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~BannerServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return port_; }
  int connections() const { return connections_; }

 private:
  void Serve() {
    std::string banner = "ralph-e2e " + name_ + "\n";
    while (!stop_) {
      pollfd p{listener_.get(), POLLIN, 0};
      if (::poll(&p, 1, 200) != 1) continue;
      UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!client) continue;
      ++connections_;
      (void)!::write(client.get(), banner.data(), banner.size());
    }
  }

  std::string name_;
  UniqueFd listener_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

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

// `ralph-sandbox run` with the slot's base and the probe bound in at /bomb,
// networked: default-deny egress plus `network` (--allow / --allow-domain).
std::vector<std::string> NetworkedRun(std::vector<std::string> network,
                                      std::vector<std::string> command) {
  std::vector<std::string> argv = {"ralph-sandbox", "run",
                                   "--rootfs",      "/usr/lib/ralph/sandbox-base",
                                   "--ro-bind",     "/usr/libexec/ralph-test-bomb:/bomb",
                                   "--timeout",     "120"};
  argv.insert(argv.end(), network.begin(), network.end());
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

TEST_F(E2eTest, SandboxLimitsAndNetworkPolicyHoldInTheGuest) {
  network_ = true;
  network_cidr_ = kGuestNetwork;
  auto api_port = FreeLocalPort();
  ASSERT_TRUE(api_port) << api_port.error().ToString();
  forwards_ = {{*api_port, kApiPort}};
  ASSERT_NO_FATAL_FAILURE(Prepare(DiskSource::kProvisioned));
  Machine machine = Boot();
  auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(up) << up.error().ToString();
  for (const char* check : {"ralphd answers", "ralphd API", "policy loads", "sandbox runs"}) {
    EXPECT_EQ(machine.Count(fmt::format("check '{}': ok", check)), 1u) << check;
  }

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

  // --- Networking. DHCP first: the default route via 192.0.2.2 and the
  // lease's DNS server in /run/ralph/resolv.conf (ralph-dhcpcd-hook; the
  // forwarder's upstream).
  auto deadline = std::chrono::steady_clock::now() + kNetworkTimeout;
  for (;;) {
    auto routes = machine.Agent({"cat", "/proc/net/route"}, kAgentTimeout);
    auto resolv = machine.Agent({"cat", "/run/ralph/resolv.conf"}, kAgentTimeout);
    // Destination 00000000 via gateway 192.0.2.2 (little-endian hex).
    bool routed = routes && routes->exit == 0 &&
                  routes->output.find("\t00000000\t020200C0") != std::string::npos;
    bool dns = resolv && resolv->exit == 0 &&
               resolv->output.find("nameserver 192.0.2.3\n") != std::string::npos;
    if (routed && dns) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      FAIL() << "no DHCP lease within " << kNetworkTimeout.count() << " s; /proc/net/route:\n"
             << (routes ? routes->output : routes.error().ToString()) << "\nresolv.conf:\n"
             << (resolv ? resolv->output : resolv.error().ToString());
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }

  BannerServer allowed("allowed");
  BannerServer other("other");
  ASSERT_NE(allowed.port(), 0);
  ASSERT_NE(other.port(), 0);
  std::string allowed_target = fmt::format("{}:{}", kHostFromGuest, allowed.port());
  std::string other_target = fmt::format("{}:{}", kHostFromGuest, other.port());

  // Control, outside any sandbox: the guest itself reaches both servers, so
  // a refusal below is the sandbox's doing.
  auto control =
      machine.Agent({"ralph-test-bomb", "connect", allowed_target, other_target}, kAgentTimeout);
  ASSERT_TRUE(control) << control.error().ToString();
  EXPECT_NE(control->output.find(allowed_target + " connected: ralph-e2e allowed"),
            std::string::npos)
      << control->output;
  EXPECT_NE(control->output.find(other_target + " connected: ralph-e2e other"), std::string::npos)
      << control->output;
  EXPECT_EQ(allowed.connections(), 1);
  EXPECT_EQ(other.connections(), 1);

  // A job allowed one host:port reaches it; the other port of the same
  // host and the metadata address are dropped (no SYN reaches the other
  // server).
  auto job = machine.Agent(
      NetworkedRun({"--allow", allowed_target},
                   {"/bomb", "connect", allowed_target, other_target, "169.254.169.254:80"}),
      kSandboxTimeout);
  ASSERT_TRUE(job) << job.error().ToString();
  std::printf("networked job (exit %d):\n%s\n", job->exit, job->output.c_str());
  EXPECT_EQ(job->exit, 0) << job->output;
  EXPECT_NE(job->output.find(allowed_target + " connected: ralph-e2e allowed"), std::string::npos)
      << job->output;
  EXPECT_NE(job->output.find(other_target + " timed out"), std::string::npos) << job->output;
  EXPECT_NE(job->output.find("169.254.169.254:80 timed out"), std::string::npos) << job->output;
  EXPECT_EQ(allowed.connections(), 2);
  EXPECT_EQ(other.connections(), 1) << "a connection the allowlist does not name got through";
  // The same job again: where it gets the same slot it takes the first
  // one's table once the kernel reports it as its own plan, with the same
  // verdicts.
  auto again = machine.Agent(
      NetworkedRun({"--allow", allowed_target}, {"/bomb", "connect", allowed_target, other_target}),
      kSandboxTimeout);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(again->exit, 0) << again->output;
  EXPECT_NE(again->output.find(allowed_target + " connected: ralph-e2e allowed"), std::string::npos)
      << again->output;
  EXPECT_NE(again->output.find(other_target + " timed out"), std::string::npos) << again->output;
  EXPECT_EQ(allowed.connections(), 3);
  EXPECT_EQ(other.connections(), 1) << "a connection the allowlist does not name got through";

  // The job's resolver is the forwarder on its veth: a name off the DNS
  // allowlist is answered REFUSED (rcode 5), never forwarded.
  auto dns = machine.Agent(
      NetworkedRun({"--allow-domain", "allowed.example"}, {"/bomb", "dns", "exfil.example"}),
      kSandboxTimeout);
  ASSERT_TRUE(dns) << dns.error().ToString();
  std::printf("dns job (exit %d):\n%s\n", dns->exit, dns->output.c_str());
  EXPECT_EQ(dns->exit, 0) << dns->output;
  EXPECT_NE(dns->output.find("dns exfil.example: rcode 5 answers 0"), std::string::npos)
      << dns->output;

  // Nothing of the jobs' networks is left but what launchers keep for the
  // next one: no job veth (rj*); the warm tables and the jobs' tables, which
  // `ralph-sandbox drain` removes.
  auto links = machine.Agent({"cat", "/proc/net/dev"}, kAgentTimeout);
  ASSERT_TRUE(links && links->exit == 0);
  EXPECT_EQ(links->output.find(" rj"), std::string::npos) << links->output;
  EXPECT_NE(links->output.find("eth0:"), std::string::npos) << links->output;
  auto tables = machine.Agent({"nft-tables"}, kAgentTimeout);
  ASSERT_TRUE(tables) << tables.error().ToString();
  EXPECT_EQ(tables->exit, 0) << tables->output;
  EXPECT_NE(tables->output.find("inet ralph-warm-rj\n"), std::string::npos) << tables->output;
  auto drain = machine.Agent({"ralph-sandbox", "drain"}, kAgentTimeout);
  ASSERT_TRUE(drain) << drain.error().ToString();
  EXPECT_EQ(drain->exit, 0) << drain->output;
  tables = machine.Agent({"nft-tables"}, kAgentTimeout);
  ASSERT_TRUE(tables) << tables.error().ToString();
  EXPECT_EQ(tables->exit, 0) << tables->output;
  EXPECT_EQ(tables->output.find("ralph"), std::string::npos) << tables->output;
  EXPECT_EQ(machine.Count("Kernel panic"), 0u);

  // --- The control plane through the forwarded port. No client is paired
  // yet, so the boot printed a pairing offer after the health gate.
  auto offered = machine.WaitFor(kPairingOfferShown, kBootTimeout);
  ASSERT_TRUE(offered) << offered.error().ToString();
  auto pairing = FindPairingString(machine.Console());
  ASSERT_TRUE(pairing) << pairing.error().ToString();
  // ralphd listens on every interface, so the string names the guest's
  // address from QEMU's user-mode DHCP (kGuestAddress), or, when the offer
  // came before the lease, the listen address (ralphctl prints a note after
  // it).
  bool leased = pairing->find(fmt::format("addr={}:8443&", kGuestAddress)) != std::string::npos;
  bool unleased = pairing->find("addr=0.0.0.0:8443&") != std::string::npos;
  EXPECT_TRUE(leased || unleased) << *pairing;
  std::string forwarded = fmt::format("127.0.0.1:{}", *api_port);
  auto credentials = PairThrough(*pairing, forwarded, "e2e-companion");
  ASSERT_TRUE(credentials) << credentials.error().ToString();
  EXPECT_EQ(credentials->device_address, forwarded);
  auto companion = Companion::Connect(*credentials);
  ASSERT_TRUE(companion) << companion.error().ToString();

  std::string host_dir = scratch_->path() + "/workspace";
  ASSERT_TRUE(ralph::testing::RunCommand({"mkdir", "-p", host_dir}));
  ASSERT_TRUE(WriteWholeFile(host_dir + "/hello.txt", "hello from the host\n"));
  std::string upload = scratch_->path() + "/upload.tar";
  auto tarred = ralph::testing::RunCommand({"tar", "-C", host_dir, "-cf", upload, "hello.txt"});
  ASSERT_TRUE(tarred) << tarred.error().ToString();
  auto tar = ReadWholeFile(upload);
  ASSERT_TRUE(tar) << tar.error().ToString();
  std::string streamed;
  auto remote =
      (*companion)
          ->RunJob(
              {"sh", "-c", "cat hello.txt; sha256sum hello.txt > sums; echo to-stderr >&2; exit 3"},
              *tar, [&](std::string_view stream, std::string_view bytes) {
                if (stream == "stdout") streamed += bytes;
              });
  ASSERT_TRUE(remote) << remote.error().ToString();
  std::printf("companion job %llu: %s\n", static_cast<unsigned long long>(remote->id),
              remote->record.dump().c_str());
  EXPECT_EQ(streamed, "hello from the host\n");
  EXPECT_EQ(remote->stdout_bytes, "hello from the host\n");
  EXPECT_EQ(remote->stderr_bytes, "to-stderr\n");
  EXPECT_EQ(remote->record.value("state", ""), "failed") << remote->record.dump();
  EXPECT_EQ(remote->record.value("exit_code", -1), 3) << remote->record.dump();

  auto downloaded = (*companion)->DownloadWorkspace(remote->id);
  ASSERT_TRUE(downloaded) << downloaded.error().ToString();
  std::string download = scratch_->path() + "/download.tar";
  ASSERT_TRUE(WriteWholeFile(download, *downloaded));
  std::string out_dir = scratch_->path() + "/downloaded";
  ASSERT_TRUE(ralph::testing::RunCommand({"mkdir", "-p", out_dir}));
  auto extracted = ralph::testing::RunCommand({"tar", "-C", out_dir, "-xf", download});
  ASSERT_TRUE(extracted) << extracted.error().ToString();
  auto kept = ReadWholeFile(out_dir + "/hello.txt");
  ASSERT_TRUE(kept) << kept.error().ToString();
  EXPECT_EQ(*kept, "hello from the host\n");
  auto sums = ReadWholeFile(out_dir + "/sums");
  ASSERT_TRUE(sums) << sums.error().ToString();
  auto expected =
      ralph::testing::RunCommand({"sh", "-c", "cd " + host_dir + " && sha256sum hello.txt"});
  ASSERT_TRUE(expected) << expected.error().ToString();
  EXPECT_EQ(*sums, *expected);

  // Paired now: the console's offer is not made unless.
  auto unless = Ralphctl(machine, {"pair", "--unless-paired"});
  EXPECT_EQ(unless.exit, 0) << unless.output;
  EXPECT_NE(unless.output.find("1 client(s) paired: no pairing offer made"), std::string::npos)
      << unless.output;
  EXPECT_EQ(unless.output.find("ralphos-pair:"), std::string::npos) << unless.output;
}

}  // namespace
}  // namespace ralph::e2e
