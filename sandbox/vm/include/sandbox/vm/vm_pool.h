// VmPool: guests booted ahead, so a VM job's start hands over a waiting VM
// (VmJob::Boot, then Begin) instead of booting one. Every VM of a pool has
// one shape (a SandboxSpec: base image, memory, disk, CPU share, as a
// policy profile sizes it); a job that Fits the shape takes one, a job that
// does not gets none (the caller boots one for it: VmJob::Start). A VM
// takes one job and is destroyed with it: a used VM is never reused.
//
// Two ways to give QEMU its jails:
//   - one SandboxService for every VM (the first constructor): then the
//     pool, like that service, is used from one thread;
//   - a JailFactory: each VM is booted in a service of its own that the VM
//     keeps (VmJob::Boot with an owned jail). Then Take, Drain and waiting
//     are safe from any thread while another thread runs FillOne: a boot
//     (seconds under TCG) happens outside the pool's lock, so a job's
//     start never waits for one; the filler runs off the job's path.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "platform/result.h"
#include "sandbox/service.h"
#include "sandbox/vm/vm_job.h"

namespace ralph::sandbox::vm {

class VmPool {
 public:
  using JailFactory = std::function<Result<std::unique_ptr<SandboxService>>()>;

  VmPool(SandboxService& jail, VmJobOptions options, SandboxSpec shape, size_t size)
      : jail_(&jail), options_(std::move(options)), shape_(std::move(shape)), size_(size) {}
  VmPool(JailFactory make_jail, VmJobOptions options, SandboxSpec shape, size_t size)
      : make_jail_(std::move(make_jail)),
        options_(std::move(options)),
        shape_(std::move(shape)),
        size_(size) {}

  // Boots VMs until `size` wait. A boot's error is returned (the VMs booted
  // before it stay).
  Result<void> Fill();
  // Boots one VM when fewer than `size` wait; false when none was needed.
  Result<bool> FillOne();
  // A waiting VM started with `spec`, or nullptr when none waits or `spec`
  // does not fit the pool's shape. A VM whose Begin fails is destroyed and
  // its error returned.
  Result<std::unique_ptr<VmJob>> Take(const SandboxSpec& spec);
  // Destroys every waiting VM (QEMU, its jail, its run directory).
  Result<void> Drain();
  size_t waiting() const;
  size_t size() const { return size_; }
  const SandboxSpec& shape() const { return shape_; }

 private:
  SandboxService* jail_ = nullptr;
  JailFactory make_jail_;
  VmJobOptions options_;
  SandboxSpec shape_;
  size_t size_;
  mutable std::mutex mutex_;
  std::deque<std::unique_ptr<VmJob>> waiting_;
};

}  // namespace ralph::sandbox::vm
