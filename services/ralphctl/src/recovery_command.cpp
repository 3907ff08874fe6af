// `ralphctl recovery reboot`: the operator's break-glass, through ralphd
// (docs/ralphd.md "Recovery reboot"), on the console or from a paired
// client over the HTTPS API.
#include <fmt/format.h>

#include "services/ralphctl/command.h"
#include "services/ralphd/commands.h"
#include "transport.h"

namespace ralph::ralphctl {
namespace {

using nlohmann::json;

constexpr std::string_view kUsage =
    R"(usage: ralphctl recovery reboot [--reason TEXT] [options]

Arms RECOVERY for the next boot only (BootNext; the committed slot stays
committed and first in BootOrder) and reboots the appliance into it. The
request, who made it and the reason are in the audit log before the
machine goes down. RECOVERY diagnoses and restores by itself where the
situation is clear, and otherwise waits for the operator on the console.

options:
  --reason TEXT               why, for the audit log
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --remote https://HOST:PORT  an appliance's HTTPS API instead
  --identity DIR              the paired client identity for --remote
  --json                      machine-readable output
)";

constexpr OptionSpec kOptions[] = {
    {"--socket", true}, {"--json", false}, {"--help", false},
    {"--reason", true}, kRemoteOption,     kIdentityOption,
};

}  // namespace

int RunRecoveryCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("recovery", args, kOptions, kUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("recovery", *bad);
  if (parsed.positional != std::vector<std::string>{"reboot"}) {
    return UsageError("recovery", "expected 'reboot'");
  }
  json body = json::object();
  if (auto reason = parsed.Value("--reason")) body["reason"] = *reason;
  Result<std::unique_ptr<RalphdTransport>> transport = OpenTransport(parsed);
  if (!transport) return Failed("recovery reboot", transport.error());
  Result<json> reply =
      (*transport)->Call({.verb = "POST", .path = "/v1/recovery/reboot", .body = body});
  if (!reply) return Failed("recovery reboot", reply.error());
  if (parsed.Has("--json")) {
    fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  } else {
    fmt::print("RECOVERY is armed for the next boot; the appliance is rebooting\n");
  }
  return kExitOk;
}

}  // namespace ralph::ralphctl
