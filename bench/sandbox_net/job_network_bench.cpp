// bench_sandbox_net [iterations]
//
// Median wall time to give a waiting job its network (veth into its netns,
// lo/address/routes inside, host address, the job's nft table with the full
// default-deny rule set) and to tear it down again:
//   ours: NetworkService::CreateJob + Teardown (rtnetlink + one nft batch),
//         and CreateJob when the job's table was committed ahead
//         (NetworkServiceConfig::prepared_tables)
//   peer: the same objects made with ip(8), nsenter(1) and `nft -f` of the
//         same plan (RenderNft), removed with `nft delete table` + `ip link del`
// Runs inside a private network namespace (the machine's network is never
// touched). Needs root, iproute2, util-linux and nftables.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/log.h"
#include "sandbox/net/address_pool.h"
#include "sandbox/net/network_service.h"
#include "sandbox/net/rule_plan.h"
#include "tests/support/bench_stats.h"

namespace {

using ralph::testing::Median;

using ralph::sandbox::IpPrefix;
using ralph::sandbox::JobAddresses;
using ralph::sandbox::JobAddressing;
using ralph::sandbox::NetworkService;
using ralph::sandbox::NetworkServiceConfig;
using ralph::sandbox::NetworkSpec;
using Clock = std::chrono::steady_clock;

// A process in its own netns, parked until killed: the job as the spawner
// holds it while the network is made.
struct Waiter {
  pid_t pid = -1;
  static Waiter Start() {
    int ready[2];
    if (pipe(ready) != 0) abort();
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      close(ready[0]);
      if (unshare(CLONE_NEWNET) != 0) _exit(1);
      if (write(ready[1], "r", 1) != 1) _exit(1);
      pause();
      _exit(0);
    }
    close(ready[1]);
    char byte = 0;
    if (read(ready[0], &byte, 1) != 1) abort();
    close(ready[0]);
    return {pid};
  }
  void Stop() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
};

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

bool Run(const std::string& command) {
  return system(command.c_str()) == 0;
}

NetworkSpec Spec() {
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.0/24", .port_min = 443},
                {.cidr = "2001:db8::/32", .port_min = 443}};
  spec.allowed_domains = {"*.example.com"};
  return spec;
}

}  // namespace

int main(int argc, char** argv) {
  ralph::LogInit("bench_sandbox_net", ralph::LogSink::kStderr);
  int iterations = argc > 1 ? atoi(argv[1]) : 30;
  if (geteuid() != 0 || unshare(CLONE_NEWNET) != 0) {
    ralph::LogError("needs root to unshare a network namespace");
    return 1;
  }
  if (!Run("ip link set lo up")) {
    ralph::LogError("ip(8) failed: install iproute2 (scripts/setup.sh)");
    return 1;
  }

  NetworkServiceConfig config;
  config.upstream_dns = "127.0.0.1";
  auto service = NetworkService::Start(config);
  if (!service) {
    ralph::LogError("starting the network service: {}", service.error().ToString());
    return 1;
  }

  // `service` as is, and a second one that commits the next job's table
  // ahead (prepared_tables; waited for between jobs, as an idle service
  // would have it done), run alternately so that machine noise hits both.
  NetworkServiceConfig prepared_config = config;
  prepared_config.prepared_tables = 2;
  prepared_config.nflog_group = static_cast<uint16_t>(config.nflog_group + 1);
  auto prepared_service = NetworkService::Start(prepared_config);
  if (!prepared_service) {
    ralph::LogError("starting the second network service: {}", prepared_service.error().ToString());
    return 1;
  }
  std::vector<double> ours_create, ours_teardown, prepared_create, peer_create, peer_teardown;
  for (int i = 0; i < 2 * iterations; ++i) {
    bool prepared = i % 2 == 1;
    NetworkService& used = prepared ? **prepared_service : **service;
    Waiter job = Waiter::Start();
    auto start = Clock::now();
    auto network = used.CreateJob(fmt::format("bench-{}", i), job.pid, Spec(), nullptr);
    auto created = Clock::now();
    if (!network) {
      ralph::LogError("CreateJob: {}", network.error().ToString());
      return 1;
    }
    auto torn = (*network)->Teardown();
    auto done = Clock::now();
    if (!torn) {
      ralph::LogError("Teardown: {}", torn.error().ToString());
      return 1;
    }
    if (prepared) {
      // The first job of the spec found nothing prepared.
      if (i > 1) prepared_create.push_back(Ms(created - start));
      used.WaitForPreparedTables();
    } else {
      ours_create.push_back(Ms(created - start));
      ours_teardown.push_back(Ms(done - created));
    }
    job.Stop();
  }
  prepared_service->reset();

  // The peer builds the very same objects; its rules come from the same plan.
  auto pool = ralph::sandbox::AddressPool::Create(*IpPrefix::Parse("10.253.0.0/16"),
                                                  *IpPrefix::Parse("fd52:616c:7069::/48"));
  auto a = (*pool)->Allocate();
  std::string ifname = "pj0";
  JobAddressing addressing{.host_ifname = ifname,
                           .host_v4 = a->host_v4,
                           .job_v4 = a->job_v4,
                           .host_v6 = a->host_v6,
                           .job_v6 = a->job_v6};
  auto plan = ralph::sandbox::PlanJobTable(addressing, Spec(), config.nflog_group);
  std::string plan_path = fmt::format("/tmp/bench-sandbox-net-{}.nft", getpid());
  FILE* file = fopen(plan_path.c_str(), "we");
  fputs(ralph::sandbox::RenderNft(*plan).c_str(), file);
  fclose(file);
  for (int i = 0; i < iterations; ++i) {
    Waiter job = Waiter::Start();
    std::string in_job = fmt::format("nsenter -t {} -n", job.pid);
    auto start = Clock::now();
    bool ok =
        Run(fmt::format("ip link add {} type veth peer name eth0 netns {}", ifname, job.pid)) &&
        Run(fmt::format("{} sh -c 'ip link set lo up && ip addr add {}/30 dev eth0 && "
                        "ip -6 addr add {}/64 dev eth0 nodad && ip link set eth0 up && "
                        "ip route add default via {} && ip -6 route add default via {}'",
                        in_job, a->job_v4.AddressString(), a->job_v6.AddressString(),
                        a->host_v4.AddressString(), a->host_v6.AddressString())) &&
        Run(fmt::format("ip addr add {}/30 dev {} && ip -6 addr add {}/64 dev {} nodad && "
                        "ip link set {} up",
                        a->host_v4.AddressString(), ifname, a->host_v6.AddressString(), ifname,
                        ifname)) &&
        Run(fmt::format("nft -f {}", plan_path));
    auto created = Clock::now();
    ok = ok && Run(fmt::format("nft delete table inet {} && ip link del {}", plan->name, ifname));
    auto done = Clock::now();
    job.Stop();
    if (!ok) {
      ralph::LogError("the ip/nft peer failed at iteration {}", i);
      unlink(plan_path.c_str());
      return 1;
    }
    peer_create.push_back(Ms(created - start));
    peer_teardown.push_back(Ms(done - created));
  }
  unlink(plan_path.c_str());

  double oc = Median(ours_create), ot = Median(ours_teardown);
  double pc = Median(peer_create), pt = Median(peer_teardown);
  printf("job network, median of %d (ms)        create   teardown   total\n", iterations);
  printf("  ralph (rtnetlink + nft batch)      %8.2f   %8.2f %8.2f\n", oc, ot, oc + ot);
  double prc = Median(prepared_create);
  printf("  ralph, table prepared ahead        %8.2f   (%.2fx the create above)\n", prc, prc / oc);
  printf("  peer  (ip + nsenter + nft -f)      %8.2f   %8.2f %8.2f\n", pc, pt, pc + pt);
  printf("  ratio ralph / peer                 %8.2f   %8.2f %8.2f\n", oc / pc, ot / pt,
         (oc + ot) / (pc + pt));
  return 0;
}
