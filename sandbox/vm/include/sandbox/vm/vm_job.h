// A VM job: one SandboxSpec run in its own QEMU microVM, with the namespace
// sandbox still around the job inside the guest (ralph-guest, the guest
// agent). The host side:
//
//   - the guest's view of the spec (GuestSpec): the base image becomes
//     /dev/vda, mounted read-only in the guest; the job's state disk
//     (/dev/vdb, an ext4 made on the host with room for the job's upper
//     volume of exactly limits.disk_bytes) holds the sandbox's state there;
//   - QEMU confined the way Firecracker's jailer confines its VMM (VmmSpec):
//     QEMU is itself the PID 1 of a namespace sandbox job of the host's
//     SandboxService: an unprivileged mapped uid without capabilities, its
//     own user, pid, mount, network, ipc and uts namespaces and no network
//     device, a root holding only QEMU, its libraries and firmware, and the
//     job's own images and control socket; the sandbox's seccomp allowlist
//     and QEMU's own `-sandbox on` under it; a cgroup with the guest's
//     memory plus QEMU's overhead, and the job's CPU share;
//   - the control channel (control_channel.h): virtio-serial to a unix
//     socket in the job's run directory (vsock where the host has it);
//   - killing the job kills QEMU, the jail's PID 1, and with it the VM;
//     Destroy leaves no process, cgroup, mount, socket or file behind.
//
// Not yet: the guest's network (a tap in the job's netns behind the same
// nftables rules), binds into the guest, a directory as the base, the pool
// of pre-booted guests; these specs are refused naming what is missing.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/service.h"
#include "sandbox/spec.h"
#include "sandbox/vm/control_channel.h"
#include "sandbox/vm/vm_spec.h"

namespace ralph::sandbox::vm {

// Paths inside the VMM's jail (what QEMU's command line names).
inline constexpr const char* kJailRunDir = "/run/vm";

struct VmJobOptions {
  // Per-job run directories (images, sockets, console log) are made here.
  std::string run_dir;
  std::string guest_kernel;  // ralph-vm-guest's vmlinuz
  std::string guest_initrd;  // ralph-vm-guest's initrd.img
  Accel accel = Accel::kTcg;
  // What the guest gets beyond the job's own memory limit: its kernel, the
  // unpacked initrd, the guest agent and the sandbox's page cache.
  uint64_t guest_overhead_bytes = 256ull << 20;
  // What QEMU itself needs beyond the guest's memory (TCG's 64 MiB
  // translation cache, its threads, the device emulation).
  uint64_t vmm_overhead_bytes = 192ull << 20;
  // How long a guest may take from QEMU's start to the guest agent's
  // answer to kStart (TCG on a loaded host: seconds).
  std::chrono::milliseconds boot_timeout{std::chrono::seconds(120)};
  // The uids the jail's service maps its jobs' root to
  // (ServiceOptions::ids): QEMU's run directory, state disk and control
  // socket are owned by that uid, and nothing else of the host is.
  IdMapping jail_ids;
};

// The spec the guest agent runs, from the host's `spec`: base → the guest's
// /dev/vda mount. kUnsupported naming the field for what a VM job cannot
// have yet (binds, network, a directory base).
Result<SandboxSpec> GuestSpec(const SandboxSpec& spec);

// The guest's memory for a job: its limit plus the overhead, in whole MiB.
uint64_t GuestMemoryBytes(const SandboxSpec& spec, const VmJobOptions& options);

// The jail's spec: QEMU with `qemu_argv` as the PID 1 of a namespace job
// whose root is `vmm_root` (the empty skeleton MakeVmmRoot makes), seeing
// only QEMU's files and `run_dir` (as kJailRunDir). Pure.
SandboxSpec VmmSpec(const SandboxSpec& job, const VmJobOptions& options,
                    const std::vector<std::string>& qemu_argv, const std::string& vmm_root,
                    const std::string& run_dir);

// Whether `job` may run in a VM booted for `shape` (VmJob::Boot): the same
// base image and I/O weight, at most its memory, disk and CPU share (the
// guest's sandbox then holds the job to its own, smaller limits).
// kInvalidArgument naming the limit.
Result<void> Fits(const SandboxSpec& job, const SandboxSpec& shape);

class VmJob {
 public:
  // Boots a VM for `spec` and starts the job in it (Boot, then Begin);
  // returns once the guest agent says the job runs (or with its error).
  // `jail` runs QEMU.
  static Result<std::unique_ptr<VmJob>> Start(SandboxService& jail, const VmJobOptions& options,
                                              const SandboxSpec& spec);
  // Boots a VM sized for jobs like `shape` (its base image, memory, disk,
  // CPU share) and returns once the guest agent says it is ready, with no
  // job yet: what a pool keeps (VmPool).
  static Result<std::unique_ptr<VmJob>> Boot(SandboxService& jail, const VmJobOptions& options,
                                             const SandboxSpec& shape);
  // Boot in a jail service of the VM's own, which it keeps (and destroys
  // last): a VM that moves between threads (a pool's, then its job's)
  // takes the only user of its service with it.
  static Result<std::unique_ptr<VmJob>> Boot(std::unique_ptr<SandboxService> jail,
                                             const VmJobOptions& options, const SandboxSpec& shape);
  // Starts `spec` in a VM from Boot (Fits its shape), once: a VM never
  // takes a second job.
  Result<void> Begin(const SandboxSpec& spec);
  ~VmJob();  // Destroy()

  // Streams the job's output until it ends, then the result as a namespace
  // job reports it (exec records are not carried across yet). Once.
  Result<JobResult> Wait(const OutputCallback& on_output = {});
  // Kills the VM (QEMU, the jail's PID 1). Safe from any thread.
  void Kill();
  // Sends a signal to the job inside the guest. Safe from any thread while
  // the job runs (one frame at a time goes out; Wait only receives), like
  // Input and Resize.
  Result<void> Signal(int signal);
  // A pty job's input (empty: its end) and window size. The call blocks
  // while the guest has not read what was sent before (the caller queues).
  Result<void> Input(std::string_view data);
  Result<void> Resize(TerminalSize size);
  // Removes QEMU's jail and the run directory; idempotent.
  Result<void> Destroy();

  const std::string& run_dir() const { return run_dir_; }
  // A pidfd of QEMU (the jail's PID 1) while the VM exists, else -1: the
  // caller may SIGKILL it from any thread (Kill does).
  int vmm_pidfd() const { return vmm_pidfd_.get(); }
  // QEMU's pid in the caller's pid namespace (the jail's PID 1), while it
  // runs; 0 when it is not known.
  pid_t vmm_pid() const;
  // After Wait: what QEMU's jail used (its cgroup's memory peak and OOM
  // kills: the host's view, which a guest cannot forge).
  const CgroupUsage& vmm_usage() const { return vmm_usage_; }
  // The guest's serial console so far (kernel and guest-agent messages).
  std::string ConsoleLog() const;

 private:
  VmJob(SandboxService& jail, std::string run_dir) : jail_(jail), run_dir_(std::move(run_dir)) {}
  VmJob(std::unique_ptr<SandboxService> owned, std::string run_dir)
      : owned_jail_(std::move(owned)), jail_(*owned_jail_), run_dir_(std::move(run_dir)) {}
  Result<void> SendMessage(const HostMessage& message);
  static Result<std::unique_ptr<VmJob>> BootIn(SandboxService& jail,
                                               std::unique_ptr<SandboxService> owned,
                                               const VmJobOptions& options,
                                               const SandboxSpec& shape);

  std::unique_ptr<SandboxService> owned_jail_;  // destroyed after ~VmJob's Destroy
  SandboxService& jail_;
  std::string run_dir_;
  JobId vmm_;
  bool vmm_created_ = false;
  UniqueFd vmm_pidfd_;
  // Receive runs on Wait's thread alone; sends and the channel's end are
  // under send_mutex_ (Signal, Input and Resize come from any thread).
  std::mutex send_mutex_;
  std::unique_ptr<ControlChannel> channel_;
  std::chrono::milliseconds timeout_{0};
  std::chrono::steady_clock::time_point started_;
  bool destroyed_ = false;
  bool begun_ = false;
  SandboxSpec shape_;
  std::chrono::milliseconds boot_timeout_{0};
  CgroupUsage vmm_usage_;
};

// Removes the run directories (`vm-<pid>-<n>`) under `run_dir` whose owner
// process is gone (a host process killed mid-job: its QEMU died with it,
// by the jail's parent-death signal, but its state disk stayed). A
// directory of a live pid, or of a pid reused since, is left alone.
// Returns how many were removed.
Result<size_t> SweepDeadRunDirs(const std::string& run_dir);

// Whether this host can run VM jobs with `options`: QEMU's binary, the
// guest kernel and initrd, the run directory (made when missing), the
// accelerator (TCG: the jail cannot use KVM yet). kUnsupported naming what
// is missing and the package or option that gives it.
Result<void> CheckVmHost(const VmJobOptions& options);

// The directory QEMU's jail uses as its root (made once under `dir`: the
// merged-/usr links and nothing else).
Result<std::string> MakeVmmRoot(const std::string& dir);

}  // namespace ralph::sandbox::vm
