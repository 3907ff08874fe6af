// Sandbox benchmarks, side by side with bubblewrap in one run:
//  1. `ralph-sandbox run -- /bin/true` (every layer on: userns, pidns, mntns,
//     netns, ipc, uts, cgroupns, overlay on a per-job ext4 upper, cgroup
//     limits, rlimits, caps, no_new_privs, landlock, seccomp) vs
//     `bwrap --unshare-all --ro-bind /usr /usr ... /bin/true`: median wall
//     time of a whole launcher process, ratio.
//  2. The same job spawned by a long-running SandboxService in this process
//     (create + run + wait + destroy, no launcher exec) vs bwrap: ratio.
//  3. Service RSS per idle sandbox (N jobs alive, each sleeping).
// Every iteration is a complete create/run/destroy as a user sees it (the
// launcher's process exit included); util-linux unshare and minijail0 are
// timed in the same interleaved loop when installed. Medians and the load
// average are printed: on a shared machine only the ratios mean much.
//
// usage: sandbox_bench [runs=200] [idle=100]
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/arch.h"
#include "sandbox/service.h"
#include "tests/support/bench_stats.h"

extern char** environ;

namespace {

using ralph::testing::LoadAverage;
using ralph::testing::Median;

namespace sb = ralph::sandbox;
using Clock = std::chrono::steady_clock;

// fork+exec+wait of a command line; wall time in ms, or -1 on failure.
double TimeCommand(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  auto start = Clock::now();
  pid_t pid;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) return -1;
  int status = 0;
  waitpid(pid, &status, 0);
  auto end = Clock::now();
  posix_spawn_file_actions_destroy(&actions);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return std::chrono::duration<double, std::milli>(end - start).count();
}

bool Executable(const std::string& path) {
  return access(path.c_str(), X_OK) == 0;
}

long RssKiB() {
  FILE* file = std::fopen("/proc/self/status", "r");
  if (!file) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof line, file)) {
    if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  }
  std::fclose(file);
  return kib;
}

}  // namespace

int main(int argc, char** argv) {
  // "sandbox_bench service N [network]": only N service jobs (no bwrap, no
  // launcher), for profiling the service with perf.
  bool service_only = argc > 1 && std::string(argv[1]) == "service";
  if (service_only) {
    ++argv;
    --argc;
  }
  int runs = argc > 1 ? std::atoi(argv[1]) : 200;
  int idle = argc > 2 ? std::atoi(argv[2]) : 100;
  std::string work = fmt::format("/tmp/ralph-sandbox-bench-{}", getpid());
  std::string base = work + "/base";
  std::string state = work + "/state";
  // A base like the one bwrap gets: merged-/usr symlinks and an empty /usr
  // on which the host's /usr is bound read-only.
  for (const std::string& dir : {work, base, base + "/usr", base + "/etc", state})
    mkdir(dir.c_str(), 0755);
  for (const char* link : {"bin", "lib", "lib64", "sbin"})
    if (symlink(fmt::format("usr/{}", link).c_str(), (base + "/" + link).c_str()) != 0 &&
        errno != EEXIST)
      return 1;

  std::vector<std::string> ours = {RALPH_SANDBOX_CLI, "run",         "--rootfs", base, "--ro-bind",
                                   "/usr:/usr",       "--state-dir", state,      "--", "/bin/true"};
  std::vector<std::string> bwrap = {
      "/usr/bin/bwrap", "--unshare-all", "--ro-bind", "/usr",    "/usr",  "--symlink",
      "usr/lib64",      "/lib64",        "--symlink", "usr/lib", "/lib",  "--symlink",
      "usr/bin",        "/bin",          "--proc",    "/proc",   "--dev", "/dev",
      "--tmpfs",        "/tmp",          "/bin/true"};
  // Other peers a user might pick, when installed: util-linux unshare with
  // the same namespaces (no filesystem isolation at all), and minijail0.
  std::vector<std::string> unshare = {
      "/usr/bin/unshare", "--user",   "--map-root-user", "--pid", "--fork",
      "--mount",          "--net",    "--ipc",           "--uts", "--cgroup",
      "--mount-proc",     "/bin/true"};
  std::vector<std::string> minijail = {
      "/usr/sbin/minijail0", "-U", "-p", "-v", "-e", "-l", "-N", "--uts", "/bin/true"};
  bool have_unshare = Executable(unshare[0]) && TimeCommand(unshare) >= 0;
  bool have_minijail = Executable(minijail[0]) && TimeCommand(minijail) >= 0;
  std::string load_before = LoadAverage();
  bool with_network = sb::MakeDefaultNetworkProvider(nullptr) != nullptr;
  if (!with_network) ours.insert(ours.begin() + 2, "--no-network");
  if (TimeCommand(bwrap) < 0) {
    std::fprintf(stderr, "bwrap failed (package bubblewrap)\n");
    return 1;
  }
  if (TimeCommand(ours) < 0) {
    std::fprintf(stderr, "ralph-sandbox run failed: %s\n", RALPH_SANDBOX_CLI);
    return 1;
  }

  auto cgroups = sb::DetectCgroups(fmt::format("ralph-sandbox-bench-{}", getpid()));
  if (!cgroups) {
    std::fprintf(stderr, "cgroups: %s\n", cgroups.error().ToString().c_str());
    return 1;
  }
  sb::ServiceOptions options;
  options.state_dir = state;
  options.name = fmt::format("bench{}", getpid());
  options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
  auto service = sb::SandboxService::Create(options, std::move(*cgroups),
                                            sb::MakeDefaultNetworkProvider(nullptr));
  if (!service) {
    std::fprintf(stderr, "service: %s\n", service.error().ToString().c_str());
    return 1;
  }
  sb::SandboxSpec spec;
  spec.base = base;
  spec.binds = {{"/usr", "/usr", sb::BindAccess::kReadOnly}};
  spec.argv = {"/bin/true"};
  // Network on (own netns, veth, nft default-deny; no domains, so no DNS
  // forwarder) when sandbox/net is linked in; "network" says which.
  spec.network.enabled = with_network;

  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  if (service_only) {
    sb::SandboxSpec job = spec;
    job.network.enabled = with_network && idle != 0;
    std::vector<double> create, run, wait, destroy;
    for (int i = 0; i < runs; ++i) {
      auto t0 = Clock::now();
      auto id = (*service)->CreateJob(job);
      auto t1 = Clock::now();
      if (!id || !(*service)->Run(*id)) return 1;
      auto t2 = Clock::now();
      auto result = (*service)->Wait(*id);
      auto t3 = Clock::now();
      if (!result || result->exit_code != 0 || !(*service)->Destroy(*id)) return 1;
      auto t4 = Clock::now();
      create.push_back(ms(t0, t1));
      run.push_back(ms(t1, t2));
      wait.push_back(ms(t2, t3));
      destroy.push_back(ms(t3, t4));
    }
    std::printf(
        "service only, network %s, %d runs: create %.2f  run %.2f  wait %.2f  destroy %.2f\n",
        job.network.enabled ? "on" : "off", runs, Median(create), Median(run), Median(wait),
        Median(destroy));
    service->reset();
    IgnoreError(sb::UnmountIdleVolumes(state + "/images"));
    return std::system(("rm -rf " + work).c_str()) == 0 ? 0 : 1;
  }
  // Phase 1: launchers (before this process starts its own network service,
  // which holds the NFLOG group a launcher's service needs). Interleaved so
  // that machine noise hits all alike.
  std::vector<std::string> ours_no_net = ours;
  if (with_network) ours_no_net.insert(ours_no_net.begin() + 2, "--no-network");
  std::vector<double> t_bwrap1, t_ours, t_ours_no_net, t_unshare, t_minijail;
  for (int i = 0; i < runs; ++i) {
    t_bwrap1.push_back(TimeCommand(bwrap));
    t_ours.push_back(TimeCommand(ours));
    if (with_network) t_ours_no_net.push_back(TimeCommand(ours_no_net));
    if (have_unshare) t_unshare.push_back(TimeCommand(unshare));
    if (have_minijail) t_minijail.push_back(TimeCommand(minijail));
  }
  // A failed run counts as -1 and would pull the median down: refuse.
  for (const auto* times : {&t_bwrap1, &t_ours, &t_ours_no_net, &t_unshare, &t_minijail}) {
    if (std::any_of(times->begin(), times->end(), [](double t) { return t < 0; })) {
      std::fprintf(stderr, "a launcher run failed during the measurement\n");
      return 1;
    }
  }
  std::string load_after_launchers = LoadAverage();
  // Phase 2: the long-running service in this process.
  std::vector<double> t_spawn_no_net, t_create_nn, t_run_nn, t_wait_nn, t_destroy_nn;
  std::vector<double> t_bwrap2, t_service, t_service_no_net, t_create, t_run, t_wait, t_destroy;
  sb::SandboxSpec no_net = spec;
  no_net.network.enabled = false;
  for (int i = 0; i < runs; ++i) {
    t_bwrap2.push_back(TimeCommand(bwrap));
    if (t_bwrap2.back() < 0) {
      std::fprintf(stderr, "bwrap failed during the measurement\n");
      return 1;
    }
    for (const sb::SandboxSpec* s : {&spec, &no_net}) {
      if (s == &no_net && !with_network) continue;
      auto t0 = Clock::now();
      auto id = (*service)->CreateJob(*s);
      auto t1 = Clock::now();
      if (!id || !(*service)->Run(*id)) {
        std::fprintf(stderr, "service run failed\n");
        return 1;
      }
      auto t2 = Clock::now();
      auto result = (*service)->Wait(*id);
      auto t3 = Clock::now();
      if (!result || result->exit_code != 0 || !(*service)->Destroy(*id)) {
        std::fprintf(stderr, "service job failed\n");
        return 1;
      }
      auto t4 = Clock::now();
      if (s == &no_net) {
        t_service_no_net.push_back(ms(t0, t4));
        t_spawn_no_net.push_back(ms(t0, t3));
        t_create_nn.push_back(ms(t0, t1));
        t_run_nn.push_back(ms(t1, t2));
        t_wait_nn.push_back(ms(t2, t3));
        t_destroy_nn.push_back(ms(t3, t4));
        continue;
      }
      t_service.push_back(ms(t0, t4));
      t_create.push_back(ms(t0, t1));
      t_run.push_back(ms(t1, t2));
      t_wait.push_back(ms(t2, t3));
      t_destroy.push_back(ms(t3, t4));
    }
  }
  double bw1 = Median(t_bwrap1), bw2 = Median(t_bwrap2);
  std::printf(
      "runs=%d (medians, ms); ralph layers: userns pidns mntns netns ipcns utsns cgroupns, overlay "
      "on a "
      "per-job ext4 upper, cgroup v%d limits, rlimits, caps dropped, no_new_privs, landlock ABI "
      "%d, seccomp, "
      "network %s\n",
      runs, (*service)->cgroup_version() == sb::CgroupVersion::kV2 ? 2 : 1,
      (*service)->landlock_abi(),
      with_network
          ? "veth + nft default-deny (the service collects connection events, the launcher none)"
          : "loopback only (sandbox/net not linked)");
  std::printf("load average: %s at the start, %s at the end of the launcher phase\n",
              load_before.c_str(), load_after_launchers.c_str());
  std::printf("phase 1 (launchers, interleaved):\n");
  std::printf("  bwrap --unshare-all /bin/true                   %8.2f\n", bw1);
  std::printf("  ralph-sandbox run /bin/true (all layers)        %8.2f  ratio %.2fx bwrap\n",
              Median(t_ours), Median(t_ours) / bw1);
  if (with_network)
    std::printf("  ralph-sandbox run --no-network /bin/true        %8.2f  ratio %.2fx bwrap\n",
                Median(t_ours_no_net), Median(t_ours_no_net) / bw1);
  if (have_unshare)
    std::printf(
        "  unshare -U -p -m -n -i -u -C /bin/true          %8.2f  (ralph all layers %.2fx "
        "unshare)\n",
        Median(t_unshare), Median(t_ours) / Median(t_unshare));
  else
    std::printf("  unshare: not installed (package util-linux)\n");
  if (have_minijail)
    std::printf(
        "  minijail0 -U -p -v -e -l -N --uts /bin/true     %8.2f  (ralph all layers %.2fx "
        "minijail0)\n",
        Median(t_minijail), Median(t_ours) / Median(t_minijail));
  else
    std::printf("  minijail0: not installed (no Debian package in this release)\n");
  std::printf("phase 2 (long-running service in this process, interleaved; load %s at the end):\n",
              LoadAverage().c_str());
  std::printf("  bwrap --unshare-all /bin/true                   %8.2f\n", bw2);
  std::printf("  service create+run+wait+destroy (all layers)    %8.2f  ratio %.2fx bwrap\n",
              Median(t_service), Median(t_service) / bw2);
  std::printf("    create %.2f  run %.2f  wait %.2f  destroy %.2f\n", Median(t_create),
              Median(t_run), Median(t_wait), Median(t_destroy));
  std::vector<double> t_spawn;
  for (size_t i = 0; i < t_create.size(); ++i)
    t_spawn.push_back(t_create[i] + t_run[i] + t_wait[i]);
  std::printf("  service create+run+wait (result in hand)        %8.2f  ratio %.2fx bwrap\n",
              Median(t_spawn), Median(t_spawn) / bw2);
  if (with_network)
    std::printf("  service create+run+wait+destroy, no network     %8.2f  ratio %.2fx bwrap\n",
                Median(t_service_no_net), Median(t_service_no_net) / bw2);
  if (with_network) {
    std::printf("  service create+run+wait, no network             %8.2f  ratio %.2fx bwrap\n",
                Median(t_spawn_no_net), Median(t_spawn_no_net) / bw2);
    std::printf("    create %.2f  run %.2f  wait %.2f  destroy %.2f\n", Median(t_create_nn),
                Median(t_run_nn), Median(t_wait_nn), Median(t_destroy_nn));
  }

  // Idle sandboxes: N jobs alive, each sleeping.
  spec.argv = {"/bin/sleep", "600"};
  long before = RssKiB();
  std::vector<sb::JobId> ids;
  for (int i = 0; i < idle; ++i) {
    // Idle sandboxes without network: the network service's address pool
    // and per-job tables are sandbox/net's to measure.
    auto id = (*service)->CreateJob(no_net);
    if (!id || !(*service)->Run(*id)) {
      std::fprintf(stderr, "idle sandbox %d failed: %s\n", i,
                   id ? "run" : id.error().ToString().c_str());
      return 1;
    }
    ids.push_back(*id);
  }
  long after = RssKiB();
  std::printf(
      "service RSS: %ld KiB before, %ld KiB with %d idle sandboxes: %.1f KiB per sandbox (target < "
      "1024)\n",
      before, after, idle, static_cast<double>(after - before) / idle);
  for (const sb::JobId& id : ids) {
    if (!(*service)->Kill(id) || !(*service)->Destroy(id))
      std::fprintf(stderr, "teardown of %s failed\n", id.c_str());
  }
  service->reset();
  // The launchers leave their emptied volume mounted for the next one.
  if (auto drained = sb::UnmountIdleVolumes(state + "/images"); !drained)
    std::fprintf(stderr, "drain: %s\n", drained.error().ToString().c_str());
  // And their warm nft tables (what `ralph-sandbox drain` removes).
  if (auto tables = sb::RemoveWarmNetworkTables(); !tables)
    std::fprintf(stderr, "drain: %s\n", tables.error().ToString().c_str());
  std::string cleanup = "rm -rf " + work;
  return std::system(cleanup.c_str()) == 0 ? 0 : 1;
}
