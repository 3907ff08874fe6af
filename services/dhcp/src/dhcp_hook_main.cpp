// ralph-dhcp-hook: dhcpcd's `script` in a slot (no shell there). dhcpcd runs
// it on every lease event with the lease in the environment; it keeps
// /run/ralph/resolv.conf (what /etc/resolv.conf links to) current. See
// services/dhcp/resolver.h.
#include <unistd.h>

#include <map>
#include <string>

#include "platform/log.h"
#include "services/dhcp/resolver.h"

extern char** environ;

int main() {
  using namespace ralph;
  LogInit("ralph-dhcp-hook", LogSink::kStderr);
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string text = *entry;
    size_t eq = text.find('=');
    if (eq != std::string::npos) env[text.substr(0, eq)] = text.substr(eq + 1);
  }
  auto update = dhcp::PlanDnsUpdate(env);
  if (!update) {
    LogError("{}", update.error().ToString());
    return 1;
  }
  if (update->action == dhcp::DnsAction::kNone) return 0;
  if (auto applied = dhcp::ApplyDnsUpdate(*update); !applied) {
    LogError("{}: {}", update->why, applied.error().ToString());
    return 1;
  }
  LogInfo("{}", update->why);
  return 0;
}
