// A network service whose process is killed (SIGKILL: no destructor runs,
// as when a `ralph-sandbox run` launcher is killed mid-job) must not block
// later jobs nor leave its nft tables behind. With table ownership
// (NFT_TABLE_F_OWNER) the kernel removes them with the killed process;
// without it (TableOwnership::kNever, what a pre-5.12 kernel gives) the next
// service's start sweeps them once their links are gone too. Runs in a
// private netns that plays the appliance host (test_topology.h).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "private_netns_environment.h"
#include "sandbox/net/network_service.h"
#include "test_topology.h"
#include "tests/support/run_program.h"

namespace ralph::sandbox {
namespace {

using testing::Eventually;
using testing::JobContext;
using testing::JobProcess;
using testing::RecordingSink;

const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new testing::PrivateNetnsEnvironment);

NetworkServiceConfig Config(TableOwnership ownership,
                            ServiceTables tables = ServiceTables::kPerService,
                            uint32_t prepared_tables = 0) {
  NetworkServiceConfig config;
  config.upstream_dns = "198.51.100.53";
  config.table_ownership = ownership;
  config.service_tables = tables;
  config.prepared_tables = prepared_tables;
  return config;
}

NetworkSpec Spec() {
  NetworkSpec spec;
  spec.allow = {{.cidr = "203.0.113.10", .port_min = 80}};
  spec.allowed_domains = {"*.allowed.test"};
  return spec;
}

// The names of the inet tables of this netns.
std::set<std::string> Tables() {
  std::set<std::string> names;
  std::istringstream lines(testing::ShellOutput("nft list tables"));
  std::string table, family, name;
  while (lines >> table >> family >> name) names.insert(name);
  return names;
}

// A forked process that, on Go(), starts `services` network services with
// one job each, reports "ready <tables owned 0|1> <veth>..." and waits to be
// killed. Forked while the test has no threads.
class ServiceProcess {
 public:
  ServiceProcess(TableOwnership ownership, int services,
                 ServiceTables tables = ServiceTables::kPerService, uint32_t prepared_tables = 0) {
    int report[2], go[2];
    if (::pipe2(report, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::close(report[0]);
      ::close(go[1]);
      ::_exit(Body(Config(ownership, tables, prepared_tables), services, report[1], go[0]));
    }
    ::close(report[1]);
    ::close(go[0]);
    report_ = report[0];
    go_ = go[1];
  }
  ~ServiceProcess() {
    Kill();
    ::close(report_);
    ::close(go_);
  }

  // Lets it start its services; returns its report.
  std::string Go() {
    if (::write(go_, "g", 1) != 1) return "go failed";
    std::string line;
    for (;;) {
      pollfd p{report_, POLLIN, 0};
      if (::poll(&p, 1, 120'000) != 1) return line;
      char c;
      if (::read(report_, &c, 1) != 1 || c == '\n') return line;
      line += c;
    }
  }

  // SIGKILL, and reaped: every fd it held is closed once waitpid returns.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  static int Body(const NetworkServiceConfig& config, int services, int report_fd, int go_fd) {
    auto say = [&](const std::string& line) {
      std::string text = line + "\n";
      return ::write(report_fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    };
    std::vector<JobProcess> jobs;
    for (int i = 0; i < services; ++i) {
      jobs.push_back(JobProcess::Fork([](const JobContext&) { return std::string(); }));
    }
    char go;
    if (::read(go_fd, &go, 1) != 1) return 1;
    std::vector<std::unique_ptr<NetworkService>> started;
    std::vector<std::unique_ptr<JobNetwork>> networks;
    RecordingSink sink;
    std::string ready = "ready";
    for (int i = 0; i < services; ++i) {
      auto service = NetworkService::Start(config);
      if (!service) return say("error " + service.error().ToString()) ? 1 : 2;
      auto network =
          (*service)->CreateJob(fmt::format("doomed-{}", i), jobs[i].pid(), Spec(), &sink);
      if (!network) return say("error " + network.error().ToString()) ? 1 : 2;
      if (i == 0) ready += fmt::format(" {}", (*service)->tables_owned() ? 1 : 0);
      ready += " " + (*network)->host_interface();
      started.push_back(std::move(*service));
      networks.push_back(std::move(*network));
    }
    // Tables committed ahead (prepared_tables) are made by then too.
    for (auto& service : started) service->WaitForPreparedTables();
    if (!say(ready)) return 1;
    for (;;) ::pause();  // until SIGKILL
  }

  pid_t pid_ = -1;
  int report_ = -1;
  int go_ = -1;
};

class CollectingLog {
 public:
  std::function<void(LogLevel, const std::string&)> Callback() {
    return [this](LogLevel, const std::string& message) {
      std::lock_guard lock(mutex_);
      lines_.push_back(message);
    };
  }
  bool Has(const std::string& line) const {
    std::lock_guard lock(mutex_);
    return std::find(lines_.begin(), lines_.end(), line) != lines_.end();
  }
  std::string Dump() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& line : lines_) out += line + "\n";
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

bool LinkGone(const std::string& name) {
  return ::if_nametoindex(name.c_str()) == 0;
}

TEST(NetCrashTest, KilledServiceTakesItsOwnedTablesAlongAndTheNextJobStarts) {
  ServiceProcess doomed(TableOwnership::kIfSupported, 1);
  std::string ready = doomed.Go();
  // This kernel (6.18) has table ownership; the service says so.
  ASSERT_EQ(ready, "ready 1 rja0");
  EXPECT_EQ(Tables(), (std::set<std::string>{"ralph_rja0", "ralph_service_rja"}));

  doomed.Kill();
  // Gone with the process's netlink socket, without anybody's help.
  EXPECT_TRUE(Eventually([] { return Tables().empty(); }))
      << testing::ShellOutput("nft list tables");

  // A new service in the same netns gets the same instance and, once the
  // dead job's veth is gone with its netns, the same slot and table name.
  ASSERT_TRUE(Eventually([] { return LinkGone("rja0"); }));
  CollectingLog log;
  NetworkServiceConfig config = Config(TableOwnership::kIfSupported);
  config.log = log.Callback();
  auto service = NetworkService::Start(config);
  ASSERT_TRUE(service) << service.error().ToString();
  EXPECT_EQ((*service)->instance(), 0u);
  EXPECT_TRUE((*service)->tables_owned());
  EXPECT_TRUE(
      log.Has("nft tables are owned by the network service's netlink socket "
              "(NFT_TABLE_F_OWNER): the kernel removes them when this process exits"))
      << log.Dump();
  JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
  RecordingSink sink;
  auto network = (*service)->CreateJob("after-crash", job.pid(), Spec(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_EQ((*network)->host_interface(), "rja0");
  EXPECT_EQ(Tables(), (std::set<std::string>{"ralph_rja0", "ralph_service_rja"}));
  EXPECT_TRUE((*network)->Teardown());
  service->reset();
  EXPECT_EQ(Tables(), std::set<std::string>{});
}

TEST(NetCrashTest, KilledServicesUnownedTablesAreSweptByTheNextStart) {
  // Forked first, while this process has no threads.
  ServiceProcess doomed(TableOwnership::kNever, 2);

  // A live service with an unowned table: instance a, not to be swept.
  auto live = NetworkService::Start(Config(TableOwnership::kNever));
  ASSERT_TRUE(live) << live.error().ToString();
  EXPECT_FALSE((*live)->tables_owned());
  JobProcess live_job = JobProcess::Fork([](const JobContext&) { return std::string(); });
  RecordingSink sink;
  auto live_network = (*live)->CreateJob("live", live_job.pid(), Spec(), &sink);
  ASSERT_TRUE(live_network) << live_network.error().ToString();

  // Instances b and c, unowned tables, then killed.
  ASSERT_EQ(doomed.Go(), "ready 0 rjb0 rjc0");
  doomed.Kill();
  // Their veths go with their jobs' netns; the tables stay (the defect this
  // guards against: the old sweep found tables only through their links).
  ASSERT_TRUE(Eventually([] { return LinkGone("rjb0") && LinkGone("rjc0"); }));
  EXPECT_EQ(Tables(),
            (std::set<std::string>{"ralph_rja0", "ralph_service_rja", "ralph_rjb0",
                                   "ralph_service_rjb", "ralph_rjc0", "ralph_service_rjc"}));

  // The next service takes instance b (the first free one) and removes the
  // unowned tables of b (its own) and of c (nobody holds it), not a's.
  CollectingLog log;
  NetworkServiceConfig config = Config(TableOwnership::kIfSupported);
  config.log = log.Callback();
  auto next = NetworkService::Start(config);
  ASSERT_TRUE(next) << next.error().ToString();
  EXPECT_EQ((*next)->instance(), 1u);
  for (auto [table, instance] :
       {std::pair{"ralph_rjb0", 'b'}, std::pair{"ralph_service_rjb", 'b'},
        std::pair{"ralph_rjc0", 'c'}, std::pair{"ralph_service_rjc", 'c'}}) {
    EXPECT_TRUE(log.Has(fmt::format("removed stale table inet {} (instance {} of \"rj\" is gone)",
                                    table, instance)))
        << table << "\n"
        << log.Dump();
  }
  JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string(); });
  auto network = (*next)->CreateJob("after-crash", job.pid(), Spec(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_EQ((*network)->host_interface(), "rjb0");
  EXPECT_EQ(Tables(), (std::set<std::string>{"ralph_rja0", "ralph_service_rja", "ralph_rjb0",
                                             "ralph_service_rjb"}));

  EXPECT_TRUE((*network)->Teardown());
  EXPECT_TRUE((*live_network)->Teardown());
  next->reset();
  live->reset();
  EXPECT_EQ(Tables(), std::set<std::string>{});
}

// A killed service of the launcher's mode (ServiceTables::kWarm): the next
// start takes the warm tables over as they are and keeps the job's table
// for the slot's next job, which replaces it (its spec names domains, whose
// DNS sets hold the dead job's answers: never taken); only drain removes
// them.
TEST(NetCrashTest, KilledWarmServicesJobTableIsReplacedAndTheWarmTablesAreKept) {
  ServiceProcess doomed(TableOwnership::kNever, 1, ServiceTables::kWarm);
  std::string ready = doomed.Go();
  ASSERT_EQ(ready, "ready 0 rja0");
  const std::set<std::string> warm = {"ralph-warm-rj", "ralph-warm-ct-rj"};
  std::set<std::string> with_job = warm;
  with_job.insert("ralph_rja0");
  EXPECT_EQ(Tables(), with_job);
  // "table inet <name> { # handle <n>": the same handles mean the same tables.
  const std::string kHandles =
      "nft -a list table inet ralph-warm-rj | head -1; nft -a list table inet ralph-warm-ct-rj | "
      "head -1";
  std::string warm_handles = testing::ShellOutput(kHandles);
  doomed.Kill();
  EXPECT_TRUE(Eventually([] { return LinkGone("rja0"); }));
  EXPECT_EQ(Tables(), with_job);

  const std::string kJobHandle = "nft -a list table inet ralph_rja0 | head -1";
  std::string job_handle = testing::ShellOutput(kJobHandle);
  auto next = NetworkService::Start(Config(TableOwnership::kIfSupported, ServiceTables::kWarm));
  ASSERT_TRUE(next) << next.error().ToString();
  EXPECT_EQ(Tables(), with_job);
  // The same tables (handles), not new ones.
  EXPECT_EQ(testing::ShellOutput(kHandles), warm_handles);
  JobProcess job = JobProcess::Fork([](const JobContext&) { return std::string("ran"); });
  RecordingSink sink;
  auto network = (*next)->CreateJob("after-crash", job.pid(), Spec(), &sink);
  ASSERT_TRUE(network) << network.error().ToString();
  EXPECT_NE(testing::ShellOutput(kJobHandle), job_handle);
  EXPECT_EQ(job.Go({(*network)->resolver_address(), ""}), "ran");
  EXPECT_TRUE((*network)->Teardown());
  next->reset();
  EXPECT_EQ(Tables(), with_job);

  auto removed = NetworkService::RemoveWarmTables("rj");
  ASSERT_TRUE(removed) << removed.error().ToString();
  EXPECT_EQ(Tables(), std::set<std::string>{});
  EXPECT_TRUE(LinkGone("rja0"));
}

// Tables committed ahead for the next jobs (prepared_tables) are job tables
// of the service's instance like any other: owned, they go with the killed
// process; unowned, the next start of the instance sweeps them.
TEST(NetCrashTest, KilledServicesPreparedTablesGoWithItOrWithTheNextStart) {
  // Forked first, while this process has no threads.
  ServiceProcess owned(TableOwnership::kIfSupported, 1, ServiceTables::kPerService, 2);
  ServiceProcess unowned(TableOwnership::kNever, 1, ServiceTables::kPerService, 2);
  const std::set<std::string> prepared = {"ralph_rja0", "ralph_rja1", "ralph_rja2",
                                          "ralph_service_rja"};
  ASSERT_EQ(owned.Go(), "ready 1 rja0");
  EXPECT_EQ(Tables(), prepared);
  owned.Kill();
  EXPECT_TRUE(Eventually([] { return Tables().empty(); }))
      << testing::ShellOutput("nft list tables");
  ASSERT_TRUE(Eventually([] { return LinkGone("rja0"); }));

  ASSERT_EQ(unowned.Go(), "ready 0 rja0");
  EXPECT_EQ(Tables(), prepared);
  unowned.Kill();
  ASSERT_TRUE(Eventually([] { return LinkGone("rja0"); }));
  EXPECT_EQ(Tables(), prepared);
  auto next = NetworkService::Start(Config(TableOwnership::kIfSupported));
  ASSERT_TRUE(next) << next.error().ToString();
  EXPECT_EQ(Tables(), std::set<std::string>{"ralph_service_rja"});
  next->reset();
  EXPECT_EQ(Tables(), std::set<std::string>{});
}

#ifdef RALPH_SANDBOX_CLI
// The defect as it was reported: `ralph-sandbox run` with networking,
// SIGKILLed mid-job; the next networked run must succeed and no table may
// stay.
TEST(NetCrashTest, KilledLauncherBlocksNoLaterRun) {
  std::string work = fmt::format("/tmp/ralph-net-crash-test-{}", ::getpid());
  std::string base = work + "/base";
  ASSERT_EQ(testing::Shell(fmt::format("mkdir -p {0}/usr {0}/etc {1}/state && for l in bin lib "
                                       "lib64 sbin; do ln -s usr/$l {0}/$l; done",
                                       base, work)),
            0);
  auto argv_for = [&](const char* program) {
    return std::vector<std::string>{
        RALPH_SANDBOX_CLI, "run",           "--rootfs", base,    "--ro-bind", "/usr:/usr",
        "--state-dir",     work + "/state", "--",       program, "60"};
  };
  std::vector<std::string> args = argv_for("/bin/sleep");
  pid_t launcher = ::ralph::testing::StartProgram(args);
  ASSERT_GE(launcher, 0);
  bool networked = Eventually([] { return Tables().count("ralph_rja0") == 1; });
  ::kill(launcher, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(launcher, &status, 0), launcher);
  ASSERT_TRUE(networked) << "the launcher never networked its job";
  // The warm table and the job's table stay, by design (ServiceTables::kWarm);
  // its job dies with it (the parent-death signal), and the job's link with
  // the job's netns.
  const std::set<std::string> warm = {"ralph-warm-rj", "ralph_rja0"};
  EXPECT_EQ(Tables(), warm);
  EXPECT_TRUE(Eventually([] { return LinkGone("rja0"); }));
  const std::string kHandle = "nft -a list table inet ralph_rja0 | head -1";
  std::string handle = testing::ShellOutput(kHandle);

  // The next run's job gets the same slot and, having read that table back
  // as its own plan, takes it as it is (the same handle).
  std::string second = fmt::format(
      "{} run --rootfs {} --ro-bind /usr:/usr --state-dir {}/state "
      "-- /bin/echo second-run",
      RALPH_SANDBOX_CLI, base, work);
  EXPECT_EQ(testing::ShellOutput(second + " 2>&1 | grep -v 'warning'"), "second-run\n");
  EXPECT_EQ(Tables(), warm);
  EXPECT_EQ(testing::ShellOutput(kHandle), handle);
  // `drain` leaves no table, and no job link is left either.
  EXPECT_EQ(testing::Shell(fmt::format("{} drain --state-dir {}/state", RALPH_SANDBOX_CLI, work)),
            0);
  EXPECT_EQ(Tables(), std::set<std::string>{});
  EXPECT_TRUE(Eventually([] { return LinkGone("rja0") && LinkGone("rjb0"); }));
  // What the killed launcher leaves outside the network (not this test's
  // subject; see sandbox/README.md): its job's upper volume mounted on a
  // loop device, and its cgroups.
  testing::Shell(
      fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r umount -l", work));
  testing::Shell(
      fmt::format("losetup -j {0}/state/images/volumes/{1}-1.img -O NAME -n | xargs -r "
                  "losetup -d 2>/dev/null; find /sys/fs/cgroup -depth -type d -name "
                  "'ralph-sandbox-{1}*' -exec rmdir {{}} ';' 2>/dev/null",
                  work, launcher));
  testing::Shell("rm -rf " + work);
}
#endif

}  // namespace
}  // namespace ralph::sandbox
