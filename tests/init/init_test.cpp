#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/wait.h>

#include <csignal>
#include <map>
#include <set>

#include "boot/boot_config.h"
#include "services/health/checks.h"
#include "services/init/mounts.h"
#include "services/init/recovery_banner.h"
#include "services/init/service_config.h"
#include "services/init/supervisor.h"

namespace ralph::init {

// The kernel command line and the early-boot record (boot/boot_config.h).
using boot::BootMode;
using boot::BootModeName;
using boot::ParseKernelCmdline;
using boot::ParseRecord;
using boot::RenderRecord;
using boot::RootPartLabel;

namespace {

using namespace std::chrono_literals;

TEST(ParseKernelCmdline, ReadsRootSlotWatchdog) {
  auto config = ParseKernelCmdline(
      "root=PARTLABEL=SYSTEM_B ralph.slot=b ro panic=5 console=ttyS0 ralph.watchdog=10\n");
  ASSERT_TRUE(config) << config.error().ToString();
  EXPECT_EQ(config->root_partlabel, "SYSTEM_B");
  EXPECT_EQ(config->slot, "b");
  EXPECT_EQ(config->watchdog_seconds, 10);
  EXPECT_EQ(config->init, "/sbin/ralph-init");
}

// A slot's UKI names no slot (one bundle installs into either slot).
TEST(ParseKernelCmdline, SlotAgnosticCommandLine) {
  auto config = ParseKernelCmdline("ro panic=5 console=ttyS0 ralph.watchdog=10\n");
  ASSERT_TRUE(config) << config.error().ToString();
  EXPECT_FALSE(config->slot.has_value());
  EXPECT_FALSE(config->root_partlabel.has_value());
  EXPECT_EQ(config->mode(), BootMode::kSlot);
  EXPECT_EQ(*RootPartLabel(*config, "a"), "SYSTEM_A");
  EXPECT_EQ(*RootPartLabel(*config, "b"), "SYSTEM_B");
  EXPECT_EQ(*RootPartLabel(*config, "recovery"), "RECOVERY");
  auto bad = RootPartLabel(*config, "c");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("slot 'c' is not a, b or recovery"), std::string::npos);
}

// An explicit root= must be the detected slot's: never another slot's root.
TEST(RootPartLabel, ExplicitRootMustMatchTheSlot) {
  auto legacy = ParseKernelCmdline("root=PARTLABEL=SYSTEM_A ralph.slot=a");
  ASSERT_TRUE(legacy);
  EXPECT_EQ(*RootPartLabel(*legacy, "a"), "SYSTEM_A");
  auto other = RootPartLabel(*legacy, "b");
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().message().find("root=PARTLABEL=SYSTEM_A is not slot B's root SYSTEM_B"),
            std::string::npos)
      << other.error().message();
  auto recovery = ParseKernelCmdline("root=PARTLABEL=RECOVERY ralph.slot=recovery");
  ASSERT_TRUE(recovery);
  EXPECT_EQ(*RootPartLabel(*recovery, "recovery"), "RECOVERY");
}

TEST(ParseKernelCmdline, RecoveryIsItsOwnMode) {
  auto recovery = ParseKernelCmdline("root=PARTLABEL=RECOVERY ralph.slot=recovery panic=5");
  ASSERT_TRUE(recovery) << recovery.error().ToString();
  EXPECT_EQ(recovery->mode(), BootMode::kRecovery);
  EXPECT_EQ(BootModeName(recovery->mode()), "recovery");
  auto slot = ParseKernelCmdline("root=PARTLABEL=SYSTEM_A ralph.slot=a");
  ASSERT_TRUE(slot);
  EXPECT_EQ(slot->mode(), BootMode::kSlot);
  EXPECT_EQ(BootModeName(slot->mode()), "slot");
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) out += line + "\n";
  return out;
}

TEST(RecoveryBanner, NamesTheCommittedAndTheBadSlots) {
  boot::SlotState state;
  state.committed = boot::Slot::kA;
  state.a.status = boot::SlotStatus::kGood;
  state.a.version = {0, 1, 0};
  state.b.status = boot::SlotStatus::kBad;
  state.b.version = {0, 2, 0};
  std::string banner = Joined(RecoveryBanner(state, ""));
  EXPECT_NE(banner.find("RalphOS RECOVERY mode"), std::string::npos) << banner;
  EXPECT_NE(banner.find("no slot is tried, counted, committed or marked bad"), std::string::npos);
  EXPECT_NE(banner.find("committed slot: A\n"), std::string::npos) << banner;
  EXPECT_NE(banner.find("slot A: good, version 0.1.0 (committed)\n"), std::string::npos) << banner;
  EXPECT_NE(banner.find("slot B: bad, version 0.2.0\n"), std::string::npos) << banner;
  EXPECT_NE(banner.find("bad slots: B\n"), std::string::npos) << banner;
  EXPECT_NE(banner.find("reboot to return to slot A"), std::string::npos) << banner;
}

TEST(RecoveryBanner, FirstBootThatFailedAndUnreadableState) {
  boot::SlotState state;
  state.a.status = boot::SlotStatus::kBad;
  std::string banner = Joined(RecoveryBanner(state, ""));
  EXPECT_NE(banner.find("committed slot: none (no slot has passed its health gate)"),
            std::string::npos)
      << banner;
  EXPECT_NE(banner.find("slot B: empty\n"), std::string::npos) << banner;
  EXPECT_NE(banner.find("bad slots: A\n"), std::string::npos) << banner;
  EXPECT_NE(banner.find("ralphctl boot mark-active A|B"), std::string::npos) << banner;

  std::string unknown = Joined(RecoveryBanner(std::nullopt, "RalphSlotState: bad CRC"));
  EXPECT_NE(unknown.find("boot state: unknown (RalphSlotState: bad CRC)"), std::string::npos)
      << unknown;
  EXPECT_EQ(unknown.find("bad slots"), std::string::npos) << unknown;
}

TEST(ParseKernelCmdline, BadInputIsNamed) {
  auto no_partlabel = ParseKernelCmdline("root=/dev/vda2 ralph.slot=a");
  ASSERT_FALSE(no_partlabel);
  EXPECT_NE(no_partlabel.error().message().find("root=/dev/vda2 is not root=PARTLABEL"),
            std::string::npos);
  auto empty_root = ParseKernelCmdline("root=PARTLABEL= ralph.slot=a");
  ASSERT_FALSE(empty_root);
  EXPECT_NE(empty_root.error().message().find("root=PARTLABEL= names no partition"),
            std::string::npos);
  auto bad_slot = ParseKernelCmdline("root=PARTLABEL=SYSTEM_A ralph.slot=c");
  ASSERT_FALSE(bad_slot);
  EXPECT_NE(bad_slot.error().message().find("ralph.slot='c'"), std::string::npos);
  auto bad_watchdog = ParseKernelCmdline("root=PARTLABEL=SYSTEM_A ralph.slot=a ralph.watchdog=x");
  ASSERT_FALSE(bad_watchdog);
  EXPECT_NE(bad_watchdog.error().message().find("ralph.watchdog=x"), std::string::npos);
}

TEST(Record, RoundTrips) {
  std::map<std::string, std::string> values = {{"slot", "a"}, {"var", "clean"}};
  EXPECT_EQ(ParseRecord(RenderRecord(values)), values);
}

TEST(ParseServicesConf, ParsesEveryKey) {
  auto services = ParseServicesConf(
      "# comment\n\n"
      "agent exec=/usr/libexec/agent required=no\n"
      "health exec=/usr/bin/health args=-v,--x after=agent type=oneshot\n");
  ASSERT_TRUE(services) << services.error().ToString();
  ASSERT_EQ(services->size(), 2u);
  EXPECT_EQ((*services)[0], (ServiceSpec{"agent", "/usr/libexec/agent", {}, {}, false, false}));
  EXPECT_EQ((*services)[1],
            (ServiceSpec{"health", "/usr/bin/health", {"-v", "--x"}, {"agent"}, true, true}));
}

TEST(ParseServicesConf, BadLinesAreNamed) {
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {"a exec=bin/a\n", "line 1: exec=bin/a is not an absolute path"},
      {"a exec=/a\na exec=/b\n", "line 2: service a is defined twice"},
      {"a exec=/a colour=red\n", "line 1: unknown key 'colour'"},
      {"a exec=/a type=forking\n", "type=forking is not simple or oneshot"},
      {"a\n", "service a has no exec="},
      {"a exec=/a after=b\n", "ordered after unknown service b"},
      {"a exec=/a after=b\nb exec=/b after=a\n", "cycle: a, b"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseServicesConf(c.text);
    ASSERT_FALSE(parsed) << c.text;
    EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(parsed.error().message().find(c.message), std::string::npos)
        << parsed.error().message();
  }
}

TEST(StartOrder, RespectsAfterKeepsFileOrder) {
  std::vector<ServiceSpec> services = {
      {"c", "/c", {}, {"b"}}, {"a", "/a", {}, {}}, {"b", "/b", {}, {"a"}}, {"d", "/d", {}, {}}};
  auto order = StartOrder(services);
  ASSERT_TRUE(order);
  EXPECT_EQ(*order, (std::vector<std::string>{"a", "b", "d", "c"}));
}

TEST(RestartDelay, DoublesUpToThirtySeconds) {
  EXPECT_EQ(RestartDelay(1), 1000ms);
  EXPECT_EQ(RestartDelay(2), 2000ms);
  EXPECT_EQ(RestartDelay(3), 4000ms);
  EXPECT_EQ(RestartDelay(6), 30000ms);
  EXPECT_EQ(RestartDelay(20), 30000ms);
}

class FakeLauncher : public ProcessLauncherInterface {
 public:
  Result<pid_t> Launch(const ServiceSpec& spec) override {
    launched.push_back(spec.name);
    if (fail_exec.count(spec.name)) {
      return Error::FromErrno("exec " + spec.exec, ENOEXEC);
    }
    return next_pid++;
  }
  void Signal(pid_t pid, int signal) override { signals.push_back({pid, signal}); }

  std::vector<std::string> launched;
  std::vector<std::pair<pid_t, int>> signals;
  std::set<std::string> fail_exec;
  pid_t next_pid = 100;
};

int Exited(int code) {
  return code << 8;
}  // a waitpid() status for exit(code)

TEST(Supervisor, StartsInOrderAndOneshotAfterItsDependencies) {
  FakeLauncher launcher;
  auto supervisor = Supervisor::Create(
      {{"daemon", "/d", {}, {}}, {"health", "/h", {}, {"daemon"}, true}}, &launcher, nullptr);
  ASSERT_TRUE(supervisor);
  auto t0 = Supervisor::Clock::time_point{};
  supervisor->Tick(t0);
  EXPECT_EQ(launcher.launched, (std::vector<std::string>{"daemon", "health"}));
  EXPECT_TRUE(supervisor->OnExit(101, Exited(0), t0 + 1s));
  EXPECT_EQ(supervisor->statuses().at("health").state, ServiceState::kSucceeded);
  EXPECT_FALSE(supervisor->OnExit(999, Exited(0), t0 + 1s));  // an orphan
}

TEST(Supervisor, RestartsWithBackoffAndResetsAfterAStableRun) {
  FakeLauncher launcher;
  auto supervisor = Supervisor::Create({{"daemon", "/d", {}, {}}}, &launcher, nullptr);
  ASSERT_TRUE(supervisor);
  auto t = Supervisor::Clock::time_point{};
  supervisor->Tick(t);
  ASSERT_TRUE(supervisor->OnExit(100, Exited(1), t + 1s));
  const ServiceStatus& status = supervisor->statuses().at("daemon");
  EXPECT_EQ(status.state, ServiceState::kBackoff);
  EXPECT_EQ(status.last_exit, "exit status 1");
  auto next = supervisor->Tick(t + 1500ms);
  EXPECT_EQ(launcher.launched.size(), 1u);  // 1 s backoff not over yet
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, t + 2s);
  supervisor->Tick(t + 2s);
  EXPECT_EQ(launcher.launched.size(), 2u);
  ASSERT_TRUE(supervisor->OnExit(101, SIGSEGV, t + 3s));  // killed by a signal
  EXPECT_EQ(status.last_exit, "signal 11");
  EXPECT_EQ(status.consecutive_failures, 2);
  EXPECT_EQ(*supervisor->Tick(t + 3s), t + 5s);  // 2 s now
  supervisor->Tick(t + 5s);
  EXPECT_EQ(*supervisor->Tick(t + 6s), t + 5s + kStableRunTime);  // wakes when stable
  supervisor->Tick(t + 5s + kStableRunTime);
  EXPECT_EQ(status.consecutive_failures, 0);  // it stayed up: healthy again
  ASSERT_TRUE(supervisor->OnExit(102, Exited(1), t + 20s));
  EXPECT_EQ(status.consecutive_failures, 1);
}

TEST(Supervisor, ExecFailureIsBackedOffAndDoesNotBlockDependents) {
  FakeLauncher launcher;
  launcher.fail_exec = {"broken"};
  auto supervisor = Supervisor::Create(
      {{"broken", "/b", {}, {}}, {"health", "/h", {}, {"broken"}, true}}, &launcher, nullptr);
  ASSERT_TRUE(supervisor);
  supervisor->Tick(Supervisor::Clock::time_point{});
  EXPECT_EQ(launcher.launched, (std::vector<std::string>{"broken", "health"}));
  const ServiceStatus& broken = supervisor->statuses().at("broken");
  EXPECT_EQ(broken.state, ServiceState::kBackoff);
  EXPECT_NE(broken.last_exit.find("exec /b"), std::string::npos) << broken.last_exit;
}

TEST(Supervisor, StopSignalsRunningServicesAndStopsRestarting) {
  FakeLauncher launcher;
  std::vector<std::string> changes;
  auto supervisor =
      Supervisor::Create({{"a", "/a", {}, {}}, {"b", "/b", {}, {}}}, &launcher,
                         [&](const std::string& name, const ServiceStatus& s) {
                           changes.push_back(name + ":" + std::string(ServiceStateName(s.state)));
                         });
  ASSERT_TRUE(supervisor);
  auto t = Supervisor::Clock::time_point{};
  supervisor->Tick(t);
  supervisor->BeginStop();
  EXPECT_EQ(launcher.signals, (std::vector<std::pair<pid_t, int>>{{100, SIGTERM}, {101, SIGTERM}}));
  EXPECT_TRUE(supervisor->AnyRunning());
  supervisor->OnExit(100, Exited(0), t);
  supervisor->KillRemaining();
  EXPECT_EQ(launcher.signals.back(), (std::pair<pid_t, int>{101, SIGKILL}));
  supervisor->OnExit(101, SIGKILL, t);
  EXPECT_FALSE(supervisor->AnyRunning());
  supervisor->Tick(t + 60s);
  EXPECT_EQ(launcher.launched.size(), 2u);
  EXPECT_EQ(changes.back(), "b:stopped");
}

TEST(Mounts, Pid1MountsAreHardened) {
  for (const auto& spec : Pid1Mounts()) {
    EXPECT_TRUE(spec.flags & MS_NOSUID) << spec.target;
    if (spec.target != "/dev") {
      EXPECT_TRUE(spec.flags & MS_NODEV) << spec.target;
    }
    if (spec.target == "/proc" || spec.target == "/sys" || spec.target == "/dev/shm" ||
        spec.target == "/sys/fs/cgroup" || spec.target == "/sys/firmware/efi/efivars" ||
        spec.target == "/dev") {
      EXPECT_TRUE(spec.flags & MS_NOEXEC) << spec.target;
    }
  }
}

TEST(Mounts, ParseMountPointsUnescapes) {
  const char* info =
      "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
      "30 22 0:25 / /a\\040b rw - tmpfs tmpfs rw\n";
  EXPECT_EQ(ParseMountPoints(info), (std::vector<std::string>{"/proc", "/a b"}));
}

TEST(Mounts, ClassifyVarHead) {
  std::vector<uint8_t> head(4096, 0);
  EXPECT_EQ(ClassifyVarHead(head), VarContent::kBlank);
  head[1080] = 0x53;
  head[1081] = 0xEF;
  EXPECT_EQ(ClassifyVarHead(head), VarContent::kExt4);
  head[1080] = 0;
  head[7] = 0x42;
  EXPECT_EQ(ClassifyVarHead(head), VarContent::kUnknown);
}

TEST(Mounts, InterpretFsckStatus) {
  EXPECT_EQ(InterpretFsckStatus(0), FsckOutcome::kClean);
  EXPECT_EQ(InterpretFsckStatus(1), FsckOutcome::kRepaired);
  EXPECT_EQ(InterpretFsckStatus(2), FsckOutcome::kRepaired);
  EXPECT_EQ(InterpretFsckStatus(4), FsckOutcome::kFailed);
  EXPECT_EQ(InterpretFsckStatus(8), FsckOutcome::kFailed);
}

}  // namespace
}  // namespace ralph::init

namespace ralph::health {
namespace {

constexpr const char* kConf =
    "agent exec=/a required=no\n"
    "daemon exec=/d\n"
    "health exec=/h after=daemon type=oneshot\n";

TEST(RequiredServicesRunning, PassesWhenEveryRequiredDaemonRuns) {
  auto ok = RequiredServicesRunning(
      kConf, {{"daemon", "state=running\nstarts=1\n"}, {"health", "state=running\n"}});
  EXPECT_TRUE(ok) << ok.error().ToString();
}

TEST(RequiredServicesRunning, NamesTheServiceThatIsDown) {
  auto down = RequiredServicesRunning(
      kConf, {{"daemon", "state=backoff\nstarts=3\nlast_exit=exec /d: Exec format error\n"}});
  ASSERT_FALSE(down);
  EXPECT_EQ(down.error().code(), ErrorCode::kInvalidState);
  EXPECT_NE(down.error().message().find(
                "service daemon is not running: backoff after 3 start(s), last exit: exec /d"),
            std::string::npos)
      << down.error().message();
  auto looping = RequiredServicesRunning(
      kConf, {{"daemon", "state=running\nconsecutive_failures=2\nlast_exit=signal 11\n"}});
  ASSERT_FALSE(looping);
  EXPECT_NE(
      looping.error().message().find(
          "service daemon is not running stably: 2 failure(s) in a row, last exit: signal 11"),
      std::string::npos)
      << looping.error().message();
  auto never = RequiredServicesRunning(kConf, {});
  ASSERT_FALSE(never);
  EXPECT_NE(never.error().message().find("daemon has not been started"), std::string::npos);
}

TEST(Decide, CommitsOrMarksBadOnlyWhenNeeded) {
  EXPECT_EQ(Decide(SlotCommitment::kNeedsCommit, ChecksOutcome::kAllPassed), GateDecision::kCommit);
  EXPECT_EQ(Decide(SlotCommitment::kNeedsCommit, ChecksOutcome::kSomeFailed),
            GateDecision::kMarkBadAndReboot);
  EXPECT_EQ(Decide(SlotCommitment::kCommitted, ChecksOutcome::kSomeFailed),
            GateDecision::kReportOnly);
  EXPECT_EQ(Decide(SlotCommitment::kCommitted, ChecksOutcome::kAllPassed),
            GateDecision::kReportOnly);
}

// Every check can be told apart in the console and runs: a name, unique,
// and a function.
TEST(HealthChecks, AreNamedUniquelyAndRunnable) {
  std::vector<HealthCheck> checks = HealthChecks();
  ASSERT_FALSE(checks.empty());
  std::set<std::string> names;
  for (const auto& check : checks) {
    EXPECT_FALSE(check.name.empty());
    EXPECT_TRUE(names.insert(check.name).second) << "two checks named " << check.name;
    EXPECT_TRUE(check.run) << check.name;
  }
}

}  // namespace
}  // namespace ralph::health
