// `ralphctl agent-image install FILE|status|rollback`: the agent image jobs
// with an agent run on, through ralphd (docs/agents.md "On the appliance").
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include <fmt/format.h>

#include "services/ralphctl/command.h"
#include "services/ralphd/commands.h"
#include "transport.h"

namespace ralph::ralphctl {
namespace {

using nlohmann::json;

constexpr std::string_view kUsage =
    R"(usage: ralphctl agent-image <subcommand> [options]

subcommands:
  status                      the current and previous agent images, and whether
                              the current one matched its recorded digest
  install FILE                install a signed agent-image bundle (a file on the
                              appliance): checked whole before anything is
                              written; it becomes current, the one before it is
                              kept for rollback. ralphd installs it while it
                              keeps serving; this waits for the outcome
  rollback                    make the previous image current again

options:
  --socket PATH               ralphd's socket (default /run/ralphd.sock)
  --remote https://HOST:PORT  an appliance's HTTPS API instead (FILE is then a
                              path on the appliance)
  --identity DIR              the paired client identity for --remote
  --json                      machine-readable output
)";

constexpr OptionSpec kOptions[] = {
    {"--socket", true}, {"--json", false}, {"--help", false}, kRemoteOption, kIdentityOption,
};

std::string Describe(const json& record) {
  if (!record.is_object()) return "none";
  std::string sha = record.value("sha256", "");
  return fmt::format("{} (sha256 {}, {} bytes, signed by {}, installed at {} unix seconds)",
                     record.value("version", "?"), sha, record.value("size", uint64_t{0}),
                     record.value("signer", "?"), record.value("installed", int64_t{0}));
}

Result<json> Call(const ParsedArgs& args, std::string verb, std::string path,
                  std::optional<json> body = std::nullopt) {
  std::unique_ptr<RalphdTransport> transport = TRY(OpenTransport(args));
  return transport->Call({.verb = std::move(verb), .path = std::move(path), .body = body});
}

// The install ralphd started at `started` has ended: its status ("state"
// "installed" or "failed"). ralphd keeps serving while it installs, so
// this asks after it until it is over.
Result<json> AwaitInstall(const ParsedArgs& args, const std::string& started) {
  while (true) {
    json status = TRY(Call(args, "GET", "/v1/agent-image"));
    const json& install = status["install"];
    if (!install.is_object() || install.value("started", "") != started) {
      return Error::Make(ErrorCode::kInternal,
                         "ralphd no longer reports the install (was it restarted?); see "
                         "`ralphctl agent-image status` and the audit log");
    }
    if (install.value("state", "") != "running") return install;
    ::usleep(250 * 1000);
  }
}

}  // namespace

int RunAgentImageCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("agent-image", args, kOptions, kUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("agent-image", *bad);
  const std::vector<std::string>& operands = parsed.positional;
  const std::string& verb = operands[0];
  const bool as_json = parsed.Has("--json");
  Result<json> reply = Error::Make(ErrorCode::kInternal, "unset");
  if (verb == "status" && operands.size() == 1) {
    reply = Call(parsed, "GET", "/v1/agent-image");
    if (reply && !as_json) {
      const json& r = *reply;
      if (r["store"].is_null()) {
        fmt::print("{}\n", r.value("note", "no agent-image store"));
        return kExitOk;
      }
      fmt::print("current:  {}\nprevious: {}\n", Describe(r["current"]), Describe(r["previous"]));
      if (r.value("usable", false)) {
        fmt::print("agent jobs run on the current image (its digest matched)\n");
      } else {
        fmt::print("agent jobs are refused: {}\n", r.value("problem", "no usable image"));
      }
      return kExitOk;
    }
  } else if (verb == "install" && operands.size() == 2) {
    std::string path = operands[1];
    // A local path is made absolute here (ralphd does not share our cwd);
    // with --remote it is the appliance's and is sent as given.
    if (!parsed.Has("--remote") && !path.empty() && path.front() != '/') {
      char resolved[PATH_MAX];
      if (::realpath(path.c_str(), resolved) == nullptr) {
        return Failed("agent-image install",
                      Error::FromErrno(fmt::format("'{}'", operands[1]), errno));
      }
      path = resolved;
    }
    reply = Call(parsed, "POST", "/v1/agent-image/install", json{{"path", path}});
    if (reply) reply = AwaitInstall(parsed, (*reply).value("started", ""));
    if (reply && (*reply)["state"] == "failed") {
      return Failed("agent-image install",
                    Error::Make(ErrorCode::kRefused, (*reply).value("error", "failed")));
    }
    if (reply && !as_json) {
      fmt::print("installed {}{}\n", Describe((*reply)["installed"]),
                 (*reply).value("reused", false) ? " (already on VAR: verified and reused)" : "");
      fmt::print("previous: {}\n", Describe((*reply)["previous"]));
      return kExitOk;
    }
  } else if (verb == "rollback" && operands.size() == 1) {
    reply = Call(parsed, "POST", "/v1/agent-image/rollback");
    if (reply && !as_json) {
      fmt::print("rolled back: current {}\nprevious: {}\n", Describe((*reply)["current"]),
                 Describe((*reply)["previous"]));
      return kExitOk;
    }
  } else {
    return UsageError("agent-image", "expected 'status', 'install FILE' or 'rollback'");
  }
  if (!reply) return Failed("agent-image " + verb, reply.error());
  fmt::print("{}\n", ralphd::DumpJson(*reply, 2));
  return kExitOk;
}

}  // namespace ralph::ralphctl
