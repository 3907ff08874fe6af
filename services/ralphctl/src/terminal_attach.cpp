#include "terminal_attach.h"

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "ralphd_client.h"
#include "services/ralphctl/command.h"
#include "services/ralphd/api/client.h"
#include "services/ralphd/commands.h"
#include "transport.h"

namespace ralph::ralphctl {
namespace {

using nlohmann::json;

class LocalTerminalTransport final : public TerminalTransportInterface {
 public:
  explicit LocalTerminalTransport(std::string socket_path) : socket_path_(std::move(socket_path)) {}

  Result<void> Open(uint64_t job) override {
    client_ = TRY(RalphdClient::Connect(socket_path_));
    json reply = TRY(client_->Call(
        {{"verb", "GET"}, {"path", fmt::format("/v1/jobs/{}/terminal", job)}, {"attach", true}}));
    if (!reply.value("ok", false)) return ReplyError(reply);
    return {};
  }

  Result<void> SendInput(std::string_view bytes) override {
    return client_->Send({{"input_base64", ralphd::Base64Encode(bytes)}});
  }

  Result<void> Resize(uint16_t columns, uint16_t rows) override {
    return client_->Send({{"resize", {{"columns", columns}, {"rows", rows}}}});
  }

  Result<void> Detach() override { return client_->Send({{"detach", true}}); }

  Result<TerminalEvent> Receive() override {
    std::optional<json> frame = TRY(client_->Next());
    if (!frame) {
      return Error::Make(ErrorCode::kNetwork, "ralphd closed the terminal without a word");
    }
    if (frame->contains("output")) {
      return TerminalEvent{.kind = TerminalEvent::Kind::kOutput,
                           .data = TRY(ralphd::Base64Decode(
                               (*frame)["output"].value("data_base64", ""), "output.data_base64"))};
    }
    if (frame->contains("closed")) {
      return TerminalEvent{.kind = TerminalEvent::Kind::kClosed,
                           .exit_status = (*frame)["closed"].value("exit_status", -1)};
    }
    if (frame->contains("detached")) return TerminalEvent{.kind = TerminalEvent::Kind::kDetached};
    if (frame->contains("error")) {
      return TerminalEvent{.kind = TerminalEvent::Kind::kRefused,
                           .data = ReplyError(*frame).message()};
    }
    return Error::Make(ErrorCode::kCorrupt, fmt::format("ralphd sent an unknown terminal frame: {}",
                                                        ralphd::DumpJson(*frame)));
  }

  int poll_fd() const override { return client_ ? client_->fd() : -1; }
  bool has_buffered_event() const override { return client_ && client_->has_buffered_frame(); }

 private:
  std::string socket_path_;
  std::optional<RalphdClient> client_;
};

// The API's terminal WebSocket: binary frames are pty bytes, text frames
// JSON control messages (docs/api.md "Terminal").
class RemoteTerminalTransport final : public TerminalTransportInterface {
 public:
  explicit RemoteTerminalTransport(RemoteTarget target) : target_(std::move(target)) {}

  Result<void> Open(uint64_t job) override {
    connection_ = TRY(ConnectRemote(target_));
    return connection_->OpenTerminal(std::to_string(job));
  }

  Result<void> SendInput(std::string_view bytes) override {
    return connection_->SendTerminalInput(bytes);
  }

  Result<void> Resize(uint16_t columns, uint16_t rows) override {
    return connection_->SendTerminalControl(
        json{{"type", "resize"}, {"columns", columns}, {"rows", rows}}.dump());
  }

  Result<void> Detach() override {
    detaching_ = true;
    return connection_->SendTerminalControl(json{{"type", "detach"}}.dump());
  }

  Result<TerminalEvent> Receive() override {
    ralphd::api::ApiConnection::TerminalMessage message = TRY(connection_->ReceiveTerminal());
    if (message.closed) {
      if (detaching_) return TerminalEvent{.kind = TerminalEvent::Kind::kDetached};
      return Error::Make(ErrorCode::kNetwork,
                         fmt::format("{} closed the terminal without a word", target_.url));
    }
    if (message.binary) {
      return TerminalEvent{.kind = TerminalEvent::Kind::kOutput, .data = std::move(message.data)};
    }
    json control = json::parse(message.data, nullptr, false);
    std::string type = control.is_object() ? control.value("type", "") : "";
    if (type == "exit") {
      return TerminalEvent{.kind = TerminalEvent::Kind::kClosed,
                           .exit_status = control.value("status", -1)};
    }
    if (type == "error") {
      return TerminalEvent{.kind = TerminalEvent::Kind::kRefused,
                           .data = control.value("message", "")};
    }
    return Error::Make(ErrorCode::kCorrupt, fmt::format("{} sent an unknown terminal message: {}",
                                                        target_.url, message.data.substr(0, 200)));
  }

  int poll_fd() const override { return connection_ ? connection_->fd() : -1; }
  bool has_buffered_event() const override {
    return connection_ && connection_->HasBufferedInput();
  }

 private:
  RemoteTarget target_;
  std::unique_ptr<ralphd::api::ApiConnection> connection_;
  bool detaching_ = false;
};

// This terminal in raw mode for as long as it lives.
class RawMode {
 public:
  RawMode() {
    if (::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0;
  }
  ~RawMode() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_);
  }
  RawMode(const RawMode&) = delete;
  RawMode& operator=(const RawMode&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

// The signals are taken through a signalfd while attached (so a raw
// terminal is always restored by RawMode's destructor), and given back.
class Signals {
 public:
  Signals() {
    sigemptyset(&set_);
    for (int signal : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH}) sigaddset(&set_, signal);
    ::sigprocmask(SIG_BLOCK, &set_, &old_);
    fd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
  }
  ~Signals() {
    fd_.reset();
    ::sigprocmask(SIG_SETMASK, &old_, nullptr);
  }
  int fd() const { return fd_.get(); }
  // The signals that arrived (0 when none).
  int Next() {
    signalfd_siginfo info;
    if (::read(fd_.get(), &info, sizeof info) != sizeof info) return 0;
    return static_cast<int>(info.ssi_signo);
  }

 private:
  sigset_t set_{}, old_{};
  UniqueFd fd_;
};

int ExitFor(int exit_status) {
  if (exit_status < 0) return kExitFailed;
  return exit_status > 255 ? 255 : exit_status;
}

}  // namespace

std::unique_ptr<TerminalTransportInterface> MakeLocalTerminalTransport(
    const std::string& socket_path) {
  return std::make_unique<LocalTerminalTransport>(socket_path);
}

Result<std::unique_ptr<TerminalTransportInterface>> OpenTerminalTransport(const ParsedArgs& args) {
  if (args.Has("--remote")) {
    return std::unique_ptr<TerminalTransportInterface>(
        new RemoteTerminalTransport(TRY(RemoteTargetFor(args))));
  }
  return MakeLocalTerminalTransport(
      args.Value("--socket").value_or(std::string(kDefaultRalphdSocket)));
}

bool LocalWindowSize(uint16_t& columns, uint16_t& rows) {
  winsize size{};
  for (int fd : {STDIN_FILENO, STDOUT_FILENO}) {
    if (::ioctl(fd, TIOCGWINSZ, &size) == 0 && size.ws_col > 0 && size.ws_row > 0) {
      columns = size.ws_col;
      rows = size.ws_row;
      return true;
    }
  }
  return false;
}

int RunTerminal(TerminalTransportInterface& transport, uint64_t job, InputEnd at_end,
                std::string_view command) {
  auto failed = [&](const Error& error) { return Failed(std::string(command), error); };
  if (Result<void> opened = transport.Open(job); !opened) return failed(opened.error());
  const bool interactive = ::isatty(STDIN_FILENO) != 0;
  uint16_t columns = 0, rows = 0;
  if (LocalWindowSize(columns, rows)) {
    if (Result<void> sized = transport.Resize(columns, rows); !sized) return failed(sized.error());
  }
  if (interactive) {
    fmt::print(stderr, "attached to job {}; Ctrl-] detaches (the job keeps running)\n", job);
  }
  Signals signals;
  std::optional<RawMode> raw;
  if (interactive) raw.emplace();
  bool input_open = true;
  bool detaching = false;
  auto detach = [&]() -> Result<void> {
    if (detaching) return {};
    detaching = true;
    input_open = false;
    return transport.Detach();
  };
  while (true) {
    if (!transport.has_buffered_event()) {
      pollfd fds[3] = {{transport.poll_fd(), POLLIN, 0},
                       {input_open ? STDIN_FILENO : -1, POLLIN, 0},
                       {signals.fd(), POLLIN, 0}};
      if (::poll(fds, 3, -1) < 0) {
        if (errno == EINTR) continue;
        raw.reset();
        return failed(Error::FromErrno("poll", errno));
      }
      if (fds[2].revents) {
        while (int signal = signals.Next()) {
          if (signal == SIGWINCH) {
            if (LocalWindowSize(columns, rows)) IgnoreError(transport.Resize(columns, rows));
          } else {
            IgnoreError(detach());
          }
        }
      }
      if (fds[1].revents) {
        char buffer[4096];
        ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        std::string_view input(buffer, n > 0 ? static_cast<size_t>(n) : 0);
        size_t key = interactive ? input.find(kDetachKey) : std::string_view::npos;
        if (key != std::string_view::npos) input = input.substr(0, key);
        Result<void> sent;
        if (!input.empty()) sent = transport.SendInput(input);
        if (sent && key != std::string_view::npos) sent = detach();
        if (sent && n <= 0) {
          if (at_end == InputEnd::kDetach) {
            sent = detach();
          } else {
            input_open = false;
            sent = transport.SendInput("\x04");
          }
        }
        if (!sent) {
          // The daemon let go (the job ended, most likely): what it sent
          // last (`closed`) is still to be read, or the loss is reported.
          input_open = false;
          detaching = true;
        }
      }
      if (!fds[0].revents) continue;
    }
    Result<TerminalEvent> event = transport.Receive();
    if (!event) {
      raw.reset();
      return failed(event.error());
    }
    switch (event->kind) {
      case TerminalEvent::Kind::kOutput:
        // A closed stdout loses the output; the attachment goes on.
        IgnoreError(WriteAll(STDOUT_FILENO, event->data, "stdout"));
        break;
      case TerminalEvent::Kind::kClosed:
        raw.reset();
        if (interactive) {
          fmt::print(stderr, "\njob {} ended (exit status {})\n", job, event->exit_status);
        }
        return ExitFor(event->exit_status);
      case TerminalEvent::Kind::kRefused:
        fmt::print(stderr, "ralphctl {}: {}{}", command, event->data, interactive ? "\r\n" : "\n");
        break;
      case TerminalEvent::Kind::kDetached:
        raw.reset();
        if (interactive) fmt::print(stderr, "\ndetached from job {}; it keeps running\n", job);
        return kExitOk;
    }
  }
}

}  // namespace ralph::ralphctl
