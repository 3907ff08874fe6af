// Terminals: who is attached to which tty job's pty (a job submitted with
// "tty": true), the core's side of an interactive terminal. Transports (the
// local socket's attach frames, the HTTPS API's WebSocket) attach through
// Daemon::AttachTerminal; this class is the bookkeeping behind it, on the
// daemon's loop thread like the rest of the core.
//
// Any number of attachments per job (watchers), any of them may type. An
// attachment gets the job's output from the moment it attached (what came
// before is in the job's stored output, `logs`). Detaching leaves the job
// running. When the job is over, every attachment's `closed` runs once with
// the exit status and the attachment is gone.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ralph::ralphd {

struct TerminalCallbacks {
  // The pty's output, in order, on the loop's thread.
  std::function<void(std::string_view output)> output;
  // The job is over (TerminalExitStatus); nothing follows.
  std::function<void(int exit_status)> closed;
};

struct TerminalAttachment {
  uint64_t id = 0;
  uint64_t job = 0;
  std::string caller;  // Caller::ToString(): "uid:0", "cert:<id>"
};

class TerminalHub {
 public:
  TerminalAttachment Attach(uint64_t job, std::string caller, TerminalCallbacks callbacks);
  std::optional<TerminalAttachment> Find(uint64_t attachment) const;
  // Removes it; nullopt when it is not (or no longer) attached.
  std::optional<TerminalAttachment> Detach(uint64_t attachment);

  // Hands `output` to every attachment of `job`. A callback may detach any
  // attachment (its own too).
  void Output(uint64_t job, std::string_view output);
  // The job is over: every attachment's `closed`, then they are gone.
  std::vector<TerminalAttachment> Close(uint64_t job, int exit_status);

  // Input and a window size for a tty job that was attached to before it
  // ran: kept until it starts (Take*), at most `max_bytes` of input.
  bool QueueInput(uint64_t job, std::string_view input, size_t max_bytes);
  std::string TakeInput(uint64_t job);
  void SetSize(uint64_t job, uint16_t columns, uint16_t rows);
  std::optional<std::pair<uint16_t, uint16_t>> TakeSize(uint64_t job);

  size_t count() const { return attachments_.size(); }

 private:
  struct Entry {
    TerminalAttachment attachment;
    TerminalCallbacks callbacks;
  };
  std::vector<uint64_t> Of(uint64_t job) const;

  uint64_t next_id_ = 0;
  std::map<uint64_t, std::shared_ptr<Entry>> attachments_;
  std::map<uint64_t, std::string> input_;
  std::map<uint64_t, std::pair<uint16_t, uint16_t>> sizes_;
};

}  // namespace ralph::ralphd
