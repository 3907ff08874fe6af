// ralph-guest: PID 1 of a VM job's guest, the only program of its initrd.
// It mounts what the guest needs, loads the kernel modules the initrd lists
// (/etc/ralph/modules, in dependency order), opens the control channel
// (virtio-serial, or vsock with `ralph.control=vsock` on the kernel command
// line), takes one job, runs it in the namespace sandbox inside the guest
// (the same SandboxService as a namespace job: the second wall), streams
// its output, reports its exit and powers the VM off. One VM, one job.
//
// The job's root: /dev/vda (the job's base image, squashfs) mounted
// read-only on kGuestBasePath; /dev/vdb (an ext4 the host made for the job)
// is the sandbox's state directory, where its upper volume of exactly the
// job's disk quota lives.
#include <fcntl.h>
#include <linux/module.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "platform/arch.h"
#include "platform/file_io.h"
#include "platform/log.h"
#include "sandbox/service.h"
#include "sandbox/vm/control_channel.h"
#include "sandbox/vm/guest_paths.h"
#include "sandbox/vm/protocol.h"

namespace {

using ralph::Error;
using ralph::ErrorCode;
using ralph::Result;
using ralph::UniqueFd;
namespace sb = ralph::sandbox;
namespace vm = ralph::sandbox::vm;

Result<void> Mount(const char* source, const char* target, const char* type, unsigned long flags,
                   const char* data = nullptr) {
  std::error_code ec;
  std::filesystem::create_directories(target, ec);
  if (::mount(source, target, type, flags, data) != 0) {
    return Error::FromErrno(fmt::format("mounting {} on {}", type ? type : source, target), errno);
  }
  return {};
}

// The kernel unpacks the initrd into its initial root mount ("rootfs"),
// which pivot_root(2) cannot leave (EINVAL): the sandbox's job could not
// get its own root. So, as switch_root does, everything moves to a tmpfs
// mounted over it, which becomes the root.
Result<void> LeaveRootfs() {
  namespace fs = std::filesystem;
  TRY(Mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID, "mode=0755"));
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/", ec)) {
    std::string name = entry.path().filename().string();
    if (name == "newroot") continue;
    // /dev holds only the console node the kernel opened for our stdio;
    // devtmpfs replaces it.
    if (name != "dev") {
      fs::copy(entry.path(), "/newroot/" + name,
               fs::copy_options::recursive | fs::copy_options::copy_symlinks, ec);
      if (ec) return Error::FromErrno(fmt::format("copying /{} to the new root", name), ec.value());
    }
    fs::remove_all(entry.path(), ec);  // frees the initrd's memory; best effort
  }
  if (ec) return Error::FromErrno("listing the initrd", ec.value());
  ::mkdir("/newroot/dev", 0755);
  if (::chdir("/newroot") != 0) return Error::FromErrno("chdir /newroot", errno);
  if (::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) {
    return Error::FromErrno("moving the new root over rootfs", errno);
  }
  if (::chroot(".") != 0) return Error::FromErrno("chroot", errno);
  if (::chdir("/") != 0) return Error::FromErrno("chdir /", errno);
  return {};
}

Result<void> MountBasics() {
  constexpr unsigned long kSecure = MS_NOSUID | MS_NOEXEC;
  TRY(Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"));
  // A tty job's pty is opened here, in the guest's root (the sandbox's
  // posix_openpt, then the slave by its /dev/pts name): devtmpfs has no
  // ptmx of its own on the guest kernel.
  TRY(Mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620"));
  if (::access("/dev/ptmx", F_OK) != 0 && ::symlink("pts/ptmx", "/dev/ptmx") != 0) {
    return Error::FromErrno("symlink /dev/ptmx", errno);
  }
  TRY(Mount("proc", "/proc", "proc", kSecure | MS_NODEV));
  TRY(Mount("sysfs", "/sys", "sysfs", kSecure | MS_NODEV));
  TRY(Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", kSecure | MS_NODEV));
  TRY(Mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"));
  TRY(Mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"));
  return {};
}

// Loads each module listed (dependencies first, as the initrd's builder
// resolved them from modules.dep); the guest has no modprobe.
Result<void> LoadModules(const std::string& list_path) {
  std::string list = TRY(ralph::ReadWholeFile(list_path));
  std::istringstream lines(list);
  for (std::string path; std::getline(lines, path);) {
    if (path.empty()) continue;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
    unsigned int flags = 0;
    if (path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz")) {
      flags |= MODULE_INIT_COMPRESSED_FILE;
    }
    if (::syscall(SYS_finit_module, fd.get(), "", flags) != 0 && errno != EEXIST) {
      return Error::FromErrno(fmt::format("loading module {}", path), errno);
    }
  }
  return {};
}

// Devices appear when their driver's probe (and, for virtio-serial ports,
// the host's port announcement) has run, which module loading does not
// wait for. Bounded: a device that is not there in 30 s is not coming.
template <typename F>
auto WaitFor(std::string_view what, F attempt) -> decltype(attempt()) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    auto result = attempt();
    if (result || std::chrono::steady_clock::now() > deadline) {
      if (!result)
        return std::move(result.error()).WithContext(fmt::format("waiting for {}", what));
      return result;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Result<void> MountJobDisks() {
  TRY(WaitFor("/dev/vda", [] {
    return Mount("/dev/vda", vm::kGuestBasePath, "squashfs", MS_RDONLY | MS_NODEV | MS_NOSUID);
  }));
  TRY(WaitFor("/dev/vdb", [] {
    return Mount("/dev/vdb", vm::kGuestStatePath, "ext4", MS_NODEV | MS_NOSUID | MS_NOEXEC,
                 "nobarrier");
  }));
  return {};
}

bool KernelArg(const std::string& cmdline, std::string_view arg) {
  std::istringstream words(cmdline);
  for (std::string word; words >> word;) {
    if (word == arg) return true;
  }
  return false;
}

Result<vm::ControlChannel> OpenChannel(const std::string& cmdline) {
  if (KernelArg(cmdline, "ralph.control=vsock")) {
    return vm::ControlChannel(TRY(vm::AcceptGuestVsock(vm::kControlVsockPort)));
  }
  UniqueFd fd = TRY(
      WaitFor("the control port", [] { return vm::OpenGuestSerialPort(vm::kControlPortName); }));
  return vm::ControlChannel(std::move(fd));
}

Result<void> SendFailure(vm::ControlChannel& channel, const Error& error) {
  return channel.Send(
      TRY(vm::EncodeGuestMessage(vm::FailedMessage{error.code(), error.ToString()})));
}

vm::ExitMessage ToExit(const sb::JobResult& result) {
  vm::ExitMessage exit;
  exit.termination = result.termination;
  exit.exit_code = result.exit_code;
  exit.signal = result.signal;
  auto us = [](const timeval& tv) {
    return static_cast<uint64_t>(tv.tv_sec) * 1000000 + static_cast<uint64_t>(tv.tv_usec);
  };
  exit.user_cpu_us = us(result.usage.ru_utime);
  exit.system_cpu_us = us(result.usage.ru_stime);
  exit.max_rss_kib = static_cast<uint64_t>(result.usage.ru_maxrss);
  exit.cgroup = result.cgroup;
  exit.output_dropped_bytes = result.output_dropped_bytes;
  exit.wall_ns = static_cast<uint64_t>(result.wall.count());
  return exit;
}

// Everything the host sends after kStart, on a thread of its own while the
// main thread waits for the job: input, window size, signals. The host
// going away kills the job.
void ServeHost(vm::ControlChannel* channel, int pidfd, int terminal_fd) {
  for (;;) {
    auto frame = channel->Receive(std::chrono::milliseconds(-1));
    if (!frame || !*frame) break;
    auto message = vm::DecodeHostMessage(**frame);
    if (!message) break;
    if (auto* input = std::get_if<vm::StdinMessage>(&*message)) {
      if (terminal_fd >= 0 && !input->data.empty()) {
        (void)ralph::WriteAll(
            terminal_fd,
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(input->data.data()),
                                     input->data.size()),
            "the job's terminal");
      }
    } else if (auto* resize = std::get_if<vm::ResizeMessage>(&*message)) {
      if (terminal_fd >= 0) (void)sb::ResizeTerminal(terminal_fd, resize->size);
    } else if (auto* signal = std::get_if<vm::SignalMessage>(&*message)) {
      ::syscall(SYS_pidfd_send_signal, pidfd, signal->signal, nullptr, 0);
    } else {
      break;  // a second kStart: the host lost track; end the job
    }
  }
  ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
}

Result<void> RunJob(vm::ControlChannel& channel) {
  auto frame = TRY(channel.Receive(std::chrono::milliseconds(-1)));
  if (!frame) return Error::Make(ErrorCode::kNetwork, "the host closed the control channel");
  auto message = vm::DecodeHostMessage(*frame);
  if (!message) {
    TRY(SendFailure(channel, message.error()));
    return message.error();
  }
  auto* start = std::get_if<vm::StartMessage>(&*message);
  if (start == nullptr) {
    Error error = Error::Make(ErrorCode::kInvalidState, "the first message was not a start");
    TRY(SendFailure(channel, error));
    return error;
  }

  auto run = [&]() -> Result<sb::JobResult> {
    TRY(MountJobDisks());
    auto cgroups = TRY(sb::DetectCgroups("ralph-guest"));
    sb::ServiceOptions options;
    options.state_dir = std::string(vm::kGuestStatePath) + "/sandbox";
    options.name = "ralph-guest";
    options.seccomp_audit_arch = ralph::arch::SeccompAuditArch();
    options.max_pooled_volumes = 0;
    auto service = TRY(sb::SandboxService::Create(options, std::move(cgroups), nullptr));
    sb::JobId id = TRY(service->CreateJob(start->spec));
    TRY(service->Run(id));
    TRY(channel.Send(TRY(vm::EncodeGuestMessage(vm::StartedMessage{}))));
    UniqueFd pidfd(::fcntl(TRY(service->PidFd(id)), F_DUPFD_CLOEXEC, 3));
    UniqueFd terminal;
    if (start->spec.stdio == sb::StdioMode::kPty) terminal = TRY(service->TerminalFd(id));
    std::thread host(ServeHost, &channel, pidfd.get(), terminal.get());
    host.detach();  // blocked in a read until the VM powers off
    bool host_gone = false;
    auto result = service->Wait(id, [&](sb::OutputStream stream, std::string_view chunk) {
      while (!chunk.empty() && !host_gone) {
        std::string_view part = chunk.substr(0, vm::kMaxChunkBytes);
        chunk.remove_prefix(part.size());
        auto bytes = vm::EncodeGuestMessage(vm::OutputMessage{stream, std::string(part)});
        if (!bytes || !channel.Send(*bytes)) {
          host_gone = true;
          (void)service->Kill(id);
        }
      }
    });
    (void)service->Destroy(id);
    // The descriptors stay open: the host thread may still hold them, and
    // the VM powers off next.
    (void)pidfd.release();
    (void)terminal.release();
    return result;
  };
  auto result = run();
  if (!result) {
    TRY(SendFailure(channel, result.error()));
    return result.error();
  }
  return channel.Send(TRY(vm::EncodeGuestMessage(ToExit(*result))));
}

[[noreturn]] void PowerOff() {
  ::sync();
  ::reboot(RB_POWER_OFF);
  for (;;) ::pause();
}

}  // namespace

int main() {
  if (::getpid() != 1) {
    std::fprintf(stderr, "ralph-guest: runs only as a VM's PID 1\n");
    return 2;
  }
  ::setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
  auto fail = [](const Error& error) {
    ralph::LogError("ralph-guest: {}", error.ToString());
    PowerOff();
  };
  if (auto left = LeaveRootfs(); !left) fail(left.error());
  if (auto mounted = MountBasics(); !mounted) fail(mounted.error());
  if (auto loaded = LoadModules("/etc/ralph/modules"); !loaded) fail(loaded.error());
  auto cmdline = ralph::ReadWholeFile("/proc/cmdline");
  if (!cmdline) fail(cmdline.error());
  auto channel = OpenChannel(*cmdline);
  if (!channel) fail(channel.error());
  // The host (or the pool) waits for this before it hands the VM a job;
  // the accelerator probe (accel_probe.h) only for this.
  auto ready = vm::EncodeGuestMessage(vm::ReadyMessage{});
  if (!ready || !channel->Send(*ready) || KernelArg(*cmdline, "ralph.probe")) PowerOff();
  if (auto ran = RunJob(*channel); !ran) ralph::LogError("ralph-guest: {}", ran.error().ToString());
  PowerOff();
}
