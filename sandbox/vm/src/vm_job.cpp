#include "sandbox/vm/vm_job.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "machine.h"
#include "platform/file_io.h"
#include "platform/process.h"
#include "sandbox/vm/guest_paths.h"

namespace ralph::sandbox::vm {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Room on the job's state disk beyond its upper volume: the ext4's own
// metadata and the sandbox's template image.
constexpr uint64_t kStateDiskMarginBytes = 64ull << 20;
// Once the guest has reported the job's timeout, how long the host still
// waits before it kills the VM itself (the guest enforces the timeout;
// the host does not trust it to).
constexpr auto kTimeoutGrace = std::chrono::seconds(30);
// What is kept of a job's output when Wait has no callback (as
// ServiceOptions::output_limit_bytes does for a namespace job).
constexpr size_t kOutputLimitBytes = 16u << 20;

constexpr const char* kJailImageDir = "/run/img";

Error Unsupported(std::string_view field, std::string_view what) {
  return Error::Make(ErrorCode::kUnsupported, fmt::format("{}: {}", field, what));
}

std::string HostQemuBinary() {
  return "/usr/bin/" + MachineFor(Accel::kTcg).qemu_binary;
}

Result<void> Chown(const std::string& path, const IdMapping& ids) {
  if (::lchown(path.c_str(), ids.host_base, ids.host_base) != 0) {
    return Error::FromErrno(fmt::format("chown {}", path), errno);
  }
  return {};
}

Result<void> RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return Error::FromErrno(fmt::format("removing {}", path), ec.value());
  return {};
}

// The job's state disk: a sparse ext4 the guest's sandbox keeps its state
// in (its upper volume of exactly limits.disk_bytes among it).
Result<void> MakeStateDisk(const std::string& path, uint64_t bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return Error::FromErrno(fmt::format("creating {}", path), errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return Error::FromErrno(fmt::format("sizing {}", path), errno);
  }
  fd.reset();
  TRY_CTX(RunProgramChecked({.argv = {"mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                                      "-E", "lazy_itable_init=1,nodiscard", path},
                             .package = "e2fsprogs"}),
          "making the job's state disk");
  return {};
}

std::atomic<uint64_t> g_next_job{1};

}  // namespace

Result<SandboxSpec> GuestSpec(const SandboxSpec& spec) {
  TRY(ValidateSpec(spec));
  if (spec.base_kind != BaseKind::kImage) {
    return Unsupported("base_kind",
                       "a VM job's base must be an image file (squashfs): a "
                       "directory cannot be handed to a guest yet");
  }
  if (!spec.binds.empty()) {
    return Unsupported("binds", "a VM job shares no filesystem with the host yet");
  }
  if (spec.network.enabled) {
    return Unsupported("network.enabled",
                       "a VM job's network (a tap in the job's own network "
                       "namespace) is not available yet");
  }
  SandboxSpec guest = spec;
  guest.base_kind = BaseKind::kDirectory;
  guest.base = kGuestBasePath;
  // The guest has no one to stop each exec for: its execs are not carried
  // across to the host yet.
  guest.record_exec = false;
  return guest;
}

Result<void> Fits(const SandboxSpec& job, const SandboxSpec& shape) {
  auto refuse = [&](std::string_view field, std::string_view what) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: the job's {} than the VM it was given", field, what));
  };
  if (job.base != shape.base || job.base_kind != shape.base_kind) {
    return refuse("base", "base image is another");
  }
  if (job.limits.memory_bytes > shape.limits.memory_bytes)
    return refuse("limits.memory_bytes", "memory is more");
  if (job.limits.disk_bytes > shape.limits.disk_bytes)
    return refuse("limits.disk_bytes", "disk is more");
  if (job.limits.cpu_millis > shape.limits.cpu_millis)
    return refuse("limits.cpu_millis", "CPU share is more");
  if (job.limits.io_weight != shape.limits.io_weight)
    return refuse("limits.io_weight", "I/O weight is other");
  return {};
}

uint64_t GuestMemoryBytes(const SandboxSpec& spec, const VmJobOptions& options) {
  uint64_t bytes = spec.limits.memory_bytes + options.guest_overhead_bytes;
  constexpr uint64_t kMiB = 1ull << 20;
  return std::max<uint64_t>((bytes + kMiB - 1) / kMiB * kMiB, kMinVmMemoryBytes);
}

SandboxSpec VmmSpec(const SandboxSpec& job, const VmJobOptions& options,
                    const std::vector<std::string>& qemu_argv, const std::string& vmm_root,
                    const std::string& run_dir) {
  SandboxSpec vmm;
  vmm.base_kind = BaseKind::kDirectory;
  vmm.base = vmm_root;
  std::string qemu = HostQemuBinary();
  vmm.binds.push_back({qemu, qemu, BindAccess::kReadOnly});
  for (const std::string& dir : VmmLibraryDirs()) {
    vmm.binds.push_back({dir, dir, BindAccess::kReadOnly});
  }
  // The firmware (qboot for microvm) and option ROM QEMU loads by name.
  vmm.binds.push_back({"/usr/share/qemu", "/usr/share/qemu", BindAccess::kReadOnly});
  vmm.binds.push_back(
      {options.guest_kernel, std::string(kJailImageDir) + "/vmlinuz", BindAccess::kReadOnly});
  vmm.binds.push_back(
      {options.guest_initrd, std::string(kJailImageDir) + "/initrd.img", BindAccess::kReadOnly});
  vmm.binds.push_back({job.base, std::string(kJailImageDir) + "/base.img", BindAccess::kReadOnly});
  vmm.binds.push_back({run_dir, kJailRunDir, BindAccess::kReadWrite});
  vmm.argv = qemu_argv;
  vmm.env = {"PATH=/usr/bin"};
  vmm.cwd = kJailRunDir;
  vmm.workspace = "/work";
  vmm.hostname = "vmm";
  vmm.limits.memory_bytes = GuestMemoryBytes(job, options) + options.vmm_overhead_bytes;
  vmm.limits.pids = 64;  // QEMU's threads: vCPUs, I/O workers, RCU
  vmm.limits.cpu_millis = job.limits.cpu_millis;
  vmm.limits.io_weight = job.limits.io_weight;
  vmm.limits.disk_bytes = 16ull << 20;  // the jail's own upper: nothing writes there
  vmm.limits.tmp_bytes = 1ull << 20;
  vmm.limits.open_files = 1024;
  // QEMU writes the state disk: the limit must not cut it short.
  vmm.limits.file_size_bytes =
      std::max(job.limits.disk_bytes + kStateDiskMarginBytes, vmm.limits.file_size_bytes);
  vmm.network.enabled = false;
  vmm.stdio = StdioMode::kPipes;
  vmm.record_exec = false;
  return vmm;
}

Result<std::string> MakeVmmRoot(const std::string& dir) {
  std::string root = dir + "/vmm-root";
  std::error_code ec;
  fs::create_directories(root + "/usr", ec);
  if (ec) return Error::FromErrno(fmt::format("creating {}", root), ec.value());
  // Debian is merged-/usr: the loader QEMU names (/lib64/...) is reached
  // through these links into the bound /usr directories.
  for (const char* name : {"bin", "lib", "lib64"}) {
    std::string link = root + "/" + name;
    if (::symlink((std::string("usr/") + name).c_str(), link.c_str()) != 0 && errno != EEXIST) {
      return Error::FromErrno(fmt::format("symlink {}", link), errno);
    }
  }
  return root;
}

Result<size_t> SweepDeadRunDirs(const std::string& run_dir) {
  std::error_code ec;
  size_t removed = 0;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    std::string name = entry.path().filename().string();
    unsigned long pid = 0;
    unsigned long n = 0;
    char tail = 0;
    if (std::sscanf(name.c_str(), "vm-%lu-%lu%c", &pid, &n, &tail) != 2 || pid == 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    TRY(RemoveTree(entry.path().string()));
    ++removed;
  }
  if (ec) return Error::FromErrno(fmt::format("listing {}", run_dir), ec.value());
  return removed;
}

Result<void> CheckVmHost(const VmJobOptions& options) {
  std::string qemu = HostQemuBinary();
  if (::access(qemu.c_str(), X_OK) != 0) {
    return Error::FromErrno(ErrorCode::kUnsupported,
                            fmt::format("{} (package qemu-system-x86) is not usable", qemu), errno);
  }
  for (const std::string* image : {&options.guest_kernel, &options.guest_initrd}) {
    if (image->empty() || ::access(image->c_str(), R_OK) != 0) {
      return Error::Make(ErrorCode::kUnsupported,
                         fmt::format("the guest image '{}' is not readable (build the target "
                                     "ralph_vm_guest_image, or ralph-vm-guest)",
                                     *image));
    }
  }
  if (options.accel == Accel::kKvm) {
    return Error::Make(ErrorCode::kUnsupported,
                       "accel: the VMM's jail cannot pass /dev/kvm yet; VM jobs run under TCG");
  }
  std::error_code ec;
  fs::create_directories(options.run_dir, ec);
  if (options.run_dir.empty() || ec) {
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("the VM run directory '{}' cannot be made: {}", options.run_dir,
                                   ec ? ec.message() : "none given"));
  }
  return {};
}

Result<std::unique_ptr<VmJob>> VmJob::Start(SandboxService& jail, const VmJobOptions& options,
                                            const SandboxSpec& spec) {
  auto job = TRY(Boot(jail, options, spec));
  TRY(job->Begin(spec));
  return job;
}

Result<std::unique_ptr<VmJob>> VmJob::Boot(std::unique_ptr<SandboxService> jail,
                                           const VmJobOptions& options, const SandboxSpec& shape) {
  if (!jail) return Error::Make(ErrorCode::kInvalidArgument, "VmJob::Boot: no jail service");
  SandboxService& service = *jail;
  return BootIn(service, std::move(jail), options, shape);
}

Result<std::unique_ptr<VmJob>> VmJob::Boot(SandboxService& jail, const VmJobOptions& options,
                                           const SandboxSpec& shape) {
  return BootIn(jail, nullptr, options, shape);
}

Result<std::unique_ptr<VmJob>> VmJob::BootIn(SandboxService& jail,
                                             std::unique_ptr<SandboxService> owned,
                                             const VmJobOptions& options,
                                             const SandboxSpec& shape) {
  TRY(GuestSpec(shape));
  if (options.accel == Accel::kKvm) {
    return Error::Make(ErrorCode::kUnsupported,
                       "accel: the VMM's jail cannot pass /dev/kvm yet (its binds are nodev and "
                       "its uid is unprivileged); VM jobs run under TCG");
  }
  if (options.run_dir.empty() || options.guest_kernel.empty() || options.guest_initrd.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "VmJobOptions: run_dir, guest_kernel and guest_initrd are required");
  }
  std::string vmm_root = TRY(MakeVmmRoot(options.run_dir));
  std::string run_dir = fmt::format("{}/vm-{}-{}", options.run_dir, ::getpid(), g_next_job++);
  if (::mkdir(run_dir.c_str(), 0700) != 0) {
    return Error::FromErrno(fmt::format("mkdir {}", run_dir), errno);
  }
  std::unique_ptr<VmJob> job(owned ? new VmJob(std::move(owned), run_dir)
                                   : new VmJob(jail, run_dir));
  job->shape_ = shape;
  job->boot_timeout_ = options.boot_timeout;
  const IdMapping ids = options.jail_ids;
  TRY(Chown(run_dir, ids));
  std::string state_disk = run_dir + "/state.img";
  TRY(MakeStateDisk(state_disk, shape.limits.disk_bytes + kStateDiskMarginBytes));
  TRY(Chown(state_disk, ids));
  std::string socket_path = run_dir + "/control.sock";
  UniqueFd listener = TRY(ListenUnix(socket_path));
  TRY(Chown(socket_path, ids));

  VmSpec vm;
  vm.memory_bytes = GuestMemoryBytes(shape, options);
  vm.cpus = std::clamp<uint32_t>((shape.limits.cpu_millis + 999) / 1000, 1, kMaxVmCpus);
  vm.kernel = std::string(kJailImageDir) + "/vmlinuz";
  vm.initrd = std::string(kJailImageDir) + "/initrd.img";
  vm.disks = {{std::string(kJailImageDir) + "/base.img", DiskAccess::kReadOnly},
              {std::string(kJailRunDir) + "/state.img", DiskAccess::kReadWrite}};
  vm.control.transport = ControlTransport::kVirtioSerial;
  vm.control.socket_path = std::string(kJailRunDir) + "/control.sock";
  vm.accel = options.accel;
  vm.tsc_khz = HostTscKhz();
  vm.console_log = std::string(kJailRunDir) + "/console.log";
  vm.qemu_binary = HostQemuBinary();
  std::vector<std::string> argv = TRY(QemuCommandLine(vm));

  job->vmm_ = TRY_CTX(jail.CreateJob(VmmSpec(shape, options, argv, vmm_root, run_dir)),
                      "making the VMM's jail");
  job->vmm_created_ = true;
  TRY_CTX(jail.Run(job->vmm_), "starting QEMU");
  job->vmm_pidfd_ = UniqueFd(::fcntl(TRY(jail.PidFd(job->vmm_)), F_DUPFD_CLOEXEC, 3));
  if (!job->vmm_pidfd_) return Error::FromErrno("dup pidfd", errno);

  // QEMU connects when it starts; it dying first closes nothing we wait
  // on, so its pidfd is watched beside the listener.
  auto accepted = AcceptOne(listener.get(), options.boot_timeout, job->vmm_pidfd_.get());
  if (!accepted) {
    job->Kill();
    auto vmm = jail.Wait(job->vmm_);
    std::string qemu_err = vmm ? vmm->stderr_data : vmm.error().ToString();
    return std::move(accepted.error()).WithContext(fmt::format("starting QEMU: {}", qemu_err));
  }
  listener.reset();
  ::unlink(socket_path.c_str());
  job->channel_ = std::make_unique<ControlChannel>(std::move(*accepted));
  // The guest agent says it runs once the guest has booted.
  // A guest that never answers is told apart by its console's tail.
  auto frame = TRY_CTX(job->channel_->Receive(options.boot_timeout),
                       fmt::format("waiting for the guest; console: {}", job->ConsoleLog()));
  if (!frame) {
    return Error::Make(ErrorCode::kIo, fmt::format("the VM ended before its guest agent ran; "
                                                   "console: {}",
                                                   job->ConsoleLog()));
  }
  GuestMessage ready = TRY_CTX(DecodeGuestMessage(*frame), "the guest's first message");
  if (!std::holds_alternative<ReadyMessage>(ready)) {
    return Error::Make(ErrorCode::kCorrupt, "the guest's first message was not ready");
  }
  return job;
}

Result<void> VmJob::Begin(const SandboxSpec& spec) {
  if (begun_ || !channel_) {
    return Error::Make(ErrorCode::kInvalidState, "a VM takes one job, once, after its boot");
  }
  begun_ = true;
  TRY(Fits(spec, shape_));
  SandboxSpec guest = TRY(GuestSpec(spec));
  TRY(channel_->Send(TRY(EncodeHostMessage(StartMessage{kProtocolVersion, guest}))));
  auto frame = TRY_CTX(channel_->Receive(boot_timeout_),
                       fmt::format("waiting for the guest's start; console: {}", ConsoleLog()));
  if (!frame) {
    return Error::Make(
        ErrorCode::kIo,
        fmt::format("the VM ended before its job started; console: {}", ConsoleLog()));
  }
  GuestMessage answer = TRY_CTX(DecodeGuestMessage(*frame), "the guest's answer to start");
  if (auto* failed = std::get_if<FailedMessage>(&answer)) {
    return Error::Make(failed->code, fmt::format("in the VM: {}", failed->message));
  }
  if (!std::holds_alternative<StartedMessage>(answer)) {
    return Error::Make(ErrorCode::kCorrupt, "the guest answered start with another message");
  }
  timeout_ = spec.timeout;
  started_ = Clock::now();
  return {};
}

VmJob::~VmJob() {
  (void)Destroy();
}

std::string VmJob::ConsoleLog() const {
  auto log = ReadWholeFile(run_dir_ + "/console.log");
  if (!log) return "(no console output)";
  constexpr size_t kTail = 4096;
  return log->size() > kTail ? log->substr(log->size() - kTail) : *log;
}

pid_t VmJob::vmm_pid() const {
  if (!vmm_pidfd_) return 0;
  // The pidfd's fdinfo names its process ("Pid:\t123"; -1 once reaped).
  auto info = ReadWholeFile(fmt::format("/proc/self/fdinfo/{}", vmm_pidfd_.get()));
  if (!info) return 0;
  size_t at = info->find("\nPid:");
  if (at == std::string::npos) return 0;
  long pid = std::strtol(info->c_str() + at + 5, nullptr, 10);
  return pid > 0 ? static_cast<pid_t>(pid) : 0;
}

void VmJob::Kill() {
  if (vmm_pidfd_) ::syscall(SYS_pidfd_send_signal, vmm_pidfd_.get(), SIGKILL, nullptr, 0);
}

Result<void> VmJob::SendMessage(const HostMessage& message) {
  std::string frame = TRY(EncodeHostMessage(message));
  std::lock_guard lock(send_mutex_);
  if (!channel_ || !begun_)
    return Error::Make(ErrorCode::kInvalidState, "the VM job is not running");
  return channel_->Send(frame);
}

Result<void> VmJob::Signal(int signal) {
  return SendMessage(SignalMessage{signal});
}

Result<void> VmJob::Input(std::string_view data) {
  while (true) {
    std::string_view part = data.substr(0, kMaxChunkBytes);
    TRY(SendMessage(StdinMessage{std::string(part)}));
    data.remove_prefix(part.size());
    if (data.empty()) return {};
  }
}

Result<void> VmJob::Resize(TerminalSize size) {
  return SendMessage(ResizeMessage{size});
}

Result<JobResult> VmJob::Wait(const OutputCallback& on_output) {
  if (!channel_) return Error::Make(ErrorCode::kInvalidState, "the VM job is not running");
  JobResult result;
  bool timed_out = false;
  auto outcome = [&]() -> Result<void> {
    for (;;) {
      std::chrono::milliseconds wait{-1};
      if (timeout_.count() > 0) {
        auto left = started_ + timeout_ + kTimeoutGrace - Clock::now();
        wait = std::max(std::chrono::milliseconds(0),
                        std::chrono::duration_cast<std::chrono::milliseconds>(left));
      }
      auto frame = channel_->Receive(wait);
      if (!frame && frame.error().code() == ErrorCode::kTimeout) {
        timed_out = true;
        return {};
      }
      if (!frame) return frame.error();
      if (!*frame) {
        return Error::Make(
            ErrorCode::kIo,
            fmt::format("the VM ended before its job reported an exit; console: {}", ConsoleLog()));
      }
      GuestMessage message = TRY(DecodeGuestMessage(**frame));
      if (auto* output = std::get_if<OutputMessage>(&message)) {
        if (on_output) {
          on_output(output->stream, output->data);
          continue;
        }
        std::string& kept =
            output->stream == OutputStream::kStdout ? result.stdout_data : result.stderr_data;
        size_t room = kOutputLimitBytes - std::min(kOutputLimitBytes, kept.size());
        kept.append(output->data, 0, std::min(room, output->data.size()));
        result.output_dropped_bytes += output->data.size() - std::min(room, output->data.size());
      } else if (auto* exit = std::get_if<ExitMessage>(&message)) {
        result.termination = exit->termination;
        result.exit_code = exit->exit_code;
        result.signal = exit->signal;
        result.usage.ru_utime.tv_sec = static_cast<time_t>(exit->user_cpu_us / 1000000);
        result.usage.ru_utime.tv_usec = static_cast<suseconds_t>(exit->user_cpu_us % 1000000);
        result.usage.ru_stime.tv_sec = static_cast<time_t>(exit->system_cpu_us / 1000000);
        result.usage.ru_stime.tv_usec = static_cast<suseconds_t>(exit->system_cpu_us % 1000000);
        result.usage.ru_maxrss = static_cast<long>(exit->max_rss_kib);
        result.cgroup = exit->cgroup;
        result.output_dropped_bytes += exit->output_dropped_bytes;
        result.wall = std::chrono::nanoseconds(exit->wall_ns);
        return {};
      } else if (auto* failed = std::get_if<FailedMessage>(&message)) {
        return Error::Make(failed->code, fmt::format("in the VM: {}", failed->message));
      } else {
        return Error::Make(ErrorCode::kCorrupt, "the guest sent start twice");
      }
    }
  }();
  // The result is in hand (or the guest is not to be trusted further): the
  // VM goes now rather than when the guest powers itself off.
  Kill();
  {
    std::lock_guard lock(send_mutex_);
    channel_.reset();
  }
  auto vmm = jail_.Wait(vmm_);
  if (vmm) vmm_usage_ = vmm->cgroup;
  if (!outcome) {
    std::string qemu_err = vmm ? vmm->stderr_data : std::string();
    if (qemu_err.size() > 2048) qemu_err = qemu_err.substr(qemu_err.size() - 2048);
    return qemu_err.empty() ? outcome.error()
                            : std::move(outcome.error()).WithContext("qemu: " + qemu_err);
  }
  if (timed_out) {
    result.termination = Termination::kTimedOut;
    result.signal = SIGKILL;
    result.exit_code = -1;
  }
  return result;
}

Result<void> VmJob::Destroy() {
  if (destroyed_) return {};
  destroyed_ = true;
  Kill();
  {
    std::lock_guard lock(send_mutex_);
    channel_.reset();
  }
  Result<void> jail = {};
  if (vmm_created_) jail = jail_.Destroy(vmm_);
  vmm_pidfd_.reset();
  Result<void> files = RemoveTree(run_dir_);
  TRY(jail);
  return files;
}

}  // namespace ralph::sandbox::vm
