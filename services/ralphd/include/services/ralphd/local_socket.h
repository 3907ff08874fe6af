// The local control socket: a unix stream socket (0600, and SO_PEERCRED:
// only uid 0 is served) carrying the same typed commands as the HTTPS API,
// and ralphd's event loop (epoll) that serves it and the job runner.
//
// Framing: one JSON object per line each way.
//   request  {"verb": "GET", "path": "/v1/jobs/3/logs", "query": {"offset": "0"},
//             "body": <any JSON: the request body>  |  "body_base64": "<raw bytes>",
//             "follow": true}
//   reply    {"ok": true, "body": {...}}
//            {"ok": true, "kind": "tar" | "jsonl", "data_base64": "..."}
//            {"ok": false, "error": {"code": "invalid-argument", "message": "..."}}
// A connection carries any number of requests, one at a time. With
// "follow": true on GET /v1/jobs/{id}/logs the reply is followed by
// {"output": {"offset": N, "data_base64": "..."}} lines as the job writes,
// and a last {"end": <job>} once it is over and everything was sent; on GET
// /v1/events by {"event": {...}} lines until the client closes.
//
// With "attach": true on GET /v1/jobs/{id}/terminal (a job submitted with
// "tty": true) the connection becomes that job's terminal: after
// {"ok": true, "body": {"job": N, "attachment": A}} the daemon sends
// {"output": {"data_base64": ".."}} as the job writes and, when the job is
// over, {"closed": {"exit_status": S}} (then closes); the client sends
// {"input_base64": ".."}, {"resize": {"columns": C, "rows": R}} or
// {"detach": true} (answered {"detached": {"job": N}}, then the daemon
// closes). Closing the connection detaches too; the job runs on.
//
// Frames that are not JSON, or have unknown members, get an error naming
// the member; the connection stays open.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "platform/result.h"
#include "platform/unique_fd.h"
#include "services/ralphd/daemon.h"

namespace ralph::ralphd {

struct LocalServerOptions {
  std::string socket_path;
  size_t max_connections = 64;
  // A request line (a workspace upload is base64 in it).
  size_t max_frame_bytes = kMaxWorkspaceTarBytes / 3 * 4 + (1 << 20);
  // A follower whose unsent output grows past this is disconnected.
  size_t max_pending_bytes = 64u << 20;
};

class LocalServer {
 public:
  // Binds the socket (a stale one from a dead daemon is replaced) and
  // registers with `daemon`'s event listener.
  static Result<std::unique_ptr<LocalServer>> Create(LocalServerOptions options, Daemon& daemon);
  ~LocalServer();

  // Serves until `stop_fd` becomes readable (a signalfd, an eventfd).
  Result<void> Run(int stop_fd);

  // Runs `task` on the loop's thread (from any thread): how another
  // transport hands commands to the single-threaded core. Once Run has
  // returned, the tasks still queued have run and a later one runs on the
  // caller's thread, one at a time: a transport that waits for its task
  // (DispatcherHandler) is not stranded while it shuts down, and the core
  // still sees one thread at a time since the loop no longer runs.
  void Post(std::function<void()> task);

 private:
  struct Connection;
  LocalServer(LocalServerOptions options, Daemon& daemon, UniqueFd listener, UniqueFd epoll,
              UniqueFd wake);
  void Accept();
  void OnReadable(Connection& connection);
  void HandleFrame(Connection& connection, std::string_view line);
  void Send(Connection& connection, const nlohmann::json& frame);
  void Flush(Connection& connection);
  void Attach(Connection& connection, const Caller& caller, uint64_t job);
  void HandleTerminalFrame(Connection& connection, std::string_view line);
  void PumpLogs(Connection& connection);
  void PumpEvents(Connection& connection);
  void OnEvent(const Event& event);
  // Marks the connection closed (its fd leaves epoll); Reap() frees it
  // once no handler holds a reference.
  void Close(int fd);
  void Reap();

  LocalServerOptions options_;
  Daemon& daemon_;
  UniqueFd listener_;
  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd for Post
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  bool stopped_ = false;         // under posted_mutex_
  std::mutex after_stop_mutex_;  // serialises tasks posted after Run returned
  std::map<int, std::unique_ptr<Connection>> connections_;
};

}  // namespace ralph::ralphd
