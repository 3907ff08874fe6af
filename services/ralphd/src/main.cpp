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
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "platform/cli.h"
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

// Parses argv through the tree's one parser: std::nullopt to go on with
// `options` filled in, else the exit status (0 after --help, 2 naming the
// bad flag).
std::optional<int> Parse(int argc, char** argv, Options& options) {
  ralph::cli::Parser parser("ralphd", std::string(kUsage));
  std::optional<std::string> socket, audit_db, job_root, job_image, max_running;
  parser.Option("--state-dir", &options.daemon.state_dir);
  parser.Option("--socket", &socket);
  parser.Option("--audit-db", &audit_db);
  parser.Option("--job-root", &job_root);
  parser.Option("--job-image", &job_image);
  parser.Option("--max-running", &max_running);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return exit;

  if (options.daemon.state_dir.empty()) return parser.UsageError("--state-dir is required");
  if (socket) options.socket = *socket;
  if (audit_db) options.daemon.audit_db = *audit_db;
  if (job_root && job_image) {
    return parser.UsageError("--job-root and --job-image exclude each other");
  }
  if (job_root) {
    options.daemon.environment = {.base_kind = ralph::sandbox::BaseKind::kDirectory,
                                  .base = *job_root};
  } else if (job_image) {
    options.daemon.environment = {.base_kind = ralph::sandbox::BaseKind::kImage,
                                  .base = *job_image};
  }
  if (max_running) {
    const std::string& text = *max_running;
    size_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || n < 1 || n > 1024) {
      return parser.UsageError(fmt::format("--max-running: '{}' is not a number in 1..1024", text));
    }
    options.daemon.max_running = n;
  }
  return std::nullopt;
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
  Options options;
  if (std::optional<int> exit = Parse(argc, argv, options)) return *exit;
  ralph::Result<void> served = Serve(std::move(options));
  if (!served) {
    ralph::LogError("{}", served.error().ToString());
    return 1;
  }
  return 0;
}
