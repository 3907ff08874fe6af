#include "harness/companion.h"

#include <fmt/format.h>

#include "services/ralphd/api/pairing.h"
#include "services/ralphd/commands.h"

namespace ralph::e2e {

namespace api = ralphd::api;
using nlohmann::json;

Result<std::string> FindPairingString(std::string_view console) {
  size_t at = console.rfind(api::kPairingStringPrefix);
  if (at == std::string_view::npos) {
    return Error::Make(ErrorCode::kNotFound, "no pairing string on the console");
  }
  size_t end = console.find_first_of(" \t\r\n", at);
  if (end == std::string_view::npos) {
    return Error::Make(ErrorCode::kNotFound, "the pairing string's line has not ended yet");
  }
  return std::string(console.substr(at, end - at));
}

Result<api::ClientCredentials> PairThrough(std::string_view pairing_string,
                                           const std::string& address, std::string_view name) {
  // The client library dials the string's own address; the same offer with
  // the forwarded address keeps the pin, id, secret and expiry.
  api::PairingString offer = TRY(api::PairingString::Parse(pairing_string));
  if (!address.empty()) offer.address = address;
  return TRY_CTX(api::PairWithDevice(offer.Format(), name),
                 fmt::format("pairing through {}", offer.address));
}

Result<std::unique_ptr<Companion>> Companion::Connect(api::ClientCredentials credentials) {
  auto connection = TRY(api::ApiConnection::Connect({.address = credentials.device_address,
                                                     .device_spki = credentials.device_spki,
                                                     .credentials = credentials}));
  return std::unique_ptr<Companion>(new Companion(std::move(credentials), std::move(connection)));
}

Result<std::unique_ptr<api::ApiConnection>> Companion::Open() const {
  return api::ApiConnection::Connect({.address = credentials_.device_address,
                                      .device_spki = credentials_.device_spki,
                                      .credentials = credentials_});
}

Result<json> Companion::Call(std::string_view method, std::string_view target,
                             std::string_view body) {
  api::HttpReply reply = TRY(connection_->Request(method, target, body));
  if (reply.status / 100 != 2) {
    return api::ErrorFromReply(reply).WithContext(fmt::format("{} {}", method, target));
  }
  json parsed = json::parse(reply.body, nullptr, false);
  if (parsed.is_discarded()) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{} {}: the reply is not JSON", method, target));
  }
  return parsed;
}

Result<JobOutcome> Companion::RunJob(const std::vector<std::string>& argv,
                                     const std::string& workspace_tar, const OutputSink& sink) {
  // Events after the current last one: everything the job emits.
  json status = TRY(Call("GET", "/v1/status"));
  uint64_t after = status.value("last_event_seq", uint64_t{0});
  json submitted = TRY(Call("POST", "/v1/jobs",
                            json{{"argv", argv}, {"profile", "default"}, {"start", false}}.dump()));
  JobOutcome outcome;
  outcome.id = submitted.value("id", uint64_t{0});
  std::string job = fmt::format("/v1/jobs/{}", outcome.id);
  if (!workspace_tar.empty()) TRY(Call("PUT", job + "/workspace", workspace_tar));
  auto events = TRY(Open());
  TRY(events->OpenEvents(after));
  TRY(Call("POST", job + "/start"));
  for (;;) {
    api::StreamEvent event =
        TRY_CTX(events->NextEvent(), fmt::format("following job {}", outcome.id));
    json data = json::parse(event.data, nullptr, false);
    if (!data.is_object() || data.value("job", uint64_t{0}) != outcome.id) continue;
    const json& body = data["body"];
    if (event.type == "job.output") {
      std::string bytes =
          TRY(ralphd::Base64Decode(body.value("data_base64", ""), "event body.data_base64"));
      std::string stream = body.value("stream", "stdout");
      (stream == "stderr" ? outcome.stderr_bytes : outcome.stdout_bytes) += bytes;
      if (sink) sink(stream, bytes);
    } else if (event.type == "job.state") {
      std::string state = body.value("state", "");
      if (state == "succeeded" || state == "failed" || state == "timed-out" ||
          state == "cancelled" || state == "lost") {
        break;
      }
    }
  }
  outcome.record = TRY(Call("GET", job));
  return outcome;
}

Result<std::string> Companion::DownloadWorkspace(uint64_t id) {
  std::string target = fmt::format("/v1/jobs/{}/workspace", id);
  api::HttpReply reply = TRY(connection_->Request("GET", target));
  if (reply.status != 200) return api::ErrorFromReply(reply).WithContext("GET " + target);
  return reply.body;
}

}  // namespace ralph::e2e
