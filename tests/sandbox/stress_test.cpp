// Stress: 1,000 create/run/destroy cycles and 100 sandboxes alive at once,
// then zero leaked kernel objects: mounts, loop devices, cgroups, fds,
// processes of the sandbox uid range (their namespaces die with them).
#include <dirent.h>
#include <net/if.h>
#include <sched.h>
#include <sys/stat.h>

#include <cstring>
#include <set>
#include <thread>

#include "sandbox/net/network_service.h"
#include "sandbox_fixture.h"

namespace ralph::sandbox::testing {
namespace {

struct KernelObjects {
  size_t mounts = 0;      // mounts below `work` (other tests mount elsewhere meanwhile)
  size_t loops = 0;       // loop devices backed by a file under `work`
  size_t fds = 0;         // our open fds
  size_t processes = 0;   // processes owned by the sandbox uid range
  size_t namespaces = 0;  // distinct net namespaces of those processes
  size_t cgroups = 0;     // cgroup directories named after the test
  bool operator==(const KernelObjects&) const = default;
};

size_t CountDir(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (!dir) return 0;
  size_t count = 0;
  while (dirent* e = ::readdir(dir)) count += e->d_name[0] != '.';
  ::closedir(dir);
  return count;
}

KernelObjects Count(const std::string& work, const std::string& cgroup_name, const IdMapping& ids) {
  KernelObjects objects;
  std::string mountinfo = SandboxFixture::ReadHostFile("/proc/self/mountinfo");
  for (size_t pos = mountinfo.find(" " + work + "/"); pos != std::string::npos;
       pos = mountinfo.find(" " + work + "/", pos + 1))
    ++objects.mounts;
  DIR* block = ::opendir("/sys/block");
  while (block) {
    dirent* e = ::readdir(block);
    if (!e) break;
    if (std::string(e->d_name).rfind("loop", 0) != 0) continue;
    std::string backing =
        SandboxFixture::ReadHostFile(fmt::format("/sys/block/{}/loop/backing_file", e->d_name));
    if (backing.rfind(work, 0) == 0) ++objects.loops;
  }
  if (block) ::closedir(block);
  objects.fds = CountDir("/proc/self/fd");
  std::set<ino_t> netns;
  DIR* proc = ::opendir("/proc");
  while (proc) {
    dirent* e = ::readdir(proc);
    if (!e) break;
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    struct stat st;
    if (::stat(fmt::format("/proc/{}", e->d_name).c_str(), &st) != 0 || st.st_uid < ids.host_base ||
        st.st_uid >= ids.host_base + ids.count)
      continue;
    ++objects.processes;
    if (::stat(fmt::format("/proc/{}/ns/net", e->d_name).c_str(), &st) == 0)
      netns.insert(st.st_ino);
  }
  if (proc) ::closedir(proc);
  objects.namespaces = netns.size();
  for (const char* controller : {"memory", "pids", "cpu", "cpuacct", "blkio"}) {
    std::string command = fmt::format(
        "find /sys/fs/cgroup/{} -type d -name '{}*' 2>/dev/null | wc -l", controller, cgroup_name);
    FILE* pipe = ::popen(command.c_str(), "r");
    unsigned long n = 0;
    if (pipe && std::fscanf(pipe, "%lu", &n) == 1) objects.cgroups += n;
    if (pipe) ::pclose(pipe);
  }
  return objects;
}

std::string Show(const KernelObjects& o) {
  return fmt::format("mounts={} loops={} fds={} processes={} netns={} cgroups={}", o.mounts,
                     o.loops, o.fds, o.processes, o.namespaces, o.cgroups);
}

class StressTest : public SandboxFixture {};

TEST_F(StressTest, ThousandCyclesAndHundredAliveLeaveNothing) {
  std::string cgroup_name = fmt::format("ralph-test-{}", ::getpid());
  // Our fds without any service (an idle one holds its spawner's eventfd).
  service_.reset();
  size_t fds_without_service = Count(work_, cgroup_name, ids_).fds;
  CreateService();
  // The baseline is taken with the service already up (its cgroup parents exist).
  KernelObjects before = Count(work_, cgroup_name, ids_);
  SandboxSpec spec = Spec({"/bin/true"});
  for (int i = 0; i < 1000; ++i) {
    auto id = service_->CreateJob(spec);
    ASSERT_TRUE(id) << "cycle " << i << ": " << id.error().ToString();
    ASSERT_TRUE(service_->Run(*id)) << "cycle " << i;
    auto result = service_->Wait(*id);
    ASSERT_TRUE(result) << "cycle " << i;
    ASSERT_EQ(result->exit_code, 0) << "cycle " << i << ": " << Describe(*result);
    ASSERT_TRUE(service_->Destroy(*id)) << "cycle " << i;
  }
  KernelObjects after_cycles = Count(work_, cgroup_name, ids_);
  // The pool keeps at most one idle volume mounted between jobs.
  EXPECT_LE(after_cycles.mounts, before.mounts + 1) << Show(before) << " -> " << Show(after_cycles);
  // Each pooled volume holds its image open: the fd its flock is on.
  EXPECT_EQ(after_cycles.fds, before.fds + (after_cycles.mounts - before.mounts))
      << Show(before) << " -> " << Show(after_cycles);
  EXPECT_EQ(after_cycles.processes, 0u) << Show(after_cycles);
  EXPECT_EQ(after_cycles.cgroups, before.cgroups) << Show(before) << " -> " << Show(after_cycles);

  spec = Spec({"/bin/sleep", "600"});
  std::vector<JobId> ids;
  for (int i = 0; i < 100; ++i) {
    auto id = service_->CreateJob(spec);
    ASSERT_TRUE(id) << "sandbox " << i << ": " << id.error().ToString();
    ASSERT_TRUE(service_->Run(*id)) << "sandbox " << i;
    ids.push_back(*id);
  }
  KernelObjects alive = Count(work_, cgroup_name, ids_);
  EXPECT_EQ(alive.processes, 100u) << Show(alive);
  EXPECT_EQ(alive.namespaces, 100u) << Show(alive);
  EXPECT_GE(alive.loops, 100u) << Show(alive);
  EXPECT_GE(alive.mounts, 100u) << Show(alive);
  for (const JobId& id : ids) {
    auto killed = service_->Kill(id);
    ASSERT_TRUE(killed) << killed.error().ToString();
    auto result = service_->Wait(id);
    ASSERT_TRUE(result);
    EXPECT_EQ(result->termination, Termination::kKilled);
    ASSERT_TRUE(service_->Destroy(id));
  }
  service_.reset();  // drains the volume pool and removes the cgroup parents
  // Loop devices detach asynchronously after their last unmount.
  KernelObjects after;
  for (int i = 0; i < 200; ++i) {
    after = Count(work_, cgroup_name, ids_);
    if (after.loops == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(after.mounts, before.mounts) << Show(before) << " -> " << Show(after);
  EXPECT_EQ(after.loops, 0u) << Show(after);
  EXPECT_EQ(after.fds, fds_without_service) << Show(before) << " -> " << Show(after);
  EXPECT_EQ(after.processes, 0u) << Show(after);
  EXPECT_EQ(after.namespaces, 0u) << Show(after);
  EXPECT_EQ(after.cgroups, 0u) << Show(after);
}

}  // namespace
}  // namespace ralph::sandbox::testing

namespace ralph::sandbox::testing {
namespace {

size_t CountLinks() {
  size_t count = 0;
  if (struct if_nameindex* names = ::if_nameindex()) {
    for (struct if_nameindex* n = names; n->if_index != 0; ++n) ++count;
    ::if_freenameindex(names);
  }
  return count;
}

size_t CountNftTables() {
  FILE* pipe = ::popen("nft list tables 2>/dev/null | wc -l", "r");
  unsigned long n = 0;
  if (pipe && std::fscanf(pipe, "%lu", &n) != 1) n = 0;
  if (pipe) ::pclose(pipe);
  return n;
}

// With sandbox/net linked: the same, networked, counting veths and nft
// tables. The test first moves itself into a private network namespace that
// plays the appliance host, so the machine's own network is never touched.
TEST_F(StressTest, NetworkedCyclesLeaveNoVethOrTable) {
  ASSERT_EQ(::access("/usr/sbin/nft", X_OK), 0) << "nft missing (package nftables)";
  ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << std::strerror(errno);
  NetworkServiceConfig config;
  config.upstream_dns = "192.0.2.53";  // TEST-NET-1: never asked here
  // As ralphd's service: each destroyed job's veth and table are removed
  // by the network service's reaper thread shortly after Destroy returns.
  config.link_removal = LinkRemoval::kBackground;
  auto provider = MakeNetworkProvider(config, nullptr);
  ASSERT_NE(provider, nullptr) << "this build has no sandbox/net";
  size_t tables_before = CountNftTables();
  // A service of its own, with the real network provider.
  ServiceOptions options;
  options.state_dir = work_ + "/state-net";
  options.name = fmt::format("n{}", ::getpid());
  options.ids = ids_;
  auto cgroups = DetectCgroups(fmt::format("ralph-test-net-{}", ::getpid()));
  ASSERT_TRUE(cgroups);
  auto service = SandboxService::Create(options, std::move(*cgroups), std::move(provider));
  ASSERT_TRUE(service) << service.error().ToString();
  SandboxSpec spec = Spec({"/bin/sh", "-c", "cat /etc/resolv.conf"});
  spec.network.enabled = true;
  auto run = [&](const SandboxSpec& s) -> Result<JobResult> {
    JobId id = TRY((*service)->CreateJob(s));
    TRY((*service)->Run(id));
    JobResult result = TRY((*service)->Wait(id));
    TRY((*service)->Destroy(id));
    return result;
  };
  // The first job starts the service's network service (its own table).
  auto first = run(spec);
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_NE(first->stdout_data.find("nameserver "), std::string::npos) << Describe(*first);
  // Counts once the background removals are done: they must finish within
  // seconds of Destroy.
  auto settled = [](size_t links, size_t tables) {
    size_t links_now = CountLinks(), tables_now = CountNftTables();
    for (int i = 0; i < 500 && (links_now != links || tables_now != tables); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      links_now = CountLinks();
      tables_now = CountNftTables();
    }
    return std::make_pair(links_now, tables_now);
  };
  // lo, and the network service's own table.
  size_t links = 1, tables = tables_before + 1;
  EXPECT_EQ(settled(links, tables), std::make_pair(links, tables))
      << "(links, tables) 5 s after the first job was destroyed";
  for (int i = 0; i < 100; ++i) {
    auto result = run(spec);
    ASSERT_TRUE(result) << "cycle " << i << ": " << result.error().ToString();
    ASSERT_EQ(result->exit_code, 0) << Describe(*result);
  }
  EXPECT_EQ(settled(links, tables), std::make_pair(links, tables))
      << "(links, tables) 5 s after the last of 100 jobs was destroyed";
  spec.argv = {"/bin/sleep", "600"};
  std::vector<JobId> ids;
  for (int i = 0; i < 20; ++i) {
    auto id = (*service)->CreateJob(spec);
    ASSERT_TRUE(id) << id.error().ToString();
    ASSERT_TRUE((*service)->Run(*id));
    ids.push_back(*id);
  }
  EXPECT_EQ(CountLinks(), links + 20);  // one host-side veth each
  EXPECT_GE(CountNftTables(), tables + 20);
  for (const JobId& id : ids) {
    ASSERT_TRUE((*service)->Kill(id));
    ASSERT_TRUE((*service)->Wait(id));
    ASSERT_TRUE((*service)->Destroy(id));
  }
  service->reset();  // waits for the network service's reaper
  EXPECT_EQ(CountLinks(), links);
  // The network service's own table went with the service that owned it.
  EXPECT_EQ(CountNftTables(), tables_before);
}

// A launcher's teardown (kWithNamespace) leaves each reaped job's veth to
// the kernel: back-to-back jobs still get working networks (a slot whose old
// link is still being removed is skipped), the job tables go at once, and
// the links follow with their namespaces.
TEST_F(StressTest, LauncherTeardownLeavesVethsToTheKernel) {
  auto provider = MakeDefaultNetworkProvider(nullptr);
  ASSERT_NE(provider, nullptr) << "this build has no sandbox/net";
  ASSERT_EQ(::access("/usr/sbin/nft", X_OK), 0) << "nft missing (package nftables)";
  ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << std::strerror(errno);
  NetworkServiceConfig config;
  config.upstream_dns = "192.0.2.53";  // TEST-NET-1: never asked here
  // As `ralph-sandbox run` configures it: the service table goes with the
  // last job's table, and a job that may reach nothing registers neither
  // conntrack nor NAT.
  config.release_when_idle = true;
  config.expect_egress = false;
  size_t tables_before = CountNftTables();
  ServiceOptions options;
  options.state_dir = work_ + "/state-launcher";
  options.name = fmt::format("l{}", ::getpid());
  options.ids = ids_;
  options.network_teardown = NetworkTeardown::kWithNamespace;
  auto cgroups = DetectCgroups(fmt::format("ralph-test-launcher-{}", ::getpid()));
  ASSERT_TRUE(cgroups);
  auto service =
      SandboxService::Create(options, std::move(*cgroups), MakeNetworkProvider(config, nullptr));
  ASSERT_TRUE(service) << service.error().ToString();
  SandboxSpec spec = Spec({"/bin/sh", "-c", "cat /etc/resolv.conf"});
  spec.network.enabled = true;
  auto run = [&]() -> Result<JobResult> {
    JobId id = TRY((*service)->CreateJob(spec));
    TRY((*service)->Run(id));
    JobResult result = TRY((*service)->Wait(id));
    TRY((*service)->Destroy(id));
    return result;
  };
  for (int i = 0; i < 31; ++i) {
    auto result = run();  // the first starts the network service
    ASSERT_TRUE(result) << "cycle " << i << ": " << result.error().ToString();
    ASSERT_EQ(result->exit_code, 0) << Describe(*result);
    EXPECT_NE(result->stdout_data.find("nameserver "), std::string::npos) << Describe(*result);
    // Neither the job's table nor the service's is left between jobs.
    EXPECT_EQ(CountNftTables(), tables_before) << "cycle " << i;
  }
  service->reset();
  // Only lo is ours in this netns; the jobs' links go as the kernel
  // releases their namespaces.
  size_t links = CountLinks();
  for (int i = 0; i < 1000 && links > 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    links = CountLinks();
  }
  EXPECT_EQ(links, 1u) << "host-side veths left 10 s after their jobs";
}

}  // namespace
}  // namespace ralph::sandbox::testing
