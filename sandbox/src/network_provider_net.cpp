// The production NetworkProviderInterface: a NetworkService from
// sandbox/net, owned by the provider. CMake compiles this file when
// ralph_sandbox_net exists and network_provider_none.cpp otherwise.
#include <mutex>

#include "sandbox/service.h"

namespace ralph::sandbox {
namespace {
class ServiceNetworkProvider final : public NetworkProviderInterface {
 public:
  ServiceNetworkProvider(const NetworkServiceConfig& config, NetEventSinkInterface* events)
      : config_(config), events_(events) {}
  Result<std::unique_ptr<JobNetwork>> Create(const std::string& job_id, pid_t child_pid,
                                             const NetworkSpec& spec) override {
    NetworkService* service = TRY(Service());
    return service->CreateJob(job_id, child_pid, spec, events_);
  }
  Result<void> Prepare(const NetworkSpec& spec) override {
    NetworkService* service = TRY(Service());
    // A table that cannot be prepared (a stale one in the way, a malformed
    // rule) is left to the job's start, which replaces the one or names the
    // other: not an error of the preparation.
    if (auto prepared = service->PrepareJob(spec); !prepared && config_.log)
      config_.log(LogLevel::kDebug,
                  prepared.error().WithContext("preparing the job's table").ToString());
    return {};
  }

 private:
  // The network service, started on first use (`ralph-sandbox run
  // --no-network` never starts it).
  Result<NetworkService*> Service() {
    std::lock_guard lock(mutex_);
    if (!service_)
      service_ = TRY_CTX(NetworkService::Start(config_), "starting the network service");
    return service_.get();
  }
  NetworkServiceConfig config_;
  NetEventSinkInterface* events_;
  std::mutex mutex_;
  std::unique_ptr<NetworkService> service_;
};
}  // namespace

std::unique_ptr<NetworkProviderInterface> MakeNetworkProvider(const NetworkServiceConfig& config,
                                                              NetEventSinkInterface* events) {
  return std::make_unique<ServiceNetworkProvider>(config, events);
}

std::unique_ptr<NetworkProviderInterface> MakeDefaultNetworkProvider(
    NetEventSinkInterface* events, std::function<void(LogLevel, const std::string&)> log) {
  NetworkServiceConfig config;
  config.log = std::move(log);
  // A job's veth and table go on the service's reaper thread: Destroy does
  // not wait out the kernel's RCU barriers of a link deletion.
  config.link_removal = LinkRemoval::kBackground;
  // Jobs started one after another with the same network spec (what a
  // long-running service mostly sees) find their nft table committed ahead:
  // their start only makes the veth.
  config.prepared_tables = 2;
  return MakeNetworkProvider(config, events);
}

Result<std::vector<std::string>> RemoveWarmNetworkTables() {
  return NetworkService::RemoveWarmTables(NetworkServiceConfig().ifname_prefix);
}

}  // namespace ralph::sandbox
