// ralph-dhcpcd-hook: the slot's dhcpcd `script` (a slot has no shell for
// dhcpcd-run-hooks). dhcpcd runs it as root on every event with the lease in
// its environment; it keeps /run/ralph/resolv.conf in step with the lease's
// DNS servers (replaced atomically, so readers never see half a file).
// Exit status 0 unless the lease was malformed or the file could not be
// written (dhcpcd logs a failing script and carries on).
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/log.h"
#include "services/network/resolv_conf.h"

namespace {

using ralph::Error;
using ralph::Result;
namespace net = ralph::network;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

Result<void> Apply(const net::ResolvConfPlan& plan) {
  switch (plan.action) {
    case net::ResolvConfPlan::Action::kNone: return {};
    case net::ResolvConfPlan::Action::kRemove:
      if (::unlink(net::kResolvConfPath) != 0 && errno != ENOENT) {
        return Error::FromErrno(fmt::format("removing {}", net::kResolvConfPath), errno);
      }
      return {};
    case net::ResolvConfPlan::Action::kWrite: {
      std::string temporary = fmt::format("{}.{}", net::kResolvConfPath, ::getpid());
      TRY(ralph::WriteWholeFile(temporary, plan.content, 0644));
      if (::rename(temporary.c_str(), net::kResolvConfPath) != 0) {
        int error = errno;
        ::unlink(temporary.c_str());
        return Error::FromErrno(fmt::format("renaming {} to {}", temporary, net::kResolvConfPath),
                                error);
      }
      return {};
    }
  }
  return {};
}

}  // namespace

int main() {
  ralph::LogInit("ralph-dhcpcd-hook", ralph::LogSink::kKmsg);
  net::LeaseEnvironment lease{Env("reason"), Env("interface"), Env("new_domain_name_servers"),
                              Env("new_domain_search"), Env("new_domain_name")};
  auto plan = net::PlanResolvConf(lease);
  if (!plan) {
    ralph::LogError("{}", plan.error().ToString());
    return 1;
  }
  auto applied = Apply(*plan);
  if (!applied) {
    ralph::LogError("{} on {}: {}", lease.reason, lease.interface, applied.error().ToString());
    return 1;
  }
  if (plan->action == net::ResolvConfPlan::Action::kWrite) {
    ralph::LogInfo("{} on {}: DNS servers {}", lease.reason, lease.interface, lease.name_servers);
  } else if (plan->action == net::ResolvConfPlan::Action::kRemove) {
    ralph::LogInfo("{} on {}: no DNS servers", lease.reason, lease.interface);
  }
  return 0;
}
