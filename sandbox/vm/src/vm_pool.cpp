#include "sandbox/vm/vm_pool.h"

namespace ralph::sandbox::vm {

Result<void> VmPool::Fill() {
  while (TRY(FillOne())) {
  }
  return {};
}

Result<bool> VmPool::FillOne() {
  if (waiting() >= size_) return false;
  std::unique_ptr<VmJob> vm;
  if (make_jail_) {
    std::unique_ptr<SandboxService> jail = TRY_CTX(make_jail_(), "making a pooled VM's jail");
    vm = TRY_CTX(VmJob::Boot(std::move(jail), options_, shape_), "booting a pooled VM");
  } else {
    vm = TRY_CTX(VmJob::Boot(*jail_, options_, shape_), "booting a pooled VM");
  }
  std::lock_guard lock(mutex_);
  waiting_.push_back(std::move(vm));
  return true;
}

Result<std::unique_ptr<VmJob>> VmPool::Take(const SandboxSpec& spec) {
  if (!Fits(spec, shape_)) return std::unique_ptr<VmJob>();
  std::unique_ptr<VmJob> vm;
  {
    std::lock_guard lock(mutex_);
    if (waiting_.empty()) return std::unique_ptr<VmJob>();
    vm = std::move(waiting_.front());
    waiting_.pop_front();
  }
  if (auto begun = vm->Begin(spec); !begun) {
    (void)vm->Destroy();
    return begun.error();
  }
  return vm;
}

Result<void> VmPool::Drain() {
  std::deque<std::unique_ptr<VmJob>> drained;
  {
    std::lock_guard lock(mutex_);
    drained.swap(waiting_);
  }
  Result<void> outcome = {};
  for (std::unique_ptr<VmJob>& vm : drained) {
    Result<void> destroyed = vm->Destroy();
    if (!destroyed && outcome) outcome = destroyed.error();
  }
  return outcome;
}

size_t VmPool::waiting() const {
  std::lock_guard lock(mutex_);
  return waiting_.size();
}

}  // namespace ralph::sandbox::vm
