#include "services/health/checks.h"

#include <fcntl.h>
#include <unistd.h>

#include <random>
#include <thread>

#include <fmt/format.h>

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
  };
}

}  // namespace ralph::health
