#include "sandbox/vm/vm_pool.h"

namespace ralph::sandbox::vm {

Result<void> VmPool::Fill() {
  while (waiting_.size() < size_) {
    waiting_.push_back(TRY_CTX(VmJob::Boot(jail_, options_, shape_), "booting a pooled VM"));
  }
  return {};
}

Result<std::unique_ptr<VmJob>> VmPool::Take(const SandboxSpec& spec) {
  if (waiting_.empty() || !Fits(spec, shape_)) return std::unique_ptr<VmJob>();
  std::unique_ptr<VmJob> vm = std::move(waiting_.front());
  waiting_.pop_front();
  if (auto begun = vm->Begin(spec); !begun) {
    (void)vm->Destroy();
    return begun.error();
  }
  return vm;
}

}  // namespace ralph::sandbox::vm
