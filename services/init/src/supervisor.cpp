#include "services/init/supervisor.h"

#include <sys/wait.h>

#include <algorithm>
#include <csignal>

#include <fmt/format.h>

namespace ralph::init {

std::string_view ServiceStateName(ServiceState state) {
  switch (state) {
    case ServiceState::kWaiting: return "waiting";
    case ServiceState::kRunning: return "running";
    case ServiceState::kBackoff: return "backoff";
    case ServiceState::kSucceeded: return "succeeded";
    case ServiceState::kFailed: return "failed";
    case ServiceState::kStopped: return "stopped";
  }
  return "unknown";
}

std::string RenderServiceStatus(const ServiceStatus& status) {
  return fmt::format(
      "state={}\npid={}\nstarts={}\nconsecutive_failures={}\nlast_exit={}\nrequired={}\n",
      ServiceStateName(status.state), status.pid, status.starts, status.consecutive_failures,
      status.last_exit, status.required ? "yes" : "no");
}

Result<Supervisor> Supervisor::Create(std::vector<ServiceSpec> services,
                                      ProcessLauncherInterface* launcher,
                                      StatusCallback on_change) {
  std::vector<std::string> order = TRY(StartOrder(services));
  return Supervisor(std::move(services), std::move(order), launcher, std::move(on_change));
}

Supervisor::Supervisor(std::vector<ServiceSpec> services, std::vector<std::string> order,
                       ProcessLauncherInterface* launcher, StatusCallback on_change)
    : services_(std::move(services)),
      order_(std::move(order)),
      launcher_(launcher),
      on_change_(std::move(on_change)) {
  for (const auto& spec : services_) status_[spec.name].required = spec.required;
}

void Supervisor::Changed(const std::string& name) {
  if (on_change_) on_change_(name, status_[name]);
}

bool Supervisor::DependenciesStarted(const ServiceSpec& spec) const {
  return std::all_of(spec.after.begin(), spec.after.end(), [&](const std::string& dep) {
    const ServiceStatus& status = status_.at(dep);
    const auto* dep_spec = &*std::find_if(services_.begin(), services_.end(),
                                          [&](const ServiceSpec& s) { return s.name == dep; });
    if (dep_spec->oneshot) {
      return status.state == ServiceState::kSucceeded || status.state == ServiceState::kFailed;
    }
    return status.starts > 0;
  });
}

void Supervisor::Start(const ServiceSpec& spec, Clock::time_point now) {
  ServiceStatus& status = status_[spec.name];
  ++status.starts;
  auto pid = launcher_->Launch(spec);
  if (!pid) {
    // Treated like a crash at once: the same backoff applies.
    status.pid = 0;
    status.last_exit = pid.error().message();
    ++status.consecutive_failures;
    if (spec.oneshot) {
      status.state = ServiceState::kFailed;
    } else {
      status.state = ServiceState::kBackoff;
      restart_at_[spec.name] = now + RestartDelay(status.consecutive_failures);
    }
    Changed(spec.name);
    return;
  }
  status.pid = *pid;
  status.state = ServiceState::kRunning;
  started_at_[spec.name] = now;
  Changed(spec.name);
}

std::optional<Supervisor::Clock::time_point> Supervisor::Tick(Clock::time_point now) {
  std::optional<Clock::time_point> next;
  if (stopping_) return next;
  // Repeat until nothing more starts: a oneshot that fails to launch
  // finishes at once and may unblock the services after it.
  for (bool started = true; started;) {
    started = false;
    for (const auto& name : order_) {
      const ServiceSpec& spec = *std::find_if(services_.begin(), services_.end(),
                                              [&](const ServiceSpec& s) { return s.name == name; });
      ServiceStatus& status = status_[name];
      if (status.state == ServiceState::kWaiting && DependenciesStarted(spec)) {
        Start(spec, now);
        started = true;
      } else if (status.state == ServiceState::kBackoff) {
        if (restart_at_[name] <= now) {
          Start(spec, now);
          started = true;
        }
      }
    }
  }
  for (const auto& [name, at] : restart_at_) {
    if (status_[name].state == ServiceState::kBackoff && (!next || at < *next)) next = at;
  }
  // A restarted service counts as healthy again once it has stayed up.
  for (auto& [name, status] : status_) {
    if (status.state != ServiceState::kRunning || status.consecutive_failures == 0) continue;
    Clock::time_point stable_at = started_at_[name] + kStableRunTime;
    if (stable_at <= now) {
      status.consecutive_failures = 0;
      Changed(name);
    } else if (!next || stable_at < *next) {
      next = stable_at;
    }
  }
  return next;
}

bool Supervisor::OnExit(pid_t pid, int wait_status, Clock::time_point now) {
  for (const auto& spec : services_) {
    ServiceStatus& status = status_[spec.name];
    if (status.pid != pid || status.state != ServiceState::kRunning) continue;
    status.pid = 0;
    bool success = WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
    status.last_exit = WIFEXITED(wait_status)
                           ? fmt::format("exit status {}", WEXITSTATUS(wait_status))
                           : fmt::format("signal {}", WTERMSIG(wait_status));
    if (stopping_) {
      status.state = ServiceState::kStopped;
    } else if (spec.oneshot) {
      status.state = success ? ServiceState::kSucceeded : ServiceState::kFailed;
    } else {
      ++status.consecutive_failures;
      status.state = ServiceState::kBackoff;
      restart_at_[spec.name] = now + RestartDelay(status.consecutive_failures);
    }
    Changed(spec.name);
    return true;
  }
  return false;
}

void Supervisor::BeginStop() {
  stopping_ = true;
  for (auto& [name, status] : status_) {
    if (status.state == ServiceState::kRunning) {
      launcher_->Signal(status.pid, SIGTERM);
    } else if (status.state != ServiceState::kSucceeded && status.state != ServiceState::kFailed) {
      status.state = ServiceState::kStopped;
      Changed(name);
    }
  }
}

void Supervisor::KillRemaining() {
  for (auto& [name, status] : status_) {
    if (status.state == ServiceState::kRunning) launcher_->Signal(status.pid, SIGKILL);
  }
}

bool Supervisor::AnyRunning() const {
  return std::any_of(status_.begin(), status_.end(), [](const auto& entry) {
    return entry.second.state == ServiceState::kRunning;
  });
}

}  // namespace ralph::init
