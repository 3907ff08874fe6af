// How ralphctl reaches ralphd: its local socket (root on the appliance) or,
// with `--remote https://HOST:PORT`, the HTTPS API with a paired client
// identity (mutual TLS, the device key pinned). The commands are written
// once against RalphdTransport; only the wire differs. Private to ralphctl.
//
// The terminal (`job attach`) is not a request and a reply: it has its own
// small interface in its own file; over HTTPS it opens a WebSocket on a
// connection from ConnectRemote(RemoteTargetFor(args)).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "platform/result.h"
#include "services/ralphctl/command.h"
#include "services/ralphd/api/client.h"

namespace ralph::ralphctl {

struct RalphdRequest {
  std::string verb;                                 // "GET"
  std::string path;                                 // "/v1/jobs/7/logs"
  nlohmann::json query = nlohmann::json::object();  // name -> string
  std::optional<nlohmann::json> body;               // a JSON body
  std::optional<std::string> raw_body;              // or bytes (a workspace tar)
};

class RalphdTransport {
 public:
  virtual ~RalphdTransport() = default;

  // One request. The reply's JSON body, or {"bytes": ...} for a tar or
  // JSON-lines reply. A refusal is the Error (ralphd's code and message);
  // its JSON ({"error": {...}}, with "issues" for a bad policy) goes to
  // `refusal` when given.
  virtual Result<nlohmann::json> Call(const RalphdRequest& request,
                                      nlohmann::json* refusal = nullptr) = 0;

  // Hands the job's `stream` output from byte `offset` on to `output`, as it
  // is written, until the job is over; returns its final record (as
  // GET /v1/jobs/{id} shows it).
  virtual Result<nlohmann::json> FollowOutput(
      uint64_t id, std::string_view stream, uint64_t offset,
      const std::function<void(std::string_view)>& output) = 0;
};

// The global options `ralphctl [--remote URL] [--identity DIR] COMMAND`
// (Main puts them after the command's name, so every command sees them in
// its own options; commands that only run locally refuse them as unknown).
inline constexpr OptionSpec kRemoteOption{"--remote", true};
inline constexpr OptionSpec kIdentityOption{"--identity", true};

// The default identity directory: $XDG_CONFIG_HOME/ralphctl, else
// ~/.config/ralphctl.
std::string DefaultIdentityDir();

// Where `--remote` points and what to present there.
struct RemoteTarget {
  std::string url;      // "https://HOST:PORT", as given
  std::string address;  // "HOST:PORT"
  std::string identity_dir;
  ralphd::api::ClientCredentials credentials;
};

// kInvalidArgument for a URL that is not https://HOST:PORT (a usage error),
// checked before anything is read.
Result<std::string> ParseRemoteUrl(std::string_view url);
// Checks the transport options (--remote with --socket, a malformed URL,
// --identity without --remote); a message for UsageError, or nullopt.
std::optional<std::string> TransportUsageError(const ParsedArgs& args);

// The target of `--remote`, its identity loaded: kNotFound naming the
// directory when it holds no paired identity.
Result<RemoteTarget> RemoteTargetFor(const ParsedArgs& args);
// A pinned mutual-TLS connection to the target; the errors say what was
// wrong (unreachable, not an appliance's API, not the paired appliance).
Result<std::unique_ptr<ralphd::api::ApiConnection>> ConnectRemote(const RemoteTarget& target);

// A connection failure that says the peer is not what was expected, said
// plainly: not an appliance's API (no TLS 1.3 handshake), or another
// appliance than `expected` ("the appliance paired in DIR": the pin);
// nullopt for other failures.
std::optional<Error> NotTheAppliance(std::string_view where, std::string_view expected,
                                     const Error& error);

// The transport the options select: the local socket (--socket PATH,
// default /run/ralphd.sock) or --remote.
Result<std::unique_ptr<RalphdTransport>> OpenTransport(const ParsedArgs& args);

}  // namespace ralph::ralphctl
