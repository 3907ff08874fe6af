// The service supervisor inside ralph-init: decides which service to start,
// when to restart a failed one (with backoff), and what to stop at shutdown.
// Processes are started and signalled through ProcessLauncherInterface so the
// decisions are unit-tested with a fake; ralph-init's loop feeds it child
// exits and the clock.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "platform/result.h"
#include "services/init/service_config.h"

namespace ralph::init {

class ProcessLauncherInterface {
 public:
  virtual ~ProcessLauncherInterface() = default;
  // Starts the service's process; returns its pid.
  virtual Result<pid_t> Launch(const ServiceSpec& spec) = 0;
  virtual void Signal(pid_t pid, int signal) = 0;
};

enum class ServiceState { kWaiting, kRunning, kBackoff, kSucceeded, kFailed, kStopped };
std::string_view ServiceStateName(ServiceState state);

struct ServiceStatus {
  ServiceState state = ServiceState::kWaiting;
  pid_t pid = 0;
  int starts = 0;                // times launched
  int consecutive_failures = 0;  // since the last stable run
  std::string last_exit;         // "exit status 1", "signal 11", "exec: ..."
  bool required = true;
};

// The /run/ralph/services/<name> record the health gate reads.
std::string RenderServiceStatus(const ServiceStatus& status);

class Supervisor {
 public:
  using Clock = std::chrono::steady_clock;
  using StatusCallback = std::function<void(const std::string& name, const ServiceStatus&)>;

  // kInvalidArgument when the services cannot be ordered.
  static Result<Supervisor> Create(std::vector<ServiceSpec> services,
                                   ProcessLauncherInterface* launcher, StatusCallback on_change);

  // Starts every service that is due, and clears the failure count of a
  // service that has now run for kStableRunTime. Returns when the next
  // delayed start or stability point is due, or nullopt when nothing is
  // pending.
  std::optional<Clock::time_point> Tick(Clock::time_point now);
  // A child exited with a waitpid() status. False when the pid is no service.
  bool OnExit(pid_t pid, int wait_status, Clock::time_point now);
  // Shutdown: no more starts or restarts; SIGTERM every running service.
  void BeginStop();
  // SIGKILL whatever still runs after BeginStop.
  void KillRemaining();
  bool AnyRunning() const;

  const std::map<std::string, ServiceStatus>& statuses() const { return status_; }

 private:
  Supervisor(std::vector<ServiceSpec> services, std::vector<std::string> order,
             ProcessLauncherInterface* launcher, StatusCallback on_change);
  bool DependenciesStarted(const ServiceSpec& spec) const;
  void Start(const ServiceSpec& spec, Clock::time_point now);
  void Changed(const std::string& name);

  std::vector<ServiceSpec> services_;
  std::vector<std::string> order_;
  ProcessLauncherInterface* launcher_;
  StatusCallback on_change_;
  std::map<std::string, ServiceStatus> status_;
  std::map<std::string, Clock::time_point> started_at_;
  std::map<std::string, Clock::time_point> restart_at_;
  bool stopping_ = false;
};

}  // namespace ralph::init
