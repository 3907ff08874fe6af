// `ralphctl remote pair`: the client side of the HTTPS API's pairing
// (docs/api.md "Pairing"), so that `ralphctl --remote https://HOST:PORT`
// can run ralphd's commands from another host.
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/sha256.h"
#include "services/ralphctl/command.h"
#include "services/ralphd/api/client.h"
#include "services/ralphd/api/pairing.h"
#include "services/ralphd/commands.h"
#include "transport.h"

namespace ralph::ralphctl {
namespace {

constexpr std::string_view kUsage =
    R"(usage: ralphctl remote pair [--identity DIR] [--address HOST:PORT] [--name NAME]
                           [--json] 'PAIRING_STRING'

Pairs this host with an appliance: PAIRING_STRING is what `ralphctl pair`
prints on the appliance's console. The appliance's key is pinned from the
string; a new client key and the certificate the appliance signs for it are
stored in DIR (0700; files 0600) with the pin and the address. Then:

  ralphctl --remote https://HOST:PORT [--identity DIR] status|job|policy|audit ...

options:
  --identity DIR        where the identity goes (default $XDG_CONFIG_HOME/ralphctl,
                        else ~/.config/ralphctl)
  --address HOST:PORT   dial this instead of the string's address (a forwarded
                        port); the pin is still the string's
  --name NAME           how the appliance lists this client (default: the host
                        name); 1..64 of A-Z a-z 0-9 space . _ -
  --json                machine-readable output
)";

constexpr OptionSpec kOptions[] = {
    kIdentityOption, {"--address", true}, {"--name", true}, {"--json", false}, {"--help", false},
};

bool NameCharacter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' ||
         c == '.' || c == '_' || c == '-';
}

// The host name, as a client name the appliance accepts.
std::string DefaultName() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) return "ralphctl";
  std::string name(host);
  std::replace_if(
      name.begin(), name.end(), [](char c) { return !NameCharacter(c); }, '-');
  if (name.size() > 64) name.resize(64);
  return name.empty() ? "ralphctl" : name;
}

int Pair(const ParsedArgs& args) {
  const std::string command = "remote pair";
  if (args.positional.size() != 2) {
    return UsageError(command, "expects the pairing string (one argument, quoted)");
  }
  const std::string& pairing = args.positional[1];
  Result<ralphd::api::PairingString> offer = ralphd::api::PairingString::Parse(pairing);
  if (!offer) return UsageError(command, "the pairing string: " + offer.error().message());
  std::string address = args.Value("--address").value_or("");
  if (!address.empty()) {
    Result<std::string> checked = ParseRemoteUrl("https://" + address);
    if (!checked)
      return UsageError(command, fmt::format("--address: '{}' is not HOST:PORT", address));
  }
  std::string name = args.Value("--name").value_or(DefaultName());
  if (name.empty() || name.size() > 64 || !std::all_of(name.begin(), name.end(), NameCharacter)) {
    return UsageError(command,
                      fmt::format("--name: '{}' is not 1..64 of A-Z a-z 0-9 space . _ -", name));
  }
  std::string dir = args.Value("--identity").value_or(DefaultIdentityDir());

  Result<ralphd::api::ClientCredentials> credentials =
      ralphd::api::PairWithDevice(pairing, name, address);
  if (!credentials) {
    std::string dialled = address.empty() ? offer->address : address;
    const Error& error = credentials.error();
    if (std::optional<Error> other =
            NotTheAppliance(dialled, "the appliance that made this pairing string", error)) {
      return Failed(command, *other);
    }
    return Failed(command, error.WithContext(fmt::format("pairing with {}", dialled)));
  }
  Result<void> saved = ralphd::api::SaveCredentials(dir, *credentials);
  if (!saved) return Failed(command, saved.error().WithContext("storing the identity in " + dir));
  std::string url = "https://" + credentials->device_address;
  if (args.Has("--json")) {
    fmt::print("{}\n", ralphd::DumpJson({{"client_id", credentials->client_id},
                                         {"name", name},
                                         {"address", credentials->device_address},
                                         {"spki_sha256", DigestToHex(credentials->device_spki)},
                                         {"identity", dir},
                                         {"remote", url}},
                                        2));
    return kExitOk;
  }
  fmt::print("paired with {} as client {} ({}); identity in {}\n", credentials->device_address,
             credentials->client_id, name, dir);
  fmt::print("use: ralphctl --remote {} --identity {} status\n", url, dir);
  return kExitOk;
}

}  // namespace

int RunRemoteCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("remote", args, kOptions, kUsage, parsed)) {
    return *exit;
  }
  if (parsed.positional[0] == "pair") return Pair(parsed);
  return UsageError("remote", fmt::format("unknown subcommand '{}'", parsed.positional[0]));
}

}  // namespace ralph::ralphctl
