// `ralphctl job attach` and `job run --tty`: this terminal (or a pipe) on a
// tty job's pty, over any transport that implements
// TerminalTransportInterface (the local socket here; the HTTPS WebSocket
// fits the same interface). Private to ralphctl.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "platform/result.h"
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {

// Ctrl-]: detaches an interactive attach (the job runs on), as telnet's.
inline constexpr char kDetachKey = 0x1d;

struct TerminalEvent {
  enum class Kind {
    kOutput,    // data: pty bytes
    kClosed,    // the job is over: exit_status
    kDetached,  // the detach asked for is done (or the daemon let go)
    kRefused,   // data: why the daemon refused a frame (input it has no room
                // for); the attachment stays
  };
  Kind kind = Kind::kOutput;
  std::string data;
  int exit_status = 0;
};

// One attachment to one job's terminal.
class TerminalTransportInterface {
 public:
  virtual ~TerminalTransportInterface() = default;
  // Attaches; the daemon's refusal (kNotFound, kInvalidState) as its Error.
  virtual Result<void> Open(uint64_t job) = 0;
  virtual Result<void> SendInput(std::string_view bytes) = 0;
  virtual Result<void> Resize(uint16_t columns, uint16_t rows) = 0;
  // Asks to detach; Receive then yields kDetached (or kClosed if the job
  // ended first).
  virtual Result<void> Detach() = 0;
  // Blocks for the next event; an Error when the attachment is lost.
  virtual Result<TerminalEvent> Receive() = 0;
  // For poll(): readable when Receive has something, unless it has an
  // event buffered already (has_buffered_event).
  virtual int poll_fd() const = 0;
  virtual bool has_buffered_event() const = 0;
};

// The local socket's attach frames (docs/ralphd.md "Local socket").
std::unique_ptr<TerminalTransportInterface> MakeLocalTerminalTransport(
    const std::string& socket_path);
// The transport the options select: the local socket (--socket) or, with
// --remote, the API's terminal WebSocket (docs/api.md "Terminal") on a
// pinned mutual-TLS connection.
Result<std::unique_ptr<TerminalTransportInterface>> OpenTerminalTransport(const ParsedArgs& args);

// What a pipe's end of input does: `job attach` detaches, `job run --tty`
// types the terminal's end-of-file (Ctrl-D) and stays until the job ends.
enum class InputEnd { kDetach, kSendEof };

// Attaches `transport` to `job` and relays: this terminal in raw mode when
// stdin is one (restored on every exit path and on SIGINT/SIGTERM/SIGHUP,
// which detach; SIGWINCH resizes; kDetachKey detaches), else stdin's bytes
// as input until its end (`at_end`). Output goes to stdout. The exit status
// for ralphctl: the job's (clamped to 0..255; a job ended by signal N
// gives 128 + N) when it ended, 0 after a detach; an error is printed.
int RunTerminal(TerminalTransportInterface& transport, uint64_t job, InputEnd at_end,
                std::string_view command);

// The window size of this terminal (stdin, else stdout), if either is one.
bool LocalWindowSize(uint16_t& columns, uint16_t& rows);

}  // namespace ralph::ralphctl
