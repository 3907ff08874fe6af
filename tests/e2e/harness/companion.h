// The companion client's side of a booted appliance, over ralphd's API
// client library (services/ralphd/api/client.h): the pairing string read
// from the serial console, pairing through a forwarded port, a job with an
// uploaded workspace whose output is streamed from the event stream, and
// its workspace downloaded, for the e2e tests (scripts/main.sh does the
// same with `ralphctl --remote`).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "platform/result.h"
#include "services/ralphd/api/client.h"

namespace ralph::e2e {

// The last pairing string the console shows ("ralphos-pair:v1?..." up to
// the end of its line); kNotFound when there is none, or only one whose
// line has not ended yet.
Result<std::string> FindPairingString(std::string_view console);

// Pairs with the device the pairing string names, dialling `address`
// (HOST:PORT, e.g. a QEMU host forward) instead of the string's own
// address when it is not empty; the device key stays pinned to the
// string's. The credentials remember the address dialled.
Result<ralphd::api::ClientCredentials> PairThrough(std::string_view pairing_string,
                                                   const std::string& address,
                                                   std::string_view name);

struct JobOutcome {
  uint64_t id = 0;
  nlohmann::json record;  // the final job record (state, exit_code, ...)
  std::string stdout_bytes;
  std::string stderr_bytes;
};

class Companion {
 public:
  using OutputSink = std::function<void(std::string_view stream, std::string_view bytes)>;

  static Result<std::unique_ptr<Companion>> Connect(ralphd::api::ClientCredentials credentials);

  // Submits `argv` under the default profile, uploads `workspace_tar` (when
  // not empty) before it starts, and follows the event stream to the job's
  // end, handing each output chunk to `sink` as it arrives.
  Result<JobOutcome> RunJob(const std::vector<std::string>& argv, const std::string& workspace_tar,
                            const OutputSink& sink);
  // The job's workspace as a tar.
  Result<std::string> DownloadWorkspace(uint64_t id);

  // One request; its JSON body on 2xx, its error otherwise.
  Result<nlohmann::json> Call(std::string_view method, std::string_view target,
                              std::string_view body = {});

 private:
  explicit Companion(ralphd::api::ClientCredentials credentials,
                     std::unique_ptr<ralphd::api::ApiConnection> connection)
      : credentials_(std::move(credentials)), connection_(std::move(connection)) {}
  Result<std::unique_ptr<ralphd::api::ApiConnection>> Open() const;

  ralphd::api::ClientCredentials credentials_;
  std::unique_ptr<ralphd::api::ApiConnection> connection_;
};

}  // namespace ralph::e2e
