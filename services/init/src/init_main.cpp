// ralph-init: PID 1 of a RalphOS slot.
//
// Mounts the API file systems with hardened flags, pets the watchdog that
// early boot armed, starts the services of /etc/ralph/services.conf in
// dependency order with restart backoff, reaps every zombie, and shuts down
// in order on SIGTERM/SIGINT (reboot) or SIGUSR2 (power off). It never exits:
// a fatal error is logged and held, and the watchdog, no longer petted,
// resets the machine (on a trial boot the firmware then falls back).
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "boot/boot_config.h"
#include "drivers/watchdog.h"
#include "platform/file_io.h"
#include "platform/log.h"
#include "platform/process.h"
#include "platform/unique_fd.h"
#include "services/init/mounts.h"
#include "services/init/supervisor.h"

// Inside Init only: a setup failure is held, never returned from PID 1.
#define TRY_OR_HOLD(expr, what)                                       \
  do {                                                                \
    auto _result = (expr);                                            \
    if (!_result) Hold(std::move(_result).error().WithContext(what)); \
  } while (0)

namespace ralph::init {

// The kernel command line and the early-boot record (boot/boot_config.h).
using boot::kEarlyBootRecordPath;
using boot::ParseKernelCmdline;
using boot::ParseRecord;
using boot::SlotDisplayName;

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kStopGrace = std::chrono::seconds(5);

// Pets the watchdog early boot armed, at a third of its timeout.
class WatchdogPetter {
 public:
  void Start(int seconds) {
    if (seconds <= 0) return;
    if (auto started = watchdog_.Start(std::chrono::seconds(seconds)); !started) {
      LogError("watchdog: {}: hangs will not reset the machine", started.error().ToString());
      return;
    }
    running_ = true;
    period_ =
        std::chrono::milliseconds(std::max<int64_t>(1, watchdog_.timeout().count()) * 1000 / 3);
    next_ = Clock::now() + period_;
    LogInfo("watchdog: timeout {} s, petted every {} ms", watchdog_.timeout().count(),
            period_.count());
  }
  void PetIfDue(Clock::time_point now) {
    if (!running_ || now < next_) return;
    if (auto pet = watchdog_.Pet(); !pet) LogError("watchdog: {}", pet.error().ToString());
    next_ = now + period_;
  }
  std::optional<Clock::time_point> next() const {
    if (!running_) return std::nullopt;
    return next_;
  }

 private:
  Watchdog watchdog_;
  bool running_ = false;
  std::chrono::milliseconds period_{5000};
  Clock::time_point next_{};
};

// Starts each service in its own session with only PATH in its environment,
// stdin on /dev/null and its output on the console.
class SpawnLauncher : public ProcessLauncherInterface {
 public:
  Result<pid_t> Launch(const ServiceSpec& spec) override {
    std::vector<std::string> argv = {spec.exec};
    argv.insert(argv.end(), spec.args.begin(), spec.args.end());
    // A failed exec is StartProgram's error (glibc reaps that child).
    return TRY_CTX(StartProgram({.argv = std::move(argv),
                                 .env = {"PATH=/usr/bin:/sbin:/bin"},
                                 .environment = ProgramEnvironment::kOnly,
                                 .output = ProgramOutput::kFile,
                                 .output_file = "/dev/console"}),
                   fmt::format("starting {}", spec.name));
  }
  void Signal(pid_t pid, int signal) override {
    // ESRCH: it has exited and is about to be reaped.
    if (::kill(pid, signal) != 0 && errno != ESRCH) {
      LogWarning("{}", Error::FromErrno(fmt::format("kill {} {}", pid, signal), errno).ToString());
    }
  }
};

// The kernel leaves `lo` down; services reach each other on 127.0.0.1
// (the health gate checks ralphd's API there).
Result<void> BringUpLoopback() {
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("socket for lo", errno);
  ifreq request{};
  std::memcpy(request.ifr_name, "lo", 3);
  if (::ioctl(fd.get(), SIOCGIFFLAGS, &request) != 0) {
    return Error::FromErrno("reading the flags of lo", errno);
  }
  request.ifr_flags |= IFF_UP;
  if (::ioctl(fd.get(), SIOCSIFFLAGS, &request) != 0) {
    return Error::FromErrno("bringing lo up", errno);
  }
  return {};
}

enum class Shutdown { kNone, kReboot, kPowerOff };

class Init {
 public:
  void Main() {
    TRY_OR_HOLD(SetUp(), "setting up");
    auto services = LoadServices();
    if (!services) Hold(services.error().WithContext("loading services"));
    SpawnLauncher launcher;
    auto supervisor = Supervisor::Create(
        std::move(*services), &launcher,
        [](const std::string& name, const ServiceStatus& s) { OnServiceChange(name, s); });
    if (!supervisor) Hold(supervisor.error().WithContext("ordering services"));
    Loop(*supervisor);
  }

 private:
  Result<void> SetUp() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGPWR}) {
      sigaddset(&mask, sig);
    }
    if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0)
      return Error::FromErrno("sigprocmask", errno);
    signal_fd_.reset(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!signal_fd_) return Error::FromErrno("signalfd", errno);

    std::vector<Error> optional_failures;
    TRY_CTX(ApplyMounts(Pid1Mounts(), &optional_failures), "mounting API file systems");
    for (const auto& failure : optional_failures) LogWarning("{}", failure.ToString());

    auto record_text = ReadWholeFile(kEarlyBootRecordPath);
    std::map<std::string, std::string> record;
    if (record_text) record = ParseRecord(*record_text);
    slot_ = record.count("slot") ? record["slot"] : "";
    int watchdog_seconds = 20;
    if (auto cmdline = ReadWholeFile("/proc/cmdline")) {
      if (auto config = ParseKernelCmdline(*cmdline)) {
        watchdog_seconds = config->watchdog_seconds;
        if (slot_.empty()) slot_ = config->slot.value_or("");
      }
    }
    if (slot_ == "recovery") {
      // The same services as a slot (the test agent in test images, so a
      // rescue can be driven); the health gate sees the mode and judges
      // nothing.
      LogInfo("RalphOS RECOVERY up as PID 1 (RECOVERY mode: a rescue boot, not a slot boot)");
    } else {
      LogInfo("RalphOS slot {} up as PID 1", SlotDisplayName(slot_));
    }
    watchdog_.Start(watchdog_seconds);
    if (auto lo = BringUpLoopback(); !lo) LogError("{}", lo.error().ToString());

    for (const char* dir :
         {"/run/ralph", "/run/ralph/services", "/var/lib", "/var/lib/ralph", "/var/log"}) {
      if (::mkdir(dir, 0755) != 0 && errno != EEXIST) {
        LogWarning("{}", Error::FromErrno(fmt::format("mkdir {}", dir), errno).ToString());
      }
    }
    return {};
  }

  Result<std::vector<ServiceSpec>> LoadServices() {
    std::string text = TRY(ReadWholeFile(kServicesConfPath));
    return ParseServicesConf(text);
  }

  static void OnServiceChange(const std::string& name, const ServiceStatus& status) {
    switch (status.state) {
      case ServiceState::kRunning: LogInfo("service {} started (pid {})", name, status.pid); break;
      case ServiceState::kBackoff:
        LogError("service {} failed ({}); restarting in {} ms", name, status.last_exit,
                 RestartDelay(status.consecutive_failures).count());
        break;
      case ServiceState::kSucceeded: LogInfo("service {} finished", name); break;
      case ServiceState::kFailed: LogError("service {} failed ({})", name, status.last_exit); break;
      case ServiceState::kStopped: LogInfo("service {} stopped", name); break;
      case ServiceState::kWaiting: break;
    }
    // /run: a tmpfs, so atomic for readers (ralphctl, the health gate) and
    // never synced.
    std::string path = "/run/ralph/services/" + name;
    if (auto written =
            WriteFileAtomically(path, RenderServiceStatus(status), 0644, Durability::kNone);
        !written) {
      LogWarning("service {}: status not published: {}", name, written.error().ToString());
    }
  }

  void Reap(Supervisor* supervisor) {
    for (;;) {
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) return;
      if (supervisor) supervisor->OnExit(pid, status, Clock::now());
    }
  }

  // Drains the signalfd; returns a shutdown request if one came.
  Shutdown HandleSignals(Supervisor* supervisor) {
    Shutdown request = Shutdown::kNone;
    signalfd_siginfo info{};
    while (::read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
      switch (info.ssi_signo) {
        case SIGCHLD: Reap(supervisor); break;
        case SIGTERM:
        case SIGINT: request = Shutdown::kReboot; break;
        case SIGUSR2:
        case SIGPWR: request = Shutdown::kPowerOff; break;
        default: break;
      }
    }
    Reap(supervisor);  // SIGCHLDs coalesce
    return request;
  }

  int PollTimeoutMs(std::optional<Clock::time_point> next_start) {
    auto now = Clock::now();
    std::optional<Clock::time_point> wake = watchdog_.next();
    if (next_start && (!wake || *next_start < *wake)) wake = next_start;
    if (!wake) return 60000;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*wake - now).count();
    return static_cast<int>(std::clamp<int64_t>(ms, 0, 60000));
  }

  void Loop(Supervisor& supervisor) {
    for (;;) {
      auto next_start = supervisor.Tick(Clock::now());
      Wait(PollTimeoutMs(next_start));
      Shutdown request = HandleSignals(&supervisor);
      watchdog_.PetIfDue(Clock::now());
      if (request != Shutdown::kNone) ShutDown(supervisor, request);
    }
  }

  [[noreturn]] void ShutDown(Supervisor& supervisor, Shutdown request) {
    LogInfo("{}: stopping services", request == Shutdown::kReboot ? "reboot" : "power off");
    supervisor.BeginStop();
    auto deadline = Clock::now() + kStopGrace;
    while (supervisor.AnyRunning() && Clock::now() < deadline) {
      Wait(200);
      HandleSignals(&supervisor);
      watchdog_.PetIfDue(Clock::now());
    }
    if (supervisor.AnyRunning()) {
      LogWarning("services still running after {} s: killing them", kStopGrace.count());
      supervisor.KillRemaining();
      ::usleep(200 * 1000);
      HandleSignals(&supervisor);
    }
    // Stray processes outside the services; ESRCH: there are none.
    if (::kill(-1, SIGKILL) != 0 && errno != ESRCH) {
      LogWarning("{}", Error::FromErrno("killing the remaining processes", errno).ToString());
    }
    ::sync();
    if (::umount2("/var", 0) != 0) {
      LogWarning("{}", Error::FromErrno("unmounting /var", errno).ToString());
      if (::mount(nullptr, "/var", nullptr, MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
        LogError("{}: unwritten data may be lost",
                 Error::FromErrno("remounting /var read-only", errno).ToString());
      }
    }
    ::sync();
    LogInfo("{} now", request == Shutdown::kReboot ? "rebooting" : "powering off");
    ::reboot(request == Shutdown::kReboot ? RB_AUTOBOOT : RB_POWER_OFF);
    Hold(Error::FromErrno("reboot", errno));
  }

  // PID 1 must never exit (the kernel would panic). A fatal error is
  // reported and held; zombies are still reaped, the watchdog is no longer
  // petted, so the machine resets.
  [[noreturn]] void Hold(const Error& error) {
    LogError("fatal: {}: holding; the watchdog will reset the machine", error.ToString());
    for (;;) {
      if (signal_fd_) {
        Wait(-1);
        HandleSignals(nullptr);
      } else {
        ::pause();
        Reap(nullptr);
      }
    }
  }

  // Waits up to `timeout_ms` (-1: forever) for a signal on the signalfd.
  void Wait(int timeout_ms) {
    pollfd pfd{signal_fd_.get(), POLLIN, 0};
    if (::poll(&pfd, 1, timeout_ms) < 0 && errno != EINTR) {
      // Not fatal: the loop goes on, paced by the next timeout.
      LogWarning("{}", Error::FromErrno("poll signalfd", errno).ToString());
    }
  }

  UniqueFd signal_fd_;
  WatchdogPetter watchdog_;
  std::string slot_;
};

}  // namespace
}  // namespace ralph::init

int main() {
  ralph::LogInit("ralph-init", ralph::LogSink::kKmsg);
  if (::getpid() != 1) {
    ralph::LogError("ralph-init must run as PID 1 (it is pid {})", ::getpid());
    return 1;
  }
  ralph::init::Init init;
  init.Main();
}
