#include "sandbox/vm/vm_spec.h"

#include <sys/un.h>

#include <fmt/format.h>

#include "machine.h"

namespace ralph::sandbox::vm {
namespace {

Error Invalid(std::string_view field, std::string_view what) {
  return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{}: {}", field, what));
}

// QEMU splits option values on ',' (a literal comma is written ",,"); a path
// holding one, or a control character, is refused rather than escaped, so
// nothing a path says can become another option.
Result<void> CheckPath(std::string_view field, const std::string& path) {
  if (path.empty() || path.front() != '/') return Invalid(field, "must be an absolute path");
  for (char c : path) {
    if (c == ',') return Invalid(field, "must not contain ','");
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Invalid(field, "must not contain control characters");
    }
  }
  return {};
}

std::string KernelCommandLine(const MachineArgs& machine, const std::string& extra) {
  std::string line = fmt::format("console={} panic=-1 quiet", machine.console);
  for (const std::string* part : {&machine.kernel_args, &extra}) {
    if (!part->empty()) line += " " + *part;
  }
  return line;
}

}  // namespace

Result<void> ValidateVmSpec(const VmSpec& spec) {
  if (spec.memory_bytes < kMinVmMemoryBytes) {
    return Invalid("memory_bytes", fmt::format("must be at least {} MiB", kMinVmMemoryBytes >> 20));
  }
  if (spec.memory_bytes % (1ull << 20) != 0) return Invalid("memory_bytes", "must be whole MiB");
  if (spec.cpus == 0 || spec.cpus > kMaxVmCpus) {
    return Invalid("cpus", fmt::format("must be 1..{}", kMaxVmCpus));
  }
  TRY(CheckPath("kernel", spec.kernel));
  TRY(CheckPath("initrd", spec.initrd));
  for (char c : spec.kernel_args) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '"') {
      return Invalid("kernel_args", "must not contain quotes or control characters");
    }
  }
  if (spec.disks.size() > 8) return Invalid("disks", "at most 8");
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    TRY(CheckPath(fmt::format("disks[{}].path", i), spec.disks[i].path));
  }
  switch (spec.control.transport) {
    case ControlTransport::kVsock:
      if (spec.control.guest_cid < kMinGuestCid || spec.control.guest_cid == UINT32_MAX) {
        return Invalid("control.guest_cid",
                       fmt::format("must be {}..{}", kMinGuestCid, UINT32_MAX - 1));
      }
      break;
    case ControlTransport::kVirtioSerial:
      TRY(CheckPath("control.socket_path", spec.control.socket_path));
      if (spec.control.socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
        return Invalid("control.socket_path",
                       fmt::format("longer than {} bytes", sizeof(sockaddr_un::sun_path) - 1));
      }
      break;
  }
  if (!spec.console_log.empty()) TRY(CheckPath("console_log", spec.console_log));
  if (!spec.qemu_binary.empty()) TRY(CheckPath("qemu_binary", spec.qemu_binary));
  return {};
}

Result<std::vector<std::string>> QemuCommandLine(const VmSpec& spec) {
  TRY(ValidateVmSpec(spec));
  MachineArgs machine = MachineFor(spec.accel, spec.tsc_khz);
  std::vector<std::string> argv = {
      spec.qemu_binary.empty() ? machine.qemu_binary : spec.qemu_binary,
      "-machine",
      machine.machine,
      // TCG's translation cache defaults to 1 GiB on a 64-bit host; 64 MiB
      // keeps the VMM's own memory small next to the guest's (it is charged
      // to the job's cgroup).
      "-accel",
      spec.accel == Accel::kKvm ? "kvm" : "tcg,tb-size=64",
      "-cpu",
      machine.cpu,
      "-m",
      fmt::format("{}M", spec.memory_bytes >> 20),
      "-smp",
      std::to_string(spec.cpus),
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      "-display",
      "none",
      "-monitor",
      "none",
      "-no-reboot",
      // QEMU's own seccomp filter: no obsolete syscalls, no setuid & co.,
      // no fork/exec, no scheduler or affinity changes.
      "-sandbox",
      "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
      "-kernel",
      spec.kernel,
      "-initrd",
      spec.initrd,
      // panic=-1: a guest panic reboots, and -no-reboot turns that into
      // QEMU's exit instead of a hung VM.
      "-append",
      KernelCommandLine(machine, spec.kernel_args),
  };
  auto add = [&argv](std::string option, std::string value) {
    argv.push_back(std::move(option));
    argv.push_back(std::move(value));
  };
  if (spec.console_log.empty()) {
    add("-chardev", "null,id=console");
  } else {
    add("-chardev", fmt::format("file,id=console,path={}", spec.console_log));
  }
  add("-serial", "chardev:console");
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    const VmDisk& disk = spec.disks[i];
    bool read_only = disk.access == DiskAccess::kReadOnly;
    add("-drive", fmt::format("id=disk{},file={},format=raw,if=none,cache=none,aio=threads{}", i,
                              disk.path, read_only ? ",readonly=on" : ""));
    add("-device", fmt::format("virtio-blk-device,drive=disk{}", i));
  }
  switch (spec.control.transport) {
    case ControlTransport::kVsock:
      add("-device", fmt::format("vhost-vsock-device,guest-cid={}", spec.control.guest_cid));
      break;
    case ControlTransport::kVirtioSerial:
      // The host listens and QEMU connects when it starts, so the host
      // waits on its accept (state) rather than on a socket file to appear;
      // the guest's port is connected before the guest boots.
      add("-chardev", fmt::format("socket,id=control,path={}", spec.control.socket_path));
      add("-device", "virtio-serial-device,max_ports=2");
      add("-device", fmt::format("virtserialport,chardev=control,name={}", kControlPortName));
      break;
  }
  return argv;
}

}  // namespace ralph::sandbox::vm
