// VmPool: guests booted ahead, so a VM job's start hands over a waiting VM
// (VmJob::Boot, then Begin) instead of booting one. Every VM of a pool has
// one shape (a SandboxSpec: base image, memory, disk, CPU share, as a
// policy profile sizes it); a job that Fits the shape takes one, a job that
// does not gets none (the caller boots one for it: VmJob::Start). A VM
// takes one job and is destroyed with it: a used VM is never reused.
//
// Not thread-safe, like the SandboxService it boots QEMU's jails in; Fill
// boots synchronously (seconds each under TCG), so its caller runs it off
// a job's path (after handing a VM over, between jobs).
#pragma once

#include <deque>
#include <memory>

#include "platform/result.h"
#include "sandbox/service.h"
#include "sandbox/vm/vm_job.h"

namespace ralph::sandbox::vm {

class VmPool {
 public:
  VmPool(SandboxService& jail, VmJobOptions options, SandboxSpec shape, size_t size)
      : jail_(jail), options_(std::move(options)), shape_(std::move(shape)), size_(size) {}

  // Boots VMs until `size` wait. A boot's error is returned (the VMs booted
  // before it stay).
  Result<void> Fill();
  // A waiting VM started with `spec`, or nullptr when none waits or `spec`
  // does not fit the pool's shape. A VM whose Begin fails is destroyed and
  // its error returned.
  Result<std::unique_ptr<VmJob>> Take(const SandboxSpec& spec);
  size_t waiting() const { return waiting_.size(); }

 private:
  SandboxService& jail_;
  VmJobOptions options_;
  SandboxSpec shape_;
  size_t size_;
  std::deque<std::unique_ptr<VmJob>> waiting_;
};

}  // namespace ralph::sandbox::vm
