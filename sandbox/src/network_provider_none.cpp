// Builds without sandbox/net: no network provider, so jobs must disable
// their network (CreateJob says so). See network_provider_net.cpp.
#include "sandbox/service.h"

namespace ralph::sandbox {

std::unique_ptr<NetworkProviderInterface> MakeNetworkProvider(const NetworkServiceConfig&,
                                                              NetEventSinkInterface*) {
  return nullptr;
}

std::unique_ptr<NetworkProviderInterface> MakeDefaultNetworkProvider(
    NetEventSinkInterface*, std::function<void(LogLevel, const std::string&)>) {
  return nullptr;
}

Result<std::vector<std::string>> RemoveWarmNetworkTables() {
  return std::vector<std::string>{};
}

}  // namespace ralph::sandbox
