// The agent image jobs with an agent run on (docs/agents.md "On the
// appliance"): the store on VAR (services/ota/agent_image.h) installed from
// signed agent-image bundles, rolled back, and checked against its recorded
// digest before the daemon uses it. Installs and rollbacks are audit rows of
// their own ("agent-image.install", "agent-image.install-failed",
// "agent-image.rollback") besides the command's row.
//
// An install runs on the daemon's loop: requests wait while the image is
// checked, copied and read back (it is read three times; about three
// seconds per GiB on the development VM), which keeps one switch at a time
// without a second writer to coordinate with. Running jobs keep the image
// they mounted: a switch changes the base of jobs launched after it.
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "services/ota/agent_image.h"
#include "services/ralphd/daemon.h"

namespace ralph::ralphd {

using nlohmann::json;

namespace {

json RecordJson(const ota::AgentImageRecord& record) {
  return {{"version", record.version.ToString()},
          {"sha256", DigestToHex(record.sha256)},
          {"size", record.size},
          {"file", record.file},
          {"signer", record.signer},
          {"installed", record.installed}};
}

}  // namespace

void Daemon::LoadAgentImage() {
  Result<std::string> current = ota::VerifiedCurrentImage(options_.agent_images);
  if (current) {
    agent_image_ = *current;
    agent_image_problem_.clear();
    Log(LogLevel::kInfo, fmt::format("agent jobs run on {}", *current));
    return;
  }
  agent_image_.reset();
  agent_image_problem_ = current.error().message();
  Log(current.error().code() == ErrorCode::kNotFound ? LogLevel::kInfo : LogLevel::kError,
      fmt::format("no usable agent image: {}", agent_image_problem_));
}

void Daemon::InstallFactoryAgentImage() {
  const std::string& bundle = options_.factory_agent_bundle;
  if (bundle.empty() || ::access(bundle.c_str(), F_OK) != 0) return;
  Result<ota::AgentImageState> state = ota::ReadAgentImageState(options_.agent_images);
  if (state && state->current) return;
  Result<ota::AgentImageInstallReport> report =
      ota::InstallAgentImage({.dir = options_.agent_images}, bundle, options_.keyring);
  if (!report) {
    // The bundle stays where it is: the error says what is wrong with it,
    // and nothing of it was installed.
    Log(LogLevel::kError, fmt::format("the factory agent image {} was not installed: {}", bundle,
                                      report.error().ToString()));
    Audit("agent-image.install-failed", "agent image",
          {{"caller", "factory"}, {"bundle", bundle}, {"error", report.error().message()}});
    return;
  }
  Audit("agent-image.install", "agent image",
        {{"caller", "factory"}, {"bundle", bundle}, {"installed", RecordJson(report->installed)}});
  // Installed and verified on VAR: the bundle's space goes back to the jobs.
  if (::unlink(bundle.c_str()) != 0) {
    Log(LogLevel::kWarning, fmt::format("removing the installed factory agent image {}: {}", bundle,
                                        std::strerror(errno)));
  }
}

Result<JobEnvironment> Daemon::AgentEnvironment() const {
  if (options_.agent_images.empty()) return options_.environment;
  if (!agent_image_) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("jobs with an agent run on the agent image, and none is "
                                   "usable: {}",
                                   agent_image_problem_));
  }
  return JobEnvironment{.base_kind = sandbox::BaseKind::kImage, .base = *agent_image_};
}

Result<Reply> Daemon::AgentImageStatus() {
  json out = {
      {"store", options_.agent_images.empty() ? json(nullptr) : json(options_.agent_images)},
      {"current", nullptr},
      {"previous", nullptr},
      {"usable", agent_image_.has_value()}};
  if (options_.agent_images.empty()) {
    out["note"] = "no agent-image store (ralphd --agent-images): agent jobs run on the job base";
    return Reply::Json(out);
  }
  if (!agent_image_) out["problem"] = agent_image_problem_;
  ota::AgentImageState state = TRY(ota::ReadAgentImageState(options_.agent_images));
  if (state.current) out["current"] = RecordJson(*state.current);
  if (state.previous) out["previous"] = RecordJson(*state.previous);
  return Reply::Json(out);
}

Result<Reply> Daemon::AgentImageInstall(const Caller& caller, const std::string& path) {
  if (options_.agent_images.empty()) {
    return Error::Make(ErrorCode::kInvalidState,
                       "this ralphd has no agent-image store (start it with --agent-images DIR)");
  }
  Result<ota::AgentImageInstallReport> report =
      ota::InstallAgentImage({.dir = options_.agent_images}, path, options_.keyring);
  if (!report) {
    Audit("agent-image.install-failed", "agent image",
          {{"caller", caller.ToString()}, {"bundle", path}, {"error", report.error().message()}});
    return std::move(report).error();
  }
  LoadAgentImage();
  json details = {{"caller", caller.ToString()},
                  {"bundle", path},
                  {"installed", RecordJson(report->installed)},
                  {"reused", report->reused}};
  if (report->previous) details["previous"] = RecordJson(*report->previous);
  Audit("agent-image.install", "agent image", details);
  if (!agent_image_) {
    return Error::Make(ErrorCode::kIo, fmt::format("installed, but the image is not usable: {}",
                                                   agent_image_problem_));
  }
  json out = {{"installed", RecordJson(report->installed)}, {"reused", report->reused}};
  out["previous"] = report->previous ? RecordJson(*report->previous) : json(nullptr);
  return Reply::Json(out);
}

Result<Reply> Daemon::AgentImageRollback(const Caller& caller) {
  if (options_.agent_images.empty()) {
    return Error::Make(ErrorCode::kInvalidState,
                       "this ralphd has no agent-image store (start it with --agent-images DIR)");
  }
  ota::AgentImageState state = TRY(ota::RollbackAgentImage({.dir = options_.agent_images}));
  LoadAgentImage();
  json out = {{"current", RecordJson(*state.current)}, {"previous", RecordJson(*state.previous)}};
  Audit(
      "agent-image.rollback", "agent image",
      {{"caller", caller.ToString()}, {"current", out["current"]}, {"previous", out["previous"]}});
  return Reply::Json(out);
}

}  // namespace ralph::ralphd
