// Which accelerator VM jobs can use on this host. /dev/kvm existing proves
// nothing (on some hosts a KVM guest never gets past its first
// instructions), so the probe boots the real guest with `ralph.probe` on
// its command line and KVM as the accelerator, and takes KVM only when the
// guest agent answered on its control channel within `timeout`; anything
// else (no /dev/kvm, QEMU refusing it, a guest that never answers) is TCG,
// with the reason.
#pragma once

#include <chrono>
#include <string>

#include "platform/result.h"
#include "sandbox/vm/vm_spec.h"

namespace ralph::sandbox::vm {

struct AccelVerdict {
  Accel accel = Accel::kTcg;
  std::string reason;  // why not KVM ("" with KVM)
};

struct AccelProbeOptions {
  std::string guest_kernel;
  std::string guest_initrd;
  // A scratch directory for the probe's socket (removed again).
  std::string work_dir;
  // A working KVM guest answers in well under a second; TCG is not tried.
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};
};

// kInvalidArgument for missing options; otherwise a verdict (never an
// error for a host without KVM).
Result<AccelVerdict> ProbeAccelerator(const AccelProbeOptions& options);

}  // namespace ralph::sandbox::vm
