#include "services/ralphd/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include "platform/arch.h"
#include "platform/file_io.h"
#include "sandbox/cgroup.h"
#include "sandbox/storage.h"
#include "services/ralphd/workspace.h"

namespace ralph::ralphd {
namespace {

std::string ServiceBase(uint64_t job) {
  return fmt::format("ralphd-job{}", job);
}

// Hands the job's connection events to the runner's queue, from the network
// service's threads.
class NetEvents final : public sandbox::NetEventSinkInterface {
 public:
  NetEvents(uint64_t job, std::function<void(RunnerMessage)> post)
      : job_(job), post_(std::move(post)) {}
  void OnNetEvent(const sandbox::NetEvent& event) override {
    post_({.kind = RunnerMessage::Kind::kNet, .job = job_, .net = event});
  }

 private:
  uint64_t job_;
  std::function<void(RunnerMessage)> post_;
};

Result<std::unique_ptr<sandbox::SandboxService>> MakeService(
    const RunnerOptions& options, uint64_t job,
    std::unique_ptr<sandbox::NetworkProviderInterface> network) {
  std::string name = sandbox::OwnedCgroupName(ServiceBase(job));
  std::unique_ptr<sandbox::CgroupManagerInterface> cgroups = TRY(sandbox::DetectCgroups(name));
  sandbox::ServiceOptions service;
  service.state_dir = options.sandbox_state_dir;
  service.name = name;
  service.ids = options.ids;
  service.seccomp_audit_arch = arch::SeccompAuditArch();
  // One job per service: no volume is kept for a next one.
  service.max_pooled_volumes = 0;
  service.max_shared_volumes = 0;
  return sandbox::SandboxService::Create(service, std::move(cgroups), std::move(network));
}

}  // namespace

Result<std::unique_ptr<JobRunner>> JobRunner::Create(RunnerOptions options) {
  UniqueFd notify(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!notify) return Error::FromErrno("eventfd", errno);
  return std::unique_ptr<JobRunner>(new JobRunner(std::move(options), std::move(notify)));
}

JobRunner::~JobRunner() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mutex_);
    for (auto& [job, running] : running_) {
      running.cancel = true;
      if (running.pidfd) ::syscall(SYS_pidfd_send_signal, running.pidfd.get(), SIGKILL, nullptr, 0);
      threads.push_back(std::move(running.thread));
    }
    for (std::thread& thread : finished_) threads.push_back(std::move(thread));
    finished_.clear();
  }
  for (std::thread& thread : threads) {
    if (thread.joinable()) thread.join();
  }
}

void JobRunner::Post(RunnerMessage message) {
  {
    std::lock_guard lock(mutex_);
    if (message.kind == RunnerMessage::Kind::kFinished) {
      auto it = running_.find(message.job);
      if (it != running_.end()) {
        finished_.push_back(std::move(it->second.thread));
        running_.erase(it);
      }
    }
    queue_.push_back(std::move(message));
  }
  // An eventfd write fails only when its counter would overflow, and then
  // the loop has a wake-up pending anyway.
  uint64_t one = 1;
  [[maybe_unused]] ssize_t written = ::write(notify_.get(), &one, sizeof one);
}

std::vector<RunnerMessage> JobRunner::Take() {
  uint64_t count = 0;
  while (::read(notify_.get(), &count, sizeof count) > 0) {
  }
  std::vector<RunnerMessage> messages;
  std::vector<std::thread> done;
  {
    std::lock_guard lock(mutex_);
    messages.swap(queue_);
    done.swap(finished_);
  }
  // Each finished thread has posted its last message and is returning.
  for (std::thread& thread : done) thread.join();
  return messages;
}

void JobRunner::Start(JobLaunch launch) {
  std::lock_guard lock(mutex_);
  uint64_t job = launch.job;
  Running& running = running_[job];
  running.thread =
      std::thread([this, launch = std::move(launch)]() mutable { RunJob(std::move(launch)); });
}

bool JobRunner::Cancel(uint64_t job) {
  std::lock_guard lock(mutex_);
  auto it = running_.find(job);
  if (it == running_.end()) return false;
  it->second.cancel = true;
  if (it->second.pidfd)
    ::syscall(SYS_pidfd_send_signal, it->second.pidfd.get(), SIGKILL, nullptr, 0);
  return true;
}

size_t JobRunner::running() const {
  std::lock_guard lock(mutex_);
  return running_.size();
}

std::optional<std::string> JobRunner::WorkspacePath(uint64_t job) const {
  std::lock_guard lock(mutex_);
  auto it = running_.find(job);
  if (it == running_.end() || it->second.workspace.empty()) return std::nullopt;
  return it->second.workspace;
}

void JobRunner::RunJob(JobLaunch launch) {
  const uint64_t job = launch.job;
  RunnerMessage finished{.kind = RunnerMessage::Kind::kFinished, .job = job};
  auto post = [this](RunnerMessage message) { Post(std::move(message)); };
  auto fail = [&](Error error) {
    finished.error = std::move(error);
    Post(std::move(finished));
  };
  std::unique_ptr<NetEvents> events;
  std::unique_ptr<sandbox::NetworkProviderInterface> network;
  if (launch.spec.network.enabled) {
    events = std::make_unique<NetEvents>(job, post);
    sandbox::NetworkServiceConfig config;
    config.log = options_.log;
    config.report_events = true;
    config.expect_egress = sandbox::JobHasEgress(launch.spec.network);
    network = sandbox::MakeNetworkProvider(config, events.get());
  }
  Result<std::unique_ptr<sandbox::SandboxService>> service =
      MakeService(options_, job, std::move(network));
  if (!service) return fail(service.error().WithContext("making the job's sandbox service"));
  launch.spec.record_exec = options_.execs != nullptr;
  Result<sandbox::JobId> id = (*service)->CreateJob(launch.spec);
  if (!id) return fail(id.error().WithContext("creating the sandbox"));
  Result<std::string> workspace = (*service)->WorkspacePath(*id);
  if (!workspace) return fail(workspace.error());
  if (!launch.upload_tar.empty()) {
    // Owned by the job's root (its uid 0 maps to ids.host_base).
    Result<void> extracted =
        ExtractTar(launch.upload_tar, *workspace, options_.ids.host_base, options_.ids.host_base);
    if (!extracted) {
      IgnoreError((*service)->Destroy(*id));
      return fail(extracted.error());
    }
  }
  {
    std::lock_guard lock(mutex_);
    running_[job].workspace = *workspace;
  }
  Result<void> run = (*service)->Run(*id);
  if (!run) {
    IgnoreError((*service)->Destroy(*id));
    return fail(run.error().WithContext("starting the sandbox"));
  }
  bool cancel_now = false;
  {
    std::lock_guard lock(mutex_);
    Running& running = running_[job];
    Result<int> pidfd = (*service)->PidFd(*id);
    if (pidfd) running.pidfd.reset(::fcntl(*pidfd, F_DUPFD_CLOEXEC, 0));
    cancel_now = running.cancel;
  }
  if (cancel_now) IgnoreError((*service)->Kill(*id));
  Post({.kind = RunnerMessage::Kind::kStarted, .job = job});

  sandbox::ExecCallback on_exec;
  if (options_.execs) {
    on_exec = [&](sandbox::ExecRecord record) { options_.execs->Record(job, std::move(record)); };
  }
  Result<sandbox::JobResult> result = (*service)->Wait(
      *id,
      [&](sandbox::OutputStream stream, std::string_view chunk) {
        Post({.kind = RunnerMessage::Kind::kOutput,
              .job = job,
              .stream = stream == sandbox::OutputStream::kStdout ? OutputStream::kStdout
                                                                 : OutputStream::kStderr,
              .data = std::string(chunk)});
      },
      on_exec);
  // The job's exec rows go before its final state row.
  if (options_.execs) options_.execs->FinishJob(job);
  {
    std::lock_guard lock(mutex_);
    Running& running = running_[job];
    running.pidfd.reset();
    running.workspace.clear();
    finished.cancelled = running.cancel;
  }
  if (result) {
    finished.result = std::move(*result);
  } else {
    finished.error = result.error();
  }
  // What the job changed: its whole upper layer (".../upper/work" is the
  // workspace), and the workspace kept for download.
  std::string upper = workspace->substr(0, workspace->rfind("/upper/") + 6);
  Result<std::vector<FileRecord>> files = ListFiles(upper, "");
  if (files) {
    finished.files = std::move(*files);
  } else {
    finished.files_error = files.error();
  }
  Result<std::string> tar = ArchiveDirectory(*workspace);
  if (tar) {
    Result<void> written = WriteWholeFile(launch.result_tar_path, *tar, 0600);
    if (!written && !finished.files_error) finished.files_error = written.error();
  } else if (!finished.files_error) {
    finished.files_error = tar.error();
  }
  Result<void> destroyed = (*service)->Destroy(*id);
  if (!destroyed && !finished.error) finished.error = destroyed.error().WithContext("tearing down");
  service->reset();
  Post(std::move(finished));
}

Result<void> JobRunner::SweepLost(const RunnerOptions& options, const std::vector<uint64_t>& jobs) {
  for (uint64_t job : jobs) {
    // Create() sweeps the dead owners of its name base and the volumes
    // nobody holds.
    std::unique_ptr<sandbox::SandboxService> service =
        TRY_CTX(MakeService(options, job, nullptr), fmt::format("sweeping what job {} left", job));
  }
  // The dead jobs' volumes, emptied by the sweep, are unmounted (their
  // images stay, cold, for later jobs).
  TRY_CTX(sandbox::UnmountIdleVolumes(options.sandbox_state_dir + "/images"),
          "unmounting the lost jobs' volumes");
  return {};
}

}  // namespace ralph::ralphd
