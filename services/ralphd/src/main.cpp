// ralphd: the control plane daemon. Serves the local socket from one event
// loop (local_socket.h); state on VAR.
//
//   ralphd --state-dir /var/lib/ralph/ralphd [--socket /run/ralphd.sock]
//          [--job-root DIR | --job-image FILE] [--max-running N]
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "platform/log.h"
#include "platform/unique_fd.h"
#include "services/ralphd/daemon.h"
#include "services/ralphd/local_socket.h"

namespace {

constexpr std::string_view kUsage =
    R"(usage: ralphd --state-dir DIR [options]

  --state-dir DIR     ralphd's state (on VAR): ralphd.db, audit.db, jobs/, sandbox/
  --socket PATH       the local control socket (default /run/ralphd.sock)
  --audit-db PATH     the audit log (default DIR/audit.db)
  --job-root DIR      the read-only base of every job's rootfs (default /)
  --job-image FILE    ... or a squashfs/erofs image of it
  --max-running N     jobs run at once; the rest wait queued (default 2)
)";

struct Options {
  ralph::ralphd::DaemonOptions daemon;
  std::string socket = "/run/ralphd.sock";
};

ralph::Result<Options> Parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> ralph::Result<std::string> {
      if (i + 1 >= argc) {
        return ralph::Error::Make(ralph::ErrorCode::kInvalidArgument,
                                  fmt::format("{} needs a value", arg));
      }
      return std::string(argv[++i]);
    };
    if (arg == "--state-dir") {
      options.daemon.state_dir = TRY(value());
    } else if (arg == "--socket") {
      options.socket = TRY(value());
    } else if (arg == "--audit-db") {
      options.daemon.audit_db = TRY(value());
    } else if (arg == "--job-root") {
      options.daemon.environment = {.base_kind = ralph::sandbox::BaseKind::kDirectory,
                                    .base = TRY(value())};
    } else if (arg == "--job-image") {
      options.daemon.environment = {.base_kind = ralph::sandbox::BaseKind::kImage,
                                    .base = TRY(value())};
    } else if (arg == "--max-running") {
      std::string text = TRY(value());
      size_t n = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
      if (ec != std::errc() || end != text.data() + text.size() || n < 1 || n > 1024) {
        return ralph::Error::Make(
            ralph::ErrorCode::kInvalidArgument,
            fmt::format("--max-running: '{}' is not a number in 1..1024", text));
      }
      options.daemon.max_running = n;
    } else {
      return ralph::Error::Make(ralph::ErrorCode::kInvalidArgument,
                                fmt::format("unknown argument '{}'", arg));
    }
  }
  if (options.daemon.state_dir.empty()) {
    return ralph::Error::Make(ralph::ErrorCode::kInvalidArgument, "--state-dir is required");
  }
  return options;
}

ralph::Result<void> Serve(Options options) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // Blocked before any thread starts, so every thread inherits the mask and
  // the signals reach only the signalfd.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ralph::UniqueFd stop(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!stop) return ralph::Error::FromErrno("signalfd", errno);
  ::signal(SIGPIPE, SIG_IGN);

  options.daemon.log = [](ralph::LogLevel level, const std::string& message) {
    if (level != ralph::LogLevel::kDebug) ralph::LogLine(level, message);
  };
  std::unique_ptr<ralph::ralphd::Daemon> daemon = TRY(ralph::ralphd::Daemon::Open(options.daemon));
  std::unique_ptr<ralph::ralphd::LocalServer> server =
      TRY(ralph::ralphd::LocalServer::Create({.socket_path = options.socket}, *daemon));
  ralph::LogInfo("serving {} (state {})", options.socket, options.daemon.state_dir);
  TRY(server->Run(stop.get()));
  ralph::LogInfo("stopping: running jobs are killed");
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  ralph::LogInit("ralphd", ralph::LogSink::kStderr);
  ralph::Result<Options> options = Parse(argc, argv);
  if (!options) {
    ralph::LogError("{}", options.error().ToString());
    std::fputs(kUsage.data(), stderr);
    return 2;
  }
  ralph::Result<void> served = Serve(std::move(*options));
  if (!served) {
    ralph::LogError("{}", served.error().ToString());
    return 1;
  }
  return 0;
}
