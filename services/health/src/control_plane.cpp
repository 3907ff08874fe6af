#include "services/health/control_plane.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/process.h"
#include "platform/unique_fd.h"
#include "services/ralphd/api/client.h"
#include "services/ralphd/api/identity.h"

namespace ralph::health {

// StartProgram rather than RunProgram: a ralphctl that hangs on a wedged
// ralphd must not hang the gate, so the wait is bounded and the child
// killed (its own session, so its process group) when the bound passes.
// Its output goes to a file on /run (StartProgram cannot capture).
Result<RalphctlOutput> RalphdProbe::Ralphctl(const std::vector<std::string>& args,
                                             std::chrono::milliseconds bound) {
  if (::mkdir(scratch_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", scratch_dir_), errno);
  }
  std::string output_file = fmt::format("{}/ralphctl.{}.{}", scratch_dir_, ::getpid(), ++runs_);
  {
    UniqueFd created(
        ::open(output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!created) return Error::FromErrno(fmt::format("create {}", output_file), errno);
  }
  std::vector<std::string> argv = {"ralphctl"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string command = fmt::format("ralphctl {}", fmt::join(args, " "));
  auto pid = StartProgram({.argv = argv,
                           .output = ProgramOutput::kFile,
                           .output_file = output_file,
                           .package = "ralphctl (the slot image)"});
  if (!pid) {
    ::unlink(output_file.c_str());
    return std::move(pid).error().WithContext(command);
  }
  auto deadline = std::chrono::steady_clock::now() + bound;
  int status = 0;
  for (;;) {
    pid_t reaped = ::waitpid(*pid, &status, WNOHANG);
    if (reaped == *pid) break;
    if (reaped < 0 && errno != EINTR) {
      int saved = errno;
      ::unlink(output_file.c_str());
      return Error::FromErrno(fmt::format("waiting for {}", command), saved);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(-*pid, SIGKILL);
      while (::waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
      }
      ::unlink(output_file.c_str());
      return Error::Make(ErrorCode::kTimeout, fmt::format("{} did not finish within {} ms (killed)",
                                                          command, bound.count()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto output = ReadWholeFile(output_file);
  ::unlink(output_file.c_str());
  if (!output) return std::move(output).error().WithContext(command);
  int exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return RalphctlOutput{exit_status, std::move(*output)};
}

Result<int> RalphdProbe::ProbeApi(const std::string& address, const std::string& identity_dir) {
  // LoadOrCreate would make an identity where there is none: a missing one
  // is ralphd's failure to report, never the gate's to paper over.
  struct stat st {};
  if (::stat(identity_dir.c_str(), &st) != 0) {
    return Error::FromErrno(fmt::format("the device identity {}", identity_dir), errno);
  }
  auto identity = TRY_CTX(ralphd::api::DeviceIdentity::LoadOrCreate(identity_dir),
                          fmt::format("loading the device identity {}", identity_dir));
  auto connection =
      TRY_CTX(ralphd::api::ApiConnection::Connect({.address = address,
                                                   .device_spki = identity->spki_sha256(),
                                                   .io_timeout = std::chrono::seconds(20)}),
              fmt::format("TLS 1.3 to {} pinned to device key {}", address,
                          identity->spki_sha256_hex().substr(0, 16)));
  ralphd::api::HttpReply reply = TRY_CTX(connection->Request("GET", "/v1/status"),
                                         fmt::format("GET /v1/status on {}", address));
  return reply.status;
}

}  // namespace ralph::health
