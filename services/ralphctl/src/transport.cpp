#include "transport.h"

#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>

#include <fmt/format.h>

#include "ralphd_client.h"
#include "services/ralphd/commands.h"

namespace ralph::ralphctl {
namespace {

using nlohmann::json;

// The reply's body as the commands see it: JSON, or the bytes of a tar or
// JSON-lines reply.
Result<json> LocalReplyBody(const json& reply) {
  if (reply.contains("data_base64")) {
    return json{{"bytes", TRY(ralphd::Base64Decode(reply["data_base64"].get<std::string>(),
                                                   "data_base64"))}};
  }
  return reply.value("body", json::object());
}

class LocalTransport final : public RalphdTransport {
 public:
  explicit LocalTransport(std::string socket) : socket_(std::move(socket)) {}

  Result<json> Call(const RalphdRequest& request, json* refusal = nullptr) override {
    RalphdClient client = TRY(RalphdClient::Connect(socket_));
    json frame = {{"verb", request.verb}, {"path", request.path}, {"query", request.query}};
    if (request.body) frame["body"] = *request.body;
    if (request.raw_body) frame["body_base64"] = ralphd::Base64Encode(*request.raw_body);
    json reply = TRY(client.Call(frame));
    if (!reply.value("ok", false)) {
      if (refusal) *refusal = reply;
      return ReplyError(reply);
    }
    return LocalReplyBody(reply);
  }

  // The daemon follows the job itself: one request with "follow": true.
  Result<json> FollowOutput(uint64_t id, std::string_view stream, uint64_t offset,
                            const std::function<void(std::string_view)>& output) override {
    RalphdClient client = TRY(RalphdClient::Connect(socket_));
    json reply =
        TRY(client.Call({{"verb", "GET"},
                         {"path", fmt::format("/v1/jobs/{}/logs", id)},
                         {"query", {{"stream", stream}, {"offset", std::to_string(offset)}}},
                         {"follow", true}}));
    if (!reply.value("ok", false)) return ReplyError(reply);
    output(TRY(ralphd::Base64Decode(reply["body"].value("data_base64", ""), "data_base64")));
    while (true) {
      std::optional<json> frame = TRY(client.Next());
      if (!frame) return Error::Make(ErrorCode::kNetwork, "ralphd closed the stream early");
      if (frame->contains("output")) {
        output(TRY(ralphd::Base64Decode((*frame)["output"].value("data_base64", ""), "data")));
      } else if (frame->contains("end")) {
        return (*frame)["end"];
      } else if (frame->contains("error")) {
        return ReplyError(*frame);
      }
    }
  }

 private:
  std::string socket_;
};

bool Unreserved(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

std::string PercentEncode(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (Unreserved(c)) {
      out += c;
    } else {
      out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    }
  }
  return out;
}

std::string Target(const RalphdRequest& request) {
  std::string target = request.path;
  char separator = '?';
  for (const auto& [name, value] : request.query.items()) {
    target += separator;
    target += PercentEncode(name) + "=" +
              PercentEncode(value.is_string() ? value.get<std::string>() : value.dump());
    separator = '&';
  }
  return target;
}

bool IsFinalState(const json& job) {
  std::optional<ralphd::JobState> state = ralphd::ParseJobState(job.value("state", ""));
  return state && ralphd::IsFinal(*state);
}

class RemoteTransport final : public RalphdTransport {
 public:
  explicit RemoteTransport(RemoteTarget target) : target_(std::move(target)) {}

  Result<json> Call(const RalphdRequest& request, json* refusal = nullptr) override {
    // A connection per request: a kept-alive one would be closed by the
    // server's idle timeout while a job is followed.
    std::unique_ptr<ralphd::api::ApiConnection> connection = TRY(ConnectRemote(target_));
    std::string body;
    if (request.body) body = ralphd::DumpJson(*request.body);
    if (request.raw_body) body = *request.raw_body;
    ralphd::api::HttpReply reply = TRY(connection->Request(request.verb, Target(request), body));
    if (reply.status / 100 == 2) {
      if (reply.content_type != "application/json") return json{{"bytes", std::move(reply.body)}};
      json parsed = json::parse(reply.body, nullptr, false);
      if (parsed.is_discarded()) {
        return Error::Make(
            ErrorCode::kCorrupt,
            fmt::format("{} answered {} with a body that is not JSON", target_.url, request.path));
      }
      return parsed;
    }
    return Refusal(reply, refusal);
  }

  // Over HTTPS: what the job has written is read from its logs, then the
  // event stream (GET /v1/events?after=SEQ&job=ID, opened after the SEQ the
  // status gave before that read) carries the rest. Output events are
  // placed by their byte offset, so nothing is written twice, and a gap
  // (events no longer retained) is filled from the logs.
  Result<json> FollowOutput(uint64_t id, std::string_view stream, uint64_t offset,
                            const std::function<void(std::string_view)>& output) override {
    json status = TRY(Call({.verb = "GET", .path = "/v1/status"}));
    uint64_t after = status.value("last_event_seq", uint64_t{0});
    std::unique_ptr<ralphd::api::ApiConnection> events = TRY(ConnectRemote(target_));
    if (Result<void> opened = events->OpenEvents(after, id); !opened) {
      return opened.error().WithContext(fmt::format("the event stream of {}", target_.url));
    }
    const std::string path = fmt::format("/v1/jobs/{}", id);
    uint64_t next = offset;
    auto catch_up = [&]() -> Result<void> {
      while (true) {
        json chunk = TRY(Call({.verb = "GET",
                               .path = path + "/logs",
                               .query = {{"stream", std::string(stream)},
                                         {"offset", std::to_string(next)},
                                         {"limit", std::to_string(ralphd::kMaxLogReadBytes)}}}));
        std::string bytes =
            TRY(ralphd::Base64Decode(chunk.value("data_base64", ""), "data_base64"));
        if (bytes.empty()) return {};
        output(bytes);
        next = chunk.value("offset", next) + bytes.size();
      }
    };
    TRY(catch_up());
    json job = TRY(Call({.verb = "GET", .path = path}));
    if (IsFinalState(job)) {
      TRY(catch_up());
      return job;
    }
    while (true) {
      ralphd::api::StreamEvent event = TRY(events->NextEvent());
      if (event.type == "gap") {
        TRY(catch_up());
        continue;
      }
      json data = json::parse(event.data, nullptr, false);
      if (!data.is_object() || !data.contains("body") || !data["body"].is_object()) continue;
      const json& body = data["body"];
      if (event.type == "job.state" && IsFinalState(body)) {
        TRY(catch_up());
        return Call({.verb = "GET", .path = path});
      }
      if (event.type != "job.output" || body.value("stream", "") != stream) continue;
      uint64_t at = body.value("offset", uint64_t{0});
      if (at > next) TRY(catch_up());
      std::string bytes = TRY(ralphd::Base64Decode(body.value("data_base64", ""), "data_base64"));
      if (at + bytes.size() <= next) continue;
      output(std::string_view(bytes).substr(next > at ? next - at : 0));
      next = at + bytes.size();
    }
  }

 private:
  // A non-2xx reply as an Error: the core's and the server's refusals keep
  // their code and message (as over the local socket); a certificate the
  // appliance does not accept says what to do about it.
  Error Refusal(const ralphd::api::HttpReply& reply, json* refusal) const {
    json parsed = json::parse(reply.body, nullptr, false);
    if (!parsed.is_object() || !parsed.contains("error")) {
      return ralphd::api::ErrorFromReply(reply);
    }
    if (refusal) *refusal = parsed;
    std::string code = parsed["error"].value("code", "");
    if (code == "forbidden" || code == "unauthenticated") {
      return Error::Make(
          ErrorCode::kPermissionDenied,
          fmt::format("{} refused the client identity in {}: {} (pair again: `ralphctl remote "
                      "pair --identity {} PAIRING_STRING`)",
                      target_.url, target_.identity_dir, parsed["error"].value("message", ""),
                      target_.identity_dir));
    }
    return ReplyError(parsed);
  }

  RemoteTarget target_;
};

}  // namespace

std::string DefaultIdentityDir() {
  if (const char* config = std::getenv("XDG_CONFIG_HOME"); config && *config) {
    return std::string(config) + "/ralphctl";
  }
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.config/ralphctl";
}

Result<std::string> ParseRemoteUrl(std::string_view url) {
  constexpr std::string_view kScheme = "https://";
  auto bad = [&](std::string_view why) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("--remote: '{}' is not https://HOST:PORT ({})", url, why));
  };
  if (!url.starts_with(kScheme)) return bad("the API speaks HTTPS only");
  std::string_view address = url.substr(kScheme.size());
  if (address.ends_with('/')) address.remove_suffix(1);
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || address.find('/') != std::string::npos) {
    return bad("no port");
  }
  std::string_view port = address.substr(colon + 1);
  uint32_t number = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || number == 0 ||
      number > 65535) {
    return bad("the port is not a number in 1..65535");
  }
  return std::string(address);
}

std::optional<std::string> TransportUsageError(const ParsedArgs& args) {
  if (auto url = args.Value("--remote")) {
    if (args.Has("--socket")) return "--remote and --socket exclude each other";
    Result<std::string> address = ParseRemoteUrl(*url);
    if (!address) return address.error().message();
  } else if (args.Has("--identity")) {
    return "--identity goes with --remote";
  }
  return std::nullopt;
}

Result<RemoteTarget> RemoteTargetFor(const ParsedArgs& args) {
  RemoteTarget target;
  target.url = args.Value("--remote").value_or("");
  target.address = TRY(ParseRemoteUrl(target.url));
  target.identity_dir = args.Value("--identity").value_or(DefaultIdentityDir());
  struct stat st {};
  if (::stat(target.identity_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("no client identity: {} is not a directory (pair first: "
                                   "`ralphctl remote pair --identity {} PAIRING_STRING`)",
                                   target.identity_dir, target.identity_dir));
  }
  Result<ralphd::api::ClientCredentials> credentials =
      ralphd::api::LoadCredentials(target.identity_dir);
  if (!credentials) {
    return Error::Make(
        credentials.error().code() == ErrorCode::kNotFound ? ErrorCode::kNotFound
                                                           : ErrorCode::kCorrupt,
        fmt::format("no usable client identity in {}: {} (pair first: `ralphctl "
                    "remote pair --identity {} PAIRING_STRING`)",
                    target.identity_dir, credentials.error().ToString(), target.identity_dir));
  }
  target.credentials = std::move(*credentials);
  return target;
}

Result<std::unique_ptr<ralphd::api::ApiConnection>> ConnectRemote(const RemoteTarget& target) {
  Result<std::unique_ptr<ralphd::api::ApiConnection>> connection =
      ralphd::api::ApiConnection::Connect({.address = target.address,
                                           .device_spki = target.credentials.device_spki,
                                           .credentials = target.credentials});
  if (connection) return connection;
  const Error& error = connection.error();
  if (std::optional<Error> other =
          NotTheAppliance(target.url, "the appliance paired in " + target.identity_dir, error)) {
    return std::move(*other);
  }
  return Error::Make(error.code(), fmt::format("cannot reach ralphd's API at {}: {}", target.url,
                                               error.ToString()));
}

std::optional<Error> NotTheAppliance(std::string_view where, std::string_view expected,
                                     const Error& error) {
  if (error.code() == ErrorCode::kVerificationFailed &&
      error.message().find("pinned key") != std::string::npos) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("{} is not {}: {}", where, expected, error.message()));
  }
  if (error.message().starts_with("TLS handshake")) {
    return Error::Make(ErrorCode::kNetwork,
                       fmt::format("{} is not a RalphOS appliance's API (no TLS 1.3 handshake "
                                   "with a device certificate): {}",
                                   where, error.ToString()));
  }
  return std::nullopt;
}

Result<std::unique_ptr<RalphdTransport>> OpenTransport(const ParsedArgs& args) {
  if (args.Has("--remote")) {
    return std::unique_ptr<RalphdTransport>(new RemoteTransport(TRY(RemoteTargetFor(args))));
  }
  return std::unique_ptr<RalphdTransport>(
      new LocalTransport(args.Value("--socket").value_or(std::string(kDefaultRalphdSocket))));
}

}  // namespace ralph::ralphctl
