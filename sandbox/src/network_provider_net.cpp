// The production NetworkProviderInterface: JobNetwork::Create from
// sandbox/net. CMake compiles this file when ralph_sandbox_net exists and
// network_provider_none.cpp otherwise.
#include "sandbox/service.h"

namespace ralph::sandbox {
namespace {
class JobNetworkProvider final : public NetworkProviderInterface {
 public:
  explicit JobNetworkProvider(NetEventSinkInterface* events) : events_(events) {}
  Result<std::unique_ptr<JobNetwork>> Create(const std::string& job_id, pid_t child_pid,
                                             const NetworkSpec& spec) override {
    return JobNetwork::Create(job_id, child_pid, spec, events_);
  }

 private:
  NetEventSinkInterface* events_;
};
}  // namespace

std::unique_ptr<NetworkProviderInterface> MakeDefaultNetworkProvider(
    NetEventSinkInterface* events) {
  return std::make_unique<JobNetworkProvider>(events);
}

}  // namespace ralph::sandbox
