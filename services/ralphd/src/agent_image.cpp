// The agent image jobs with an agent run on (docs/agents.md "On the
// appliance"): the store on VAR (services/ota/agent_image.h) installed from
// signed agent-image bundles, rolled back, and checked against its recorded
// digest before the daemon uses it. Installs and rollbacks are audit rows of
// their own ("agent-image.install", "agent-image.install-failed",
// "agent-image.rollback") besides the command's row.
//
// An install runs on a thread of its own while the daemon keeps serving: the
// image is checked, copied and read back (it is read three times; about
// three seconds per GiB on the development VM, and the factory image is
// over a GiB). One install at a time; a rollback waits for it to end. The
// loop takes the finished install's result, writes its audit rows, emits
// an "agent-image" event and checks the new image before any job uses it.
// Agent jobs that find no usable image while an install runs wait queued
// for it. Running jobs keep the image they mounted: a switch changes the
// base of jobs launched after it.
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
  Result<void> started = StartAgentImageInstall(bundle, "factory", true);
  if (!started) Log(LogLevel::kError, started.error().ToString());
}

Result<void> Daemon::StartAgentImageInstall(std::string bundle, std::string caller, bool factory) {
  if (InstallRunning()) {
    return Error::Make(ErrorCode::kBusy,
                       fmt::format("an agent-image install is running (bundle {}, since {}); "
                                   "wait for it to end (ralphctl agent-image status)",
                                   install_->bundle, install_->started));
  }
  if (install_ && install_->thread.joinable()) install_->thread.join();
  install_ = std::make_unique<ImageInstall>();
  ImageInstall* install = install_.get();
  install->bundle = std::move(bundle);
  install->caller = std::move(caller);
  install->factory = factory;
  install->started = NowText();
  install_status_ = {{"state", "running"},
                     {"bundle", install->bundle},
                     {"caller", install->caller},
                     {"started", install->started}};
  install->thread = std::thread([this, install] {
    Result<ota::AgentImageInstallReport> report =
        ota::InstallAgentImage({.dir = options_.agent_images}, install->bundle, options_.keyring);
    Result<json> result = report.transform([](const ota::AgentImageInstallReport& r) {
      json out = {{"installed", RecordJson(r.installed)}, {"reused", r.reused}};
      out["previous"] = r.previous ? RecordJson(*r.previous) : json(nullptr);
      return out;
    });
    {
      std::lock_guard lock(install_mutex_);
      install->result = std::move(result);
      install->done = true;
    }
    runner_->Wake();
  });
  Emit("agent-image", 0, install_status_);
  return {};
}

bool Daemon::InstallRunning() const {
  return install_ && !install_->collected;
}

bool Daemon::AwaitingAgentImage() const {
  return !agent_image_ && InstallRunning();
}

bool Daemon::CollectAgentImageInstall() {
  Result<json> result = Error::Make(ErrorCode::kInternal, "unset");
  {
    std::lock_guard lock(install_mutex_);
    if (!install_ || !install_->done || install_->collected) return false;
    result = std::move(*install_->result);
    install_->collected = true;
  }
  if (install_->thread.joinable()) install_->thread.join();
  const ImageInstall& install = *install_;
  json status = {{"bundle", install.bundle},
                 {"caller", install.caller},
                 {"started", install.started},
                 {"ended", NowText()}};
  if (!result) {
    // The bundle stays where it is: the error says what is wrong with it,
    // and nothing of it was installed.
    Log(LogLevel::kError, fmt::format("the agent image {} was not installed: {}", install.bundle,
                                      result.error().ToString()));
    Audit("agent-image.install-failed", "agent image",
          {{"caller", install.caller},
           {"bundle", install.bundle},
           {"error", result.error().message()}});
    status["state"] = "failed";
    status["error"] = result.error().message();
  } else {
    LoadAgentImage();
    json details = {{"caller", install.caller}, {"bundle", install.bundle}};
    details.update(*result);
    Audit("agent-image.install", "agent image", details);
    status.update(*result);
    status["state"] = "installed";
    if (!agent_image_) {
      status["state"] = "failed";
      status["error"] =
          fmt::format("installed, but the image is not usable: {}", agent_image_problem_);
    }
    // Installed and verified on VAR: the factory bundle's space goes back
    // to the jobs.
    if (install.factory && ::unlink(install.bundle.c_str()) != 0) {
      Log(LogLevel::kWarning, fmt::format("removing the installed factory agent image {}: {}",
                                          install.bundle, std::strerror(errno)));
    }
  }
  install_status_ = status;
  Emit("agent-image", 0, status);
  return true;
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
  out["install"] = install_status_;
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
  TRY(StartAgentImageInstall(path, caller.ToString(), false));
  // The outcome is the "agent-image" event and the status's "install".
  return Reply::Json(install_status_);
}

Result<Reply> Daemon::AgentImageRollback(const Caller& caller) {
  if (options_.agent_images.empty()) {
    return Error::Make(ErrorCode::kInvalidState,
                       "this ralphd has no agent-image store (start it with --agent-images DIR)");
  }
  if (InstallRunning()) {
    return Error::Make(ErrorCode::kBusy,
                       fmt::format("an agent-image install is running (bundle {}); roll back "
                                   "after it ends",
                                   install_->bundle));
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
