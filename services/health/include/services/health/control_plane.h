// How the health gate reaches the control plane (ralphd): through the
// product's own `ralphctl --json` on the local socket, and a TLS client of
// the HTTPS API pinned to the device identity on VAR. The checks
// (checks.cpp) decide on what these return; ralph-health wires the real
// ones (RalphdProbe), the unit tests fakes.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::health {

struct RalphctlOutput {
  int exit_status = 0;  // 128 + N when signal N killed it
  std::string output;   // stdout and stderr together (a --json command's JSON on success)
};

class ControlPlaneInterface {
 public:
  virtual ~ControlPlaneInterface() = default;
  // Runs `ralphctl ARGS...`; kTimeout when it has not ended within `bound`
  // (it is killed), kNotFound/kIo when it cannot be started.
  virtual Result<RalphctlOutput> Ralphctl(const std::vector<std::string>& args,
                                          std::chrono::milliseconds bound) = 0;
  // Loads the device identity in `identity_dir` (each key matching its
  // certificate, as ralphd loads it), connects to the API at `address` with
  // TLS 1.3 pinned to that identity's device key, sends an unauthenticated
  // GET /v1/status and returns the HTTP status it got. kNetwork (nothing
  // listens, the handshake fails), kVerificationFailed (another key
  // answered), the identity's own errors.
  virtual Result<int> ProbeApi(const std::string& address, const std::string& identity_dir) = 0;
};

// The real one: /usr/bin/ralphctl (PATH), its output through a file on
// /run, and the API client library (services/ralphd/api/client.h).
class RalphdProbe final : public ControlPlaneInterface {
 public:
  explicit RalphdProbe(std::string scratch_dir = "/run/ralph/health")
      : scratch_dir_(std::move(scratch_dir)) {}
  Result<RalphctlOutput> Ralphctl(const std::vector<std::string>& args,
                                  std::chrono::milliseconds bound) override;
  Result<int> ProbeApi(const std::string& address, const std::string& identity_dir) override;

 private:
  std::string scratch_dir_;
  int runs_ = 0;
};

}  // namespace ralph::health
