#include "services/ralphd/local_socket.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <utility>

#include <fmt/format.h>

namespace ralph::ralphd {
namespace {

using nlohmann::json;

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

struct Frame {
  Request request;
  bool follow = false;
  bool attach = false;
};

// A request frame, strictly: only the members the framing names.
Result<Frame> DecodeFrame(std::string_view line) {
  json frame = TRY(ParseJson(line, "frame"));
  if (!frame.is_object()) return Invalid("frame: expected a JSON object");
  Frame out;
  for (const auto& [key, value] : frame.items()) {
    if (key == "verb" || key == "path") {
      if (!value.is_string()) return Invalid(fmt::format("frame.{}: expected a string", key));
      (key == "verb" ? out.request.verb : out.request.path) = value.get<std::string>();
    } else if (key == "query") {
      if (!value.is_object()) return Invalid("frame.query: expected an object of strings");
      for (const auto& [name, text] : value.items()) {
        if (!text.is_string()) {
          return Invalid(fmt::format("frame.query.{}: expected a string", name));
        }
        out.request.query[name] = text.get<std::string>();
      }
    } else if (key == "body") {
      out.request.body = DumpJson(value);
    } else if (key == "body_base64") {
      if (!value.is_string()) return Invalid("frame.body_base64: expected a string");
      out.request.body =
          TRY(Base64Decode(value.get_ref<const std::string&>(), "frame.body_base64"));
    } else if (key == "follow" || key == "attach") {
      if (!value.is_boolean()) return Invalid(fmt::format("frame.{}: expected true or false", key));
      (key == "follow" ? out.follow : out.attach) = value.get<bool>();
    } else {
      return Invalid(fmt::format("frame.{}: unknown member", key));
    }
  }
  if (frame.contains("body") && frame.contains("body_base64")) {
    return Invalid("frame: body and body_base64 together");
  }
  if (out.follow && out.attach) return Invalid("frame: follow and attach together");
  if (out.request.verb.empty()) return Invalid("frame.verb: required");
  if (out.request.path.empty()) return Invalid("frame.path: required");
  return out;
}

json ReplyFrame(const Reply& reply) {
  if (!reply.ok()) {
    json frame = {{"ok", false}};
    frame["error"] =
        reply.body.contains("error") ? reply.body["error"] : ErrorJson(*reply.error)["error"];
    return frame;
  }
  switch (reply.kind) {
    case ReplyKind::kJson: return {{"ok", true}, {"body", reply.body}};
    case ReplyKind::kTar:
      return {{"ok", true}, {"kind", "tar"}, {"data_base64", Base64Encode(reply.bytes)}};
    case ReplyKind::kJsonLines:
      return {{"ok", true}, {"kind", "jsonl"}, {"data_base64", Base64Encode(reply.bytes)}};
  }
  return {{"ok", false}};
}

json ErrorFrame(const Error& error) {
  return {{"ok", false}, {"error", ErrorJson(error)["error"]}};
}

// A client frame on an attached terminal: exactly one of
// {"input_base64": ".."}, {"resize": {"columns": C, "rows": R}}, {"detach": true}.
struct TerminalFrame {
  enum class Kind { kInput, kResize, kDetach };
  Kind kind = Kind::kInput;
  std::string input;
  uint16_t columns = 0;
  uint16_t rows = 0;
};

Result<uint16_t> Dimension(const json& resize, std::string_view name) {
  auto it = resize.find(name);
  if (it == resize.end()) return Invalid(fmt::format("frame.resize.{}: required", name));
  if (!it->is_number_unsigned() || *it < 1 || *it > kMaxTerminalDimension) {
    return Invalid(fmt::format("frame.resize.{}: expected an integer in 1..{}, got {}", name,
                               kMaxTerminalDimension, DumpJson(*it)));
  }
  return it->get<uint16_t>();
}

Result<TerminalFrame> DecodeTerminalFrame(std::string_view line) {
  json frame = TRY(ParseJson(line, "frame"));
  if (!frame.is_object()) return Invalid("frame: expected a JSON object");
  if (frame.size() != 1) {
    return Invalid("frame: an attached terminal takes exactly one of input_base64, resize, detach");
  }
  const std::string& key = frame.begin().key();
  const json& value = frame.begin().value();
  TerminalFrame out;
  if (key == "input_base64") {
    if (!value.is_string()) return Invalid("frame.input_base64: expected a string");
    out.input = TRY(Base64Decode(value.get_ref<const std::string&>(), "frame.input_base64"));
  } else if (key == "resize") {
    if (!value.is_object()) return Invalid("frame.resize: expected {\"columns\": C, \"rows\": R}");
    for (const auto& [member, ignored] : value.items()) {
      if (member != "columns" && member != "rows") {
        return Invalid(fmt::format("frame.resize.{}: unknown member", member));
      }
    }
    out.kind = TerminalFrame::Kind::kResize;
    out.columns = TRY(Dimension(value, "columns"));
    out.rows = TRY(Dimension(value, "rows"));
  } else if (key == "detach") {
    if (value != true) return Invalid("frame.detach: expected true");
    out.kind = TerminalFrame::Kind::kDetach;
  } else {
    return Invalid(fmt::format("frame.{}: unknown member on an attached terminal", key));
  }
  return out;
}

}  // namespace

struct LocalServer::Connection {
  UniqueFd fd;
  uint32_t uid = 0;
  pid_t pid = 0;
  bool session_recorded = false;  // its "local.session" audit record
  std::string in;
  std::string out;
  bool close_after_flush = false;
  bool dead = false;  // closed; erased after the current loop turn
  enum class Follow { kNone, kLogs, kEvents, kTerminal };
  Follow follow = Follow::kNone;
  uint64_t job = 0;
  OutputStream stream = OutputStream::kStdout;
  uint64_t offset = 0;
  uint64_t after = 0;
  std::optional<uint64_t> event_job;
  uint64_t attachment = 0;  // kTerminal: the daemon's attachment (0 once closed)
};

LocalServer::LocalServer(LocalServerOptions options, Daemon& daemon, UniqueFd listener,
                         UniqueFd epoll, UniqueFd wake)
    : options_(std::move(options)),
      daemon_(daemon),
      listener_(std::move(listener)),
      epoll_(std::move(epoll)),
      wake_(std::move(wake)) {}

LocalServer::~LocalServer() {
  daemon_.SetEventListener(Daemon::Listener::kLocalSocket, {});
  for (auto& [fd, connection] : connections_) {
    if (connection->attachment) daemon_.DetachTerminal(connection->attachment, "ralphd stopped");
  }
  ::unlink(options_.socket_path.c_str());
}

Result<std::unique_ptr<LocalServer>> LocalServer::Create(LocalServerOptions options,
                                                         Daemon& daemon) {
  sockaddr_un address{.sun_family = AF_UNIX, .sun_path = {}};
  if (options.socket_path.size() >= sizeof address.sun_path) {
    return Invalid(fmt::format("socket path {} is too long", options.socket_path));
  }
  options.socket_path.copy(address.sun_path, options.socket_path.size());
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener) return Error::FromErrno("socket", errno);
  // A socket file left by a dead daemon is in the way; a live daemon's is
  // not replaced (connecting to it succeeds).
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    return Error::Make(ErrorCode::kBusy,
                       fmt::format("{}: another ralphd is serving it", options.socket_path));
  }
  ::unlink(options.socket_path.c_str());
  mode_t old_umask = ::umask(0177);
  int bound = ::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address);
  int bind_errno = errno;
  ::umask(old_umask);
  if (bound != 0) return Error::FromErrno(fmt::format("bind {}", options.socket_path), bind_errno);
  if (::listen(listener.get(), 64) != 0) return Error::FromErrno("listen", errno);
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return Error::FromErrno("epoll_create1", errno);
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Error::FromErrno("eventfd", errno);
  std::unique_ptr<LocalServer> server(new LocalServer(
      std::move(options), daemon, std::move(listener), std::move(epoll), std::move(wake)));
  for (int fd : {server->listener_.get(), daemon.notify_fd(), server->wake_.get()}) {
    epoll_event event{.events = EPOLLIN, .data = {.fd = fd}};
    if (::epoll_ctl(server->epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
      return Error::FromErrno("epoll_ctl", errno);
    }
  }
  daemon.SetEventListener(Daemon::Listener::kLocalSocket,
                          [raw = server.get()](const Event& event) { raw->OnEvent(event); });
  return server;
}

void LocalServer::Post(std::function<void()> task) {
  {
    std::unique_lock lock(posted_mutex_);
    if (stopped_) {
      lock.unlock();
      std::lock_guard serial(after_stop_mutex_);
      task();
      return;
    }
    // Tasks already waiting have woken the loop, which takes this one with
    // them (it empties the queue under the lock after each wake).
    bool wake = posted_.empty();
    posted_.push_back(std::move(task));
    if (!wake) return;
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t written = ::write(wake_.get(), &one, sizeof one);
}

Result<void> LocalServer::Run(int stop_fd) {
  epoll_event stop{.events = EPOLLIN, .data = {.fd = stop_fd}};
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_fd, &stop) != 0) {
    return Error::FromErrno("epoll_ctl", errno);
  }
  epoll_event events[64];
  while (true) {
    int n = ::epoll_wait(epoll_.get(), events, 64, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("epoll_wait", errno);
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == stop_fd) {
        std::vector<std::function<void()>> tasks;
        {
          std::lock_guard lock(posted_mutex_);
          stopped_ = true;
          tasks.swap(posted_);
        }
        std::lock_guard serial(after_stop_mutex_);
        for (auto& task : tasks) task();
        return {};
      }
      if (fd == listener_.get()) {
        Accept();
      } else if (fd == daemon_.notify_fd()) {
        daemon_.OnRunnerMessages();
      } else if (fd == wake_.get()) {
        uint64_t count;
        [[maybe_unused]] ssize_t got = ::read(wake_.get(), &count, sizeof count);
        std::vector<std::function<void()>> tasks;
        {
          std::lock_guard lock(posted_mutex_);
          tasks.swap(posted_);
        }
        for (auto& task : tasks) task();
      } else {
        auto it = connections_.find(fd);
        if (it == connections_.end()) continue;
        Connection& connection = *it->second;
        if (events[i].events & EPOLLERR) {
          Close(fd);
          continue;
        }
        if (connection.dead) continue;
        if (events[i].events & EPOLLOUT) Flush(connection);
        if (!connection.dead && (events[i].events & EPOLLIN)) OnReadable(connection);
      }
    }
    // The round's audit records, in one durable commit.
    daemon_.FlushAudit();
    Reap();
  }
}

void LocalServer::Accept() {
  while (true) {
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) return;
    ucred peer{};
    socklen_t length = sizeof peer;
    auto connection = std::make_unique<Connection>();
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0 || peer.uid != 0) {
      std::string line =
          DumpJson(ErrorFrame(Error::Make(ErrorCode::kPermissionDenied,
                                          fmt::format("uid {}: only root may use ralphd's "
                                                      "local socket",
                                                      peer.uid)))) +
          "\n";
      [[maybe_unused]] ssize_t sent = ::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL);
      continue;
    }
    if (connections_.size() >= options_.max_connections) {
      std::string line = DumpJson(ErrorFrame(Error::Make(
                             ErrorCode::kBusy,
                             fmt::format("more than {} connections", options_.max_connections)))) +
                         "\n";
      [[maybe_unused]] ssize_t sent = ::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL);
      continue;
    }
    connection->uid = peer.uid;
    connection->pid = peer.pid;
    int raw = fd.get();
    epoll_event event{.events = EPOLLIN | EPOLLRDHUP, .data = {.fd = raw}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, raw, &event) != 0) continue;
    connection->fd = std::move(fd);
    connections_[raw] = std::move(connection);
  }
}

void LocalServer::Close(int fd) {
  auto it = connections_.find(fd);
  if (it == connections_.end() || it->second->dead) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  Connection& connection = *it->second;
  connection.dead = true;
  if (uint64_t attachment = std::exchange(connection.attachment, 0)) {
    daemon_.DetachTerminal(attachment, "disconnected");
  }
}

void LocalServer::Reap() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    it = it->second->dead ? connections_.erase(it) : std::next(it);
  }
}

void LocalServer::OnReadable(Connection& connection) {
  int fd = connection.fd.get();
  char buffer[65536];
  bool eof = false;
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      eof = true;
      break;
    }
    connection.in.append(buffer, static_cast<size_t>(n));
    if (connection.in.size() > options_.max_frame_bytes &&
        connection.in.find('\n') == std::string::npos) {
      Send(connection, ErrorFrame(Invalid(
                           fmt::format("frame: longer than {} bytes", options_.max_frame_bytes))));
      connection.close_after_flush = true;
      connection.in.clear();
      Flush(connection);
      return;
    }
  }
  // Requests are handled one at a time; a following connection takes no
  // more, an attached one only terminal frames.
  size_t newline;
  while ((connection.follow == Connection::Follow::kNone ||
          connection.follow == Connection::Follow::kTerminal) &&
         !connection.close_after_flush &&
         (newline = connection.in.find('\n')) != std::string::npos) {
    std::string line = connection.in.substr(0, newline);
    connection.in.erase(0, newline + 1);
    if (connection.follow == Connection::Follow::kTerminal) {
      HandleTerminalFrame(connection, line);
    } else {
      HandleFrame(connection, line);
    }
    if (connection.dead) return;
  }
  if (eof) {
    // The client sent all it will: answer what it asked, then close.
    if (connection.follow == Connection::Follow::kNone || connection.out.empty()) {
      connection.close_after_flush = true;
    }
    Flush(connection);
    if (!connection.dead && connection.follow != Connection::Follow::kNone) Close(fd);
  }
}

void LocalServer::HandleFrame(Connection& connection, std::string_view line) {
  Result<Frame> frame = DecodeFrame(line);
  if (!frame) {
    Send(connection, ErrorFrame(frame.error()));
    return;
  }
  Result<Command> command = DecodeRequest(frame->request);
  if (!command) {
    Send(connection, ErrorFrame(command.error()));
    return;
  }
  Caller caller = Caller::LocalUid(connection.uid);
  if (!std::exchange(connection.session_recorded, true)) {
    daemon_.SessionOpened(caller, fmt::format("pid {}", connection.pid));
  }
  if (frame->attach) {
    const auto* terminal = std::get_if<TerminalAttachCommand>(&*command);
    if (!terminal) {
      Send(connection,
           ErrorFrame(Invalid("frame.attach: only GET /v1/jobs/{id}/terminal attaches")));
      return;
    }
    Attach(connection, caller, terminal->id);
    return;
  }
  if (frame->follow) {
    if (const auto* logs = std::get_if<JobLogsCommand>(&*command)) {
      Reply reply = daemon_.Dispatch(caller, *command);
      Send(connection, ReplyFrame(reply));
      if (!reply.ok() || connection.dead) return;
      connection.follow = Connection::Follow::kLogs;
      connection.job = logs->id;
      connection.stream = logs->stream;
      connection.offset =
          reply.body.value("offset", uint64_t{0}) +
          Base64Decode(reply.body.value("data_base64", ""), "data").value_or(std::string()).size();
      PumpLogs(connection);
      return;
    }
    if (const auto* events = std::get_if<EventsCommand>(&*command)) {
      Reply reply = daemon_.Dispatch(caller, *command);
      if (!reply.ok()) {
        Send(connection, ReplyFrame(reply));
        return;
      }
      Send(connection, {{"ok", true}, {"body", {{"following", true}}}});
      if (connection.dead) return;
      connection.follow = Connection::Follow::kEvents;
      connection.after = events->after;
      connection.event_job = events->job;
      PumpEvents(connection);
      return;
    }
    Send(
        connection,
        ErrorFrame(Invalid("frame.follow: only GET /v1/jobs/{id}/logs and GET /v1/events follow")));
    return;
  }
  Send(connection, ReplyFrame(daemon_.Dispatch(caller, *command)));
  daemon_.AfterReply();
}

void LocalServer::Attach(Connection& connection, const Caller& caller, uint64_t job) {
  const int fd = connection.fd.get();
  // Both run on the loop's thread; a connection detaches when it closes,
  // so neither finds its fd taken by another connection.
  auto find = [this, fd]() -> Connection* {
    auto it = connections_.find(fd);
    return it == connections_.end() || it->second->dead ? nullptr : it->second.get();
  };
  TerminalCallbacks callbacks;
  callbacks.output = [this, find](std::string_view output) {
    if (Connection* attached = find()) {
      Send(*attached, {{"output", {{"data_base64", Base64Encode(output)}}}});
    }
  };
  callbacks.closed = [this, find](int exit_status) {
    if (Connection* attached = find()) {
      attached->attachment = 0;
      attached->close_after_flush = true;
      Send(*attached, {{"closed", {{"exit_status", exit_status}}}});
    }
  };
  Result<Daemon::AttachedTerminal> attached =
      daemon_.AttachTerminal(caller, job, std::move(callbacks));
  if (!attached) {
    Send(connection, ErrorFrame(attached.error()));
    return;
  }
  connection.follow = Connection::Follow::kTerminal;
  connection.attachment = attached->attachment;
  connection.job = job;
  Send(connection, {{"ok", true},
                    {"body",
                     {{"job", job},
                      {"attachment", attached->attachment},
                      {"replayed", attached->replay.size()}}}});
  if (!attached->replay.empty()) {
    Send(connection, {{"output", {{"data_base64", Base64Encode(attached->replay)}}}});
  }
}

void LocalServer::HandleTerminalFrame(Connection& connection, std::string_view line) {
  Result<TerminalFrame> frame = DecodeTerminalFrame(line);
  if (!frame) {
    Send(connection, ErrorFrame(frame.error()));
    return;
  }
  if (!connection.attachment) return;  // closed: only the last frames are left to send
  Result<void> done;
  switch (frame->kind) {
    case TerminalFrame::Kind::kInput:
      done = daemon_.WriteTerminal(connection.attachment, frame->input);
      break;
    case TerminalFrame::Kind::kResize:
      done = daemon_.ResizeTerminal(connection.attachment, frame->columns, frame->rows);
      break;
    case TerminalFrame::Kind::kDetach:
      daemon_.DetachTerminal(std::exchange(connection.attachment, 0), "detached");
      connection.close_after_flush = true;
      Send(connection, {{"detached", {{"job", connection.job}}}});
      return;
  }
  if (!done) Send(connection, ErrorFrame(done.error()));
}

void LocalServer::PumpLogs(Connection& connection) {
  while (true) {
    Result<OutputSlice> slice =
        daemon_.store().ReadOutput(connection.job, connection.stream, connection.offset, 1 << 20);
    if (!slice) {
      Send(connection, ErrorFrame(slice.error()));
      connection.close_after_flush = true;
      break;
    }
    if (slice->data.empty()) {
      Result<JobRecord> job = daemon_.store().Job(connection.job);
      if (job && IsFinal(job->state)) {
        Send(connection, {{"end", JobToJson(*job)}});
        connection.close_after_flush = true;
      }
      break;
    }
    Send(connection,
         {{"output", {{"offset", slice->offset}, {"data_base64", Base64Encode(slice->data)}}}});
    if (connection.dead) return;
    connection.offset = slice->offset + slice->data.size();
  }
  Flush(connection);
}

void LocalServer::PumpEvents(Connection& connection) {
  while (true) {
    Result<std::vector<Event>> events =
        daemon_.store().EventsAfter(connection.after, connection.event_job, 1000);
    if (!events || events->empty()) break;
    for (const Event& event : *events) {
      Send(connection, {{"event", event.ToJson()}});
      if (connection.dead) return;
      connection.after = event.seq;
    }
  }
  Flush(connection);
}

void LocalServer::OnEvent(const Event& event) {
  std::vector<int> fds;
  for (const auto& [fd, connection] : connections_) fds.push_back(fd);
  for (int fd : fds) {
    auto it = connections_.find(fd);
    if (it == connections_.end()) continue;
    Connection& connection = *it->second;
    if (connection.dead || connection.close_after_flush) continue;
    if (connection.follow == Connection::Follow::kLogs && event.job == connection.job) {
      PumpLogs(connection);
    } else if (connection.follow == Connection::Follow::kEvents) {
      PumpEvents(connection);
    }
  }
}

void LocalServer::Send(Connection& connection, const json& frame) {
  connection.out += DumpJson(frame);
  connection.out += '\n';
  Flush(connection);
}

void LocalServer::Flush(Connection& connection) {
  if (connection.dead) return;
  int fd = connection.fd.get();
  while (!connection.out.empty()) {
    ssize_t n = ::send(fd, connection.out.data(), connection.out.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n < 0) {
      Close(fd);
      return;
    }
    connection.out.erase(0, static_cast<size_t>(n));
  }
  if (connection.out.size() > options_.max_pending_bytes) {
    Close(fd);  // a client that does not read
    return;
  }
  if (connection.out.empty() && connection.close_after_flush) {
    Close(fd);
    return;
  }
  uint32_t want = EPOLLIN | EPOLLRDHUP | (connection.out.empty() ? 0u : uint32_t{EPOLLOUT});
  epoll_event event{.events = want, .data = {.fd = fd}};
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &event);
}

}  // namespace ralph::ralphd
