#include "sandbox/vm/accel_probe.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/process.h"
#include "sandbox/vm/control_channel.h"
#include "sandbox/vm/protocol.h"

namespace ralph::sandbox::vm {
namespace {

// The probe's QEMU, killed and reaped on every path.
class ProbeProcess {
 public:
  explicit ProbeProcess(pid_t pid)
      : pid_(pid), pidfd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}
  ~ProbeProcess() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  int pidfd() const { return pidfd_.get(); }

 private:
  pid_t pid_;
  UniqueFd pidfd_;
};

}  // namespace

Result<AccelVerdict> ProbeAccelerator(const AccelProbeOptions& options) {
  if (options.guest_kernel.empty() || options.guest_initrd.empty() || options.work_dir.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "the accelerator probe needs the guest kernel, initrd and a work dir");
  }
  {
    UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm) {
      return AccelVerdict{Accel::kTcg, Error::FromErrno("open /dev/kvm", errno).ToString()};
    }
  }
  std::string socket_path = fmt::format("{}/kvm-probe-{}.sock", options.work_dir, ::getpid());
  UniqueFd listener = TRY(ListenUnix(socket_path));
  VmSpec spec;
  spec.memory_bytes = 256ull << 20;
  spec.kernel = options.guest_kernel;
  spec.initrd = options.guest_initrd;
  spec.kernel_args = "ralph.probe";
  spec.control = {ControlTransport::kVirtioSerial, 0, socket_path};
  spec.accel = Accel::kKvm;
  std::vector<std::string> argv = TRY(QemuCommandLine(spec));
  // Our own kernel and initrd, no disk, no network, QEMU's own seccomp
  // sandbox: the probe needs /dev/kvm, which the jail of a job's VMM does
  // not pass (vm_job.h).
  // QEMU's own messages say why KVM did not work ("KVM internal error").
  std::string log_path = fmt::format("{}/kvm-probe-{}.log", options.work_dir, ::getpid());
  // StartProgram opens an existing output file (it is meant for a console).
  TRY(WriteWholeFile(log_path, "", 0600));
  auto pid = StartProgram({.argv = argv,
                           .output = ProgramOutput::kFile,
                           .output_file = log_path,
                           .package = "qemu-system-x86"});
  if (!pid) {
    ::unlink(socket_path.c_str());
    return pid.error();
  }
  auto verdict = [&]() -> AccelVerdict {
    ProbeProcess qemu(*pid);
    auto accepted = AcceptOne(listener.get(), options.timeout, qemu.pidfd());
    if (!accepted) return {Accel::kTcg, "KVM probe: " + accepted.error().ToString()};
    ControlChannel channel(std::move(*accepted));
    auto frame = channel.Receive(options.timeout);
    if (!frame) return {Accel::kTcg, "KVM probe: " + frame.error().ToString()};
    if (!*frame) return {Accel::kTcg, "KVM probe: the guest ended without answering"};
    auto message = DecodeGuestMessage(**frame);
    if (!message || !std::holds_alternative<ReadyMessage>(*message)) {
      return {Accel::kTcg, "KVM probe: the guest's answer was not the probe's"};
    }
    return {Accel::kKvm, ""};
  }();
  if (verdict.accel == Accel::kTcg) {
    auto log = ReadWholeFile(log_path);
    if (log && !log->empty()) {
      std::string first_line = log->substr(0, log->find('\n'));
      verdict.reason += fmt::format(" (qemu: {})", first_line.substr(0, 512));
    }
  }
  ::unlink(log_path.c_str());
  ::unlink(socket_path.c_str());
  return verdict;
}

}  // namespace ralph::sandbox::vm
