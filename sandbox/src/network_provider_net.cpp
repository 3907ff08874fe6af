// The production NetworkProviderInterface: JobNetwork::Create from
// sandbox/net. CMake compiles this file when ralph_sandbox_net exists and
// network_provider_none.cpp otherwise.
#include "sandbox/net/network_service.h"
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
  // JobNetwork::Create uses the process-wide default service; starting it
  // early (under its own lock) is all the preparation there is.
  Result<void> Prepare() override {
    TRY(NetworkService::Default());
    return {};
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
