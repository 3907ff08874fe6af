#include "services/health/checks.h"

#include <fcntl.h>
#include <unistd.h>

#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "boot/boot_config.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "services/health/slot_gate.h"
#include "services/init/service_config.h"

namespace ralph::health {
namespace {

Result<void> ServicesUp(const HealthEnvironment& env) {
  std::string conf = TRY(ReadWholeFile(env.services_conf));
  auto services = TRY(init::ParseServicesConf(conf));
  auto deadline = env.clock->Now() + env.settle_deadline;
  std::optional<std::chrono::steady_clock::time_point> up_since;
  for (;;) {
    std::map<std::string, std::string> records;
    for (const auto& spec : services) {
      if (auto text = ReadWholeFile(env.services_status_dir + "/" + spec.name))
        records[spec.name] = *text;
    }
    auto snapshot = RequiredServicesRunning(conf, records);
    auto now = env.clock->Now();
    if (snapshot) {
      if (!up_since) up_since = now;
      if (now - *up_since >= env.stable_for) return {};
    } else {
      up_since.reset();
      if (now >= deadline) return snapshot;
    }
    env.clock->SleepFor(std::chrono::milliseconds(250));
  }
}

Result<void> VarWritable(const HealthEnvironment& env) {
  auto record_text = ReadWholeFile(env.early_boot_record);
  if (record_text) {
    auto record = boot::ParseRecord(*record_text);
    if (record["var"] == "tmpfs") {
      return Error::Make(ErrorCode::kInvalidState,
                         "VAR is not mounted (early boot fell back to a tmpfs /var)");
    }
  }
  std::string path = fmt::format("{}/health-probe.{}", env.var_probe_dir, ::getpid());
  std::string content = fmt::format("probe {}\n", std::random_device{}());
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return Error::FromErrno(fmt::format("create {}", path), errno);
    if (::write(fd.get(), content.data(), content.size()) != static_cast<ssize_t>(content.size())) {
      return Error::FromErrno(fmt::format("write {}", path), errno);
    }
    if (::fsync(fd.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", path), errno);
  }
  std::string back = TRY(ReadWholeFile(path));
  ::unlink(path.c_str());
  if (back != content) {
    return Error::Make(ErrorCode::kCorrupt, fmt::format("{} read back different bytes", path));
  }
  return {};
}

Result<void> StateRecordReadable(const HealthEnvironment& env) {
  auto record_text = TRY(ReadWholeFile(env.early_boot_record));
  auto record = boot::ParseRecord(record_text);
  return ReadSlotView(*env.system, record["slot"]).transform([](const SlotView&) {});
}

// The last `max` bytes of a program's output, for an error message.
std::string Tail(const std::string& text, size_t max = 400) {
  std::string tail = text.size() > max ? "..." + text.substr(text.size() - max) : text;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  return tail;
}

// `ralphctl ARGS` (a --json command) to success, its output parsed as a
// JSON object.
Result<nlohmann::json> RalphctlJson(const HealthEnvironment& env,
                                    const std::vector<std::string>& args) {
  std::string command = fmt::format("ralphctl {}", fmt::join(args, " "));
  RalphctlOutput run = TRY(env.control_plane->Ralphctl(args, env.ralphctl_bound));
  if (run.exit_status != 0) {
    return Error::Make(
        ErrorCode::kInvalidState,
        fmt::format("{} failed (exit status {}): {}", command, run.exit_status, Tail(run.output)));
  }
  nlohmann::json json = nlohmann::json::parse(run.output, nullptr, false);
  if (!json.is_object()) {
    return Error::Make(ErrorCode::kCorrupt, fmt::format("{} answered something that is not a JSON "
                                                        "object: {}",
                                                        command, Tail(run.output)));
  }
  return json;
}

// Waits for ralphd to answer `status` on its socket: up to the deadline, or
// until ralph-init reports it down after ralphd_max_starts starts.
Result<void> RalphdAnswers(const HealthEnvironment& env) {
  auto deadline = env.clock->Now() + env.ralphd_ready_deadline;
  for (;;) {
    auto status = RalphctlJson(env, {"status", "--json"});
    if (status) return {};
    if (auto text = ReadWholeFile(env.services_status_dir + "/" + env.ralphd_service)) {
      auto record = boot::ParseRecord(*text);
      int starts = std::atoi(record["starts"].c_str());
      if (record["state"] != "running" && starts >= env.ralphd_max_starts) {
        return Error::Make(ErrorCode::kInvalidState,
                           fmt::format("ralphd does not answer on its socket: ralph-init reports "
                                       "service {} {} after {} start(s), last exit: {} ({})",
                                       env.ralphd_service, record["state"], starts,
                                       record["last_exit"], status.error().message()));
      }
    }
    if (env.clock->Now() >= deadline) {
      return Error::Make(
          ErrorCode::kTimeout,
          fmt::format(
              "ralphd did not answer on its socket within {} s: {}",
              std::chrono::duration_cast<std::chrono::seconds>(env.ralphd_ready_deadline).count(),
              status.error().message()));
    }
    env.clock->SleepFor(std::chrono::milliseconds(500));
  }
}

// The API presents the device key of the identity on VAR over TLS 1.3 and
// refuses a request without a client certificate (401).
Result<void> ApiAnswers(const HealthEnvironment& env) {
  int status = TRY_CTX(env.control_plane->ProbeApi(env.ralphd_api_address, env.ralphd_identity_dir),
                       fmt::format("ralphd's API at {}", env.ralphd_api_address));
  if (status != 401) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("ralphd's API at {} answered a request without a client "
                                   "certificate with HTTP {} (expected 401)",
                                   env.ralphd_api_address, status));
  }
  return {};
}

// The active policy, as ralphd parsed it, has the profile jobs default to.
Result<void> PolicyLoads(const HealthEnvironment& env) {
  nlohmann::json policy = TRY(RalphctlJson(env, {"policy", "get", "--json"}));
  std::string version = policy.contains("version") ? policy["version"].dump() : "?";
  if (!policy.value("active", false)) {
    return Error::Make(
        ErrorCode::kInvalidState,
        fmt::format("ralphctl policy get answered version {}, not the active one", version));
  }
  const nlohmann::json& profiles = policy["profiles"];
  if (!profiles.is_array() || profiles.empty()) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("the active policy (version {}) does not parse in ralphd: "
                                   "it has no profiles",
                                   version));
  }
  for (const auto& profile : profiles) {
    if (profile.is_object() && profile.value("name", "") == "default") return {};
  }
  return Error::Make(
      ErrorCode::kInvalidState,
      fmt::format("the active policy (version {}) has no 'default' profile", version));
}

bool FinalJobState(const std::string& state) {
  return state == "succeeded" || state == "failed" || state == "timed-out" ||
         state == "cancelled" || state == "lost";
}

// A job of the trivial command under the default profile succeeds: ralphd
// makes its sandbox (overlay on the base, cgroup, namespaces, seccomp) and
// reports its end. Waited on its state, with a bound.
Result<void> SandboxRuns(const HealthEnvironment& env) {
  std::vector<std::string> args = {
      "job",    "run",          "--detach",
      "--json", "--timeout-ms", std::to_string(env.sandbox_job_timeout.count()),
      "--"};
  args.insert(args.end(), env.sandbox_probe_argv.begin(), env.sandbox_probe_argv.end());
  std::string what =
      fmt::format("the job `{}` under the default policy", fmt::join(env.sandbox_probe_argv, " "));
  nlohmann::json job = TRY_CTX(RalphctlJson(env, args), fmt::format("submitting {}", what));
  if (!job.contains("id") || !job["id"].is_number_unsigned()) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("submitting {}: the reply has no job id: {}", what, job.dump()));
  }
  std::string id = std::to_string(job["id"].get<uint64_t>());
  auto deadline = env.clock->Now() + env.sandbox_deadline;
  for (;;) {
    job = TRY_CTX(RalphctlJson(env, {"job", "show", id, "--json"}),
                  fmt::format("{} (job {})", what, id));
    std::string state = job.value("state", "");
    if (state == "succeeded") return {};
    if (FinalJobState(state)) {
      return Error::Make(
          ErrorCode::kInvalidState,
          fmt::format("{} (job {}) ended {}: termination {}, exit code {}{}", what, id, state,
                      job.value("termination", "-"),
                      job.contains("exit_code") ? job["exit_code"].dump() : "-",
                      job.contains("reason") ? ", reason: " + job.value("reason", "") : ""));
    }
    if (env.clock->Now() >= deadline) {
      IgnoreError(RalphctlJson(env, {"job", "cancel", id, "--json"}));
      return Error::Make(
          ErrorCode::kTimeout,
          fmt::format(
              "{} (job {}) still {} after {} s (cancelled)", what, id, state,
              std::chrono::duration_cast<std::chrono::seconds>(env.sandbox_deadline).count()));
    }
    env.clock->SleepFor(std::chrono::milliseconds(250));
  }
}

}  // namespace

std::chrono::steady_clock::time_point SystemClock::Now() {
  return std::chrono::steady_clock::now();
}

void SystemClock::SleepFor(std::chrono::milliseconds duration) {
  std::this_thread::sleep_for(duration);
}

Result<void> RequiredServicesRunning(const std::string& services_conf,
                                     const std::map<std::string, std::string>& records) {
  auto services = TRY(init::ParseServicesConf(services_conf));
  for (const auto& spec : services) {
    if (!spec.required || spec.oneshot) continue;
    auto it = records.find(spec.name);
    if (it == records.end()) {
      return Error::Make(ErrorCode::kInvalidState,
                         fmt::format("service {} has not been started", spec.name));
    }
    auto record = boot::ParseRecord(it->second);
    if (record["state"] != "running") {
      return Error::Make(
          ErrorCode::kInvalidState,
          fmt::format("service {} is not running: {} after {} start(s), last exit: {}", spec.name,
                      record["state"], record["starts"], record["last_exit"]));
    }
    // Running now, but restarted recently and not yet stable: crash-looping.
    if (!record["consecutive_failures"].empty() && record["consecutive_failures"] != "0") {
      return Error::Make(
          ErrorCode::kInvalidState,
          fmt::format("service {} is not running stably: {} failure(s) in a row, "
                      "last exit: {}",
                      spec.name, record["consecutive_failures"], record["last_exit"]));
    }
  }
  return {};
}

GateDecision Decide(SlotCommitment commitment, ChecksOutcome checks) {
  if (commitment == SlotCommitment::kCommitted) return GateDecision::kReportOnly;
  return checks == ChecksOutcome::kAllPassed ? GateDecision::kCommit
                                             : GateDecision::kMarkBadAndReboot;
}

std::vector<HealthCheck> HealthChecks() {
  return {
      {"services up", ServicesUp},
      {"VAR writable", VarWritable},
      {"slot state readable", StateRecordReadable},
      {"ralphd answers", RalphdAnswers},
      {"ralphd API", ApiAnswers},
      {"policy loads", PolicyLoads},
      {"sandbox runs", SandboxRuns},
  };
}

}  // namespace ralph::health
