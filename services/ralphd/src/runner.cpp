#include "services/ralphd/runner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <set>

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

// A pooled VM's jail: a service of its own (its VM moves from the filler's
// thread to its job's), named apart from the jobs'.
std::string PoolJailBase(uint64_t n) {
  return fmt::format("ralphd-pool{}", n);
}

// How long a pool whose boot failed waits before it boots again.
constexpr auto kPoolRetry = std::chrono::seconds(30);

Result<std::unique_ptr<sandbox::SandboxService>> MakeNamedService(
    const RunnerOptions& options, const std::string& base,
    std::unique_ptr<sandbox::NetworkProviderInterface> network) {
  std::string name = sandbox::OwnedCgroupName(base);
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

Result<std::unique_ptr<sandbox::SandboxService>> MakeService(
    const RunnerOptions& options, uint64_t job,
    std::unique_ptr<sandbox::NetworkProviderInterface> network) {
  return MakeNamedService(options, ServiceBase(job), std::move(network));
}

}  // namespace

// A tty job's input: queued by WriteTerminal (any thread) and written by
// the writer's thread into the pty's non-blocking master whenever the job
// can take more, so a job that does not read stalls nobody.
struct JobRunner::TerminalWriter {
  explicit TerminalWriter(UniqueFd wake_fd) : wake(std::move(wake_fd)) {}
  ~TerminalWriter() { Stop(); }

  // The pty exists: a resize asked for before applies, the writer starts.
  void Open(UniqueFd pty_master) {
    std::lock_guard lock(mutex);
    master = std::move(pty_master);
    if (size) IgnoreError(sandbox::ResizeTerminal(master.get(), *size));
    thread = std::thread([this] { Pump(); });
  }

  // A VM job's pty is in the guest: input and window sizes go over the
  // control channel, whose send blocks while the guest has not read what
  // came before, so they go from the writer's thread, in order.
  void OpenVm(sandbox::vm::VmJob* vm_job) {
    std::lock_guard lock(mutex);
    vm = vm_job;
    resize_pending = size.has_value();
    thread = std::thread([this] { PumpVm(); });
  }

  // The job is over: what it did not read is dropped.
  void Stop() {
    {
      std::lock_guard lock(mutex);
      stop = true;
    }
    Wake();
    if (thread.joinable()) thread.join();
    std::lock_guard lock(mutex);
    master.reset();
    vm = nullptr;
  }

  Result<void> Write(uint64_t job, std::string_view input) {
    {
      std::lock_guard lock(mutex);
      if (stop) return Error::Make(ErrorCode::kInvalidState, fmt::format("job {} is over", job));
      if (pending.size() + input.size() > kMaxTerminalInputBytes) {
        return Error::Make(ErrorCode::kBusy,
                           fmt::format("job {}: {} bytes of terminal input are waiting for the "
                                       "job to read them (at most {})",
                                       job, pending.size(), kMaxTerminalInputBytes));
      }
      pending.append(input);
    }
    Wake();
    return {};
  }

  Result<void> Resize(sandbox::TerminalSize new_size) {
    std::unique_lock lock(mutex);
    size = new_size;
    if (vm) {
      resize_pending = true;
      lock.unlock();
      Wake();
      return {};
    }
    if (!master) return {};
    return sandbox::ResizeTerminal(master.get(), new_size);
  }

 private:
  void Wake() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t written = ::write(wake.get(), &one, sizeof one);
  }

  void Pump() {
    while (true) {
      int out = -1;
      {
        std::lock_guard lock(mutex);
        if (stop) return;
        if (!pending.empty()) out = master.get();
      }
      // fd -1 is skipped: an idle writer does not wake for the pty's hangup.
      pollfd fds[2] = {{wake.get(), POLLIN, 0}, {out, POLLOUT, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
      if (fds[0].revents) {
        uint64_t count;
        [[maybe_unused]] ssize_t got = ::read(wake.get(), &count, sizeof count);
      }
      if (out >= 0 && fds[1].revents) {
        std::lock_guard lock(mutex);
        ssize_t n = ::write(master.get(), pending.data(), pending.size());
        if (n > 0) {
          pending.erase(0, static_cast<size_t>(n));
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          pending.clear();  // the pty is gone with the job
        }
      }
    }
  }

  void PumpVm() {
    while (true) {
      std::string input;
      std::optional<sandbox::TerminalSize> resize;
      sandbox::vm::VmJob* target = nullptr;
      {
        std::lock_guard lock(mutex);
        if (stop) return;
        input.swap(pending);
        if (resize_pending) resize = size;
        resize_pending = false;
        target = vm;
      }
      if (input.empty() && !resize) {
        pollfd wait = {wake.get(), POLLIN, 0};
        if (::poll(&wait, 1, -1) < 0 && errno != EINTR) return;
        uint64_t count;
        [[maybe_unused]] ssize_t got = ::read(wake.get(), &count, sizeof count);
        continue;
      }
      // An error means the VM is gone with the job: the rest is dropped
      // as a namespace job's pty drops it.
      if (resize) IgnoreError(target->Resize(*resize));
      if (!input.empty()) IgnoreError(target->Input(input));
    }
  }

  std::mutex mutex;
  std::string pending;
  UniqueFd master;
  sandbox::vm::VmJob* vm = nullptr;  // a VM job's, set by OpenVm
  bool resize_pending = false;
  std::optional<sandbox::TerminalSize> size;
  bool stop = false;
  UniqueFd wake;  // eventfd
  std::thread thread;
};

Result<std::unique_ptr<JobRunner>> JobRunner::Create(RunnerOptions options) {
  UniqueFd notify(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!notify) return Error::FromErrno("eventfd", errno);
  return std::unique_ptr<JobRunner>(new JobRunner(std::move(options), std::move(notify)));
}

bool VmPoolSpec::operator==(const VmPoolSpec& other) const {
  // The shape's parts a pooled VM is booted for (VmJob::Boot, Fits).
  return profile == other.profile && size == other.size && shape.base == other.shape.base &&
         shape.base_kind == other.shape.base_kind &&
         shape.limits.memory_bytes == other.shape.limits.memory_bytes &&
         shape.limits.disk_bytes == other.shape.limits.disk_bytes &&
         shape.limits.cpu_millis == other.shape.limits.cpu_millis &&
         shape.limits.io_weight == other.shape.limits.io_weight;
}

JobRunner::~JobRunner() {
  DrainVmPools();
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

void JobRunner::SetVmPools(std::vector<VmPoolSpec> pools) {
  std::vector<std::shared_ptr<Pool>> dropped;
  {
    std::lock_guard lock(pool_mutex_);
    std::map<std::string, std::shared_ptr<Pool>> next;
    for (VmPoolSpec& spec : pools) {
      if (spec.size == 0 || !options_.vm) continue;
      auto it = pools_.find(spec.profile);
      if (it != pools_.end() && it->second->spec == spec) {
        next[spec.profile] = it->second;
        pools_.erase(it);
        continue;
      }
      auto pool = std::make_shared<Pool>();
      pool->status = {.profile = spec.profile, .size = spec.size};
      sandbox::vm::VmJobOptions vm_options = *options_.vm;
      vm_options.jail_ids = options_.ids;
      pool->pool = std::make_unique<sandbox::vm::VmPool>(
          [this]() -> Result<std::unique_ptr<sandbox::SandboxService>> {
            uint64_t n;
            {
              std::lock_guard lock(pool_mutex_);
              n = next_pool_jail_++;
            }
            return MakeNamedService(options_, PoolJailBase(n), nullptr);
          },
          vm_options, spec.shape, spec.size);
      pool->spec = std::move(spec);
      next[pool->spec.profile] = pool;
    }
    for (auto& [name, pool] : pools_) dropped.push_back(pool);
    pools_ = std::move(next);
    if (!pools_.empty() && !filler_.joinable() && !pool_stop_) {
      filler_ = std::thread([this] { FillPools(); });
    }
  }
  pool_cv_.notify_all();
  // A boot the filler has under way for a dropped pool is drained by the
  // filler when it ends.
  for (auto& pool : dropped) IgnoreError(pool->pool->Drain());
}

std::vector<VmPoolStatus> JobRunner::VmPools() const {
  std::lock_guard lock(pool_mutex_);
  std::vector<VmPoolStatus> out;
  for (const auto& [name, pool] : pools_) {
    VmPoolStatus status = pool->status;
    status.waiting = pool->pool->waiting();
    out.push_back(std::move(status));
  }
  return out;
}

void JobRunner::FillPools() {
  std::unique_lock lock(pool_mutex_);
  while (!pool_stop_) {
    auto now = std::chrono::steady_clock::now();
    std::shared_ptr<Pool> next;
    std::optional<std::chrono::steady_clock::time_point> retry;
    for (auto& [name, pool] : pools_) {
      if (pool->pool->waiting() >= pool->spec.size) continue;
      if (pool->retry_at > now) {
        if (!retry || pool->retry_at < *retry) retry = pool->retry_at;
        continue;
      }
      next = pool;
      break;
    }
    if (!next) {
      if (retry) {
        pool_cv_.wait_until(lock, *retry);
      } else {
        pool_cv_.wait(lock);
      }
      continue;
    }
    lock.unlock();
    Result<bool> booted = next->pool->FillOne();
    if (!booted && options_.log) {
      options_.log(LogLevel::kError, fmt::format("the VM pool of profile '{}': {}",
                                                 next->spec.profile, booted.error().ToString()));
    }
    lock.lock();
    if (booted) {
      if (*booted) ++next->status.booted;
      next->status.last_error.clear();
    } else {
      next->status.last_error = booted.error().ToString();
      next->retry_at = std::chrono::steady_clock::now() + kPoolRetry;
    }
    auto current = pools_.find(next->spec.profile);
    if (current == pools_.end() || current->second != next) {
      lock.unlock();
      IgnoreError(next->pool->Drain());
      lock.lock();
    }
  }
}

std::unique_ptr<sandbox::vm::VmJob> JobRunner::TakePooledVm(const std::string& profile,
                                                            const sandbox::SandboxSpec& spec) {
  std::shared_ptr<Pool> pool;
  {
    std::lock_guard lock(pool_mutex_);
    auto it = pools_.find(profile);
    if (it == pools_.end()) return nullptr;
    pool = it->second;
  }
  Result<std::unique_ptr<sandbox::vm::VmJob>> vm = pool->pool->Take(spec);
  {
    std::lock_guard lock(pool_mutex_);
    if (vm && *vm) ++pool->status.taken;
  }
  pool_cv_.notify_all();  // one fewer waits
  if (!vm) {
    // The job boots its own VM instead.
    if (options_.log) {
      options_.log(LogLevel::kError, fmt::format("a pooled VM of profile '{}' failed its job: {}",
                                                 profile, vm.error().ToString()));
    }
    return nullptr;
  }
  return std::move(*vm);
}

void JobRunner::DrainVmPools() {
  std::map<std::string, std::shared_ptr<Pool>> pools;
  {
    std::lock_guard lock(pool_mutex_);
    pool_stop_ = true;
    pools.swap(pools_);
  }
  pool_cv_.notify_all();
  if (filler_.joinable()) filler_.join();
  for (auto& [name, pool] : pools) {
    Result<void> drained = pool->pool->Drain();
    if (!drained && options_.log) {
      options_.log(LogLevel::kError, fmt::format("draining the VM pool of profile '{}': {}", name,
                                                 drained.error().ToString()));
    }
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
  Wake();
}

void JobRunner::Wake() {
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
  if (launch.spec.stdio == sandbox::StdioMode::kPty) {
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    // Without it the job runs with no input; WriteTerminal says so.
    if (wake) running.terminal = std::make_shared<TerminalWriter>(std::move(wake));
  }
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
  if (launch.in_vm) return RunVmJob(std::move(launch));
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
  // A loop iteration's workspace is its host directory (bound over the
  // sandbox's own).
  if (!launch.host_workspace.empty()) workspace = launch.host_workspace;
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
  std::shared_ptr<TerminalWriter> terminal;
  {
    std::lock_guard lock(mutex_);
    Running& running = running_[job];
    Result<int> pidfd = (*service)->PidFd(*id);
    if (pidfd) running.pidfd.reset(::fcntl(*pidfd, F_DUPFD_CLOEXEC, 0));
    cancel_now = running.cancel;
    terminal = running.terminal;
  }
  if (terminal) {
    Result<UniqueFd> master = (*service)->TerminalFd(*id);
    if (master) {
      terminal->Open(std::move(*master));
    } else if (options_.log) {
      options_.log(LogLevel::kError, fmt::format("job {}: its terminal takes no input: {}", job,
                                                 master.error().ToString()));
    }
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
  if (terminal) terminal->Stop();
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
  Result<std::vector<FileRecord>> files = launch.host_workspace.empty()
                                              ? ListFiles(upper, "")
                                              : ListFiles(*workspace, launch.spec.workspace);
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
  if (!launch.git_dir.empty()) {
    Result<WorkspaceCommit> commit =
        CommitWorkspace(options_.git, launch.git_dir, launch.host_workspace, launch.iteration);
    if (commit) {
      finished.commit = std::move(*commit);
    } else {
      finished.commit_error = commit.error();
    }
  }
  Result<void> destroyed = (*service)->Destroy(*id);
  if (!destroyed && !finished.error) finished.error = destroyed.error().WithContext("tearing down");
  service->reset();
  Post(std::move(finished));
}

void JobRunner::RunVmJob(JobLaunch launch) {
  const uint64_t job = launch.job;
  RunnerMessage finished{.kind = RunnerMessage::Kind::kFinished, .job = job};
  auto fail = [&](Error error) {
    finished.error = std::move(error);
    Post(std::move(finished));
  };
  if (!options_.vm) {
    return fail(Error::Make(ErrorCode::kUnsupported,
                            "isolation: vm: this ralphd has no guest image (--vm-guest)"));
  }
  if (!launch.upload_tar.empty() || !launch.host_workspace.empty()) {
    return fail(Error::Make(ErrorCode::kUnsupported,
                            "workspace: a VM job shares no filesystem with the host yet"));
  }
  auto started_at = std::chrono::steady_clock::now();
  // A VM booted ahead when the profile's pool has one that fits; it keeps
  // its own jail.
  std::unique_ptr<sandbox::vm::VmJob> vm;
  if (!launch.vm_pool.empty()) vm = TakePooledVm(launch.vm_pool, launch.spec);
  // Else QEMU's jail is a namespace job of the job's own service, no
  // network.
  std::unique_ptr<sandbox::SandboxService> jail;
  if (!vm) {
    Result<std::unique_ptr<sandbox::SandboxService>> service = MakeService(options_, job, nullptr);
    if (!service) return fail(service.error().WithContext("making the VM's jail"));
    jail = std::move(*service);
    sandbox::vm::VmJobOptions vm_options = *options_.vm;
    vm_options.jail_ids = options_.ids;
    Result<std::unique_ptr<sandbox::vm::VmJob>> started =
        sandbox::vm::VmJob::Start(*jail, vm_options, launch.spec);
    if (!started) return fail(started.error().WithContext("starting the VM job"));
    vm = std::move(*started);
  }
  bool cancel_now = false;
  std::shared_ptr<TerminalWriter> terminal;
  {
    std::lock_guard lock(mutex_);
    Running& running = running_[job];
    running.pidfd.reset(::fcntl(vm->vmm_pidfd(), F_DUPFD_CLOEXEC, 0));
    cancel_now = running.cancel;
    terminal = running.terminal;
  }
  if (terminal) terminal->OpenVm(vm.get());
  if (cancel_now) vm->Kill();
  Post({.kind = RunnerMessage::Kind::kStarted, .job = job});

  Result<sandbox::JobResult> result =
      vm->Wait([&](sandbox::OutputStream stream, std::string_view chunk) {
        Post({.kind = RunnerMessage::Kind::kOutput,
              .job = job,
              .stream = stream == sandbox::OutputStream::kStdout ? OutputStream::kStdout
                                                                 : OutputStream::kStderr,
              .data = std::string(chunk)});
      });
  if (terminal) terminal->Stop();
  {
    std::lock_guard lock(mutex_);
    Running& running = running_[job];
    running.pidfd.reset();
    finished.cancelled = running.cancel;
  }
  if (result) {
    finished.result = std::move(*result);
  } else if (finished.cancelled) {
    // Cancel killed the VM, so the guest never reported: the job died by
    // that SIGKILL, and what it used is its VM's, as the host measured it.
    sandbox::JobResult killed;
    killed.termination = sandbox::Termination::kSignaled;
    killed.signal = SIGKILL;
    killed.exit_code = -1;
    killed.wall = std::chrono::steady_clock::now() - started_at;
    killed.cgroup = vm->vmm_usage();
    finished.result = std::move(killed);
  } else {
    finished.error = result.error();
  }
  finished.files_error =
      Error::Make(ErrorCode::kUnsupported,
                  "a VM job's files stay in its guest (no filesystem is shared with the host yet)");
  Result<void> destroyed = vm->Destroy();
  if (!destroyed && !finished.error) finished.error = destroyed.error().WithContext("tearing down");
  vm.reset();
  jail.reset();
  Post(std::move(finished));
}

Result<std::shared_ptr<JobRunner::TerminalWriter>> JobRunner::Terminal(uint64_t job) const {
  std::lock_guard lock(mutex_);
  auto it = running_.find(job);
  if (it == running_.end() || !it->second.terminal) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("job {} has no terminal in the runner", job));
  }
  return it->second.terminal;
}

Result<void> JobRunner::WriteTerminal(uint64_t job, std::string_view input) {
  std::shared_ptr<TerminalWriter> terminal = TRY(Terminal(job));
  return terminal->Write(job, input);
}

Result<void> JobRunner::ResizeTerminal(uint64_t job, sandbox::TerminalSize size) {
  std::shared_ptr<TerminalWriter> terminal = TRY(Terminal(job));
  return terminal->Resize(size);
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

Result<void> JobRunner::SweepLostPools(const RunnerOptions& options) {
  // The pool jails' parents are siblings of any service's parent; each
  // base found is swept by a service of that base (Create sweeps the dead
  // owners of its name base and the volumes nobody holds).
  std::set<std::string> bases;
  {
    std::unique_ptr<sandbox::CgroupManagerInterface> probe =
        TRY(sandbox::DetectCgroups(sandbox::OwnedCgroupName(PoolJailBase(0))));
    for (const std::string& parent : probe->parent_paths()) {
      std::error_code ec;
      for (const auto& entry :
           std::filesystem::directory_iterator(parent.substr(0, parent.rfind('/')), ec)) {
        std::string name = entry.path().filename().string();
        size_t at = name.find('@');
        if (name.rfind("ralphd-pool", 0) == 0 && at != std::string::npos) {
          bases.insert(name.substr(0, at));
        }
      }
    }
  }
  for (const std::string& base : bases) {
    TRY_CTX(MakeNamedService(options, base, nullptr),
            fmt::format("sweeping what the VM pool's {} left", base));
  }
  if (bases.empty()) return {};
  TRY_CTX(sandbox::UnmountIdleVolumes(options.sandbox_state_dir + "/images"),
          "unmounting the lost pooled VMs' volumes");
  return {};
}

}  // namespace ralph::ralphd
