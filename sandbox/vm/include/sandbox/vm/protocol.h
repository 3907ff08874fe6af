// The control protocol between the host (the VM job's owner) and the guest
// agent (ralph-guest, PID 1 of the guest), over vsock or virtio-serial
// (control_channel.h): a stream of frames, each an 8-byte header (payload
// length u32 LE, message type u16 LE, reserved u16 = 0) and a payload of at
// most kMaxFramePayload bytes. Every integer is little-endian; a string is
// a u32 length and its bytes.
//
// The guest is untrusted: whatever runs the job may have taken over its
// kernel. So the host's decoder is strict and bounded: the length is
// checked before a byte of the payload is buffered, an unknown type, a
// non-zero reserved field, a short or over-long payload, an enum out of
// range and a message the guest may not send are errors naming what was
// wrong, and nothing a frame says makes the host allocate more than
// kMaxFramePayload. The guest decodes the host's messages the same way
// (the same code), and validates a started spec with ValidateSpec.
//
// A session: the guest says kReady once its agent runs (a booted VM waits
// there, e.g. in the pool); the host sends kStart (the job's SandboxSpec as
// the guest sees it); the guest answers kStarted or kFailed; then kOutput chunks,
// and exactly one kExit at the end. The host may send kStdin, kResize and
// kSignal at any time after kStart.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "platform/result.h"
#include "sandbox/service.h"
#include "sandbox/spec.h"

namespace ralph::sandbox::vm {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 8;
inline constexpr uint32_t kMaxFramePayload = 1u << 20;
// The most a kOutput or kStdin chunk carries (a frame's payload less the
// stream byte and the string length).
inline constexpr size_t kMaxChunkBytes = kMaxFramePayload - 16;

enum class MessageType : uint16_t {
  // host -> guest
  kStart = 1,
  kStdin = 2,
  kResize = 3,
  kSignal = 4,
  // guest -> host
  kStarted = 16,
  kOutput = 17,
  kExit = 18,
  kFailed = 19,
  kReady = 20,
};

struct StartMessage {
  uint32_t version = kProtocolVersion;
  SandboxSpec spec;
};
// An empty chunk closes the job's stdin.
struct StdinMessage {
  std::string data;
};
struct ResizeMessage {
  TerminalSize size;
};
// Only the signals a job's owner sends (kAllowedSignals).
struct SignalMessage {
  int signal = 0;
};
struct StartedMessage {
  uint32_t version = kProtocolVersion;
};
// The guest agent runs and waits for kStart.
struct ReadyMessage {
  uint32_t version = kProtocolVersion;
};
struct OutputMessage {
  OutputStream stream = OutputStream::kStdout;
  std::string data;
};
// The job's end: what JobResult says, less the output (streamed) and the
// exec records (not carried across yet).
struct ExitMessage {
  Termination termination = Termination::kExited;
  int exit_code = -1;
  int signal = 0;
  uint64_t user_cpu_us = 0;
  uint64_t system_cpu_us = 0;
  uint64_t max_rss_kib = 0;
  CgroupUsage cgroup;
  uint64_t output_dropped_bytes = 0;
  uint64_t wall_ns = 0;
};
// The guest could not start the job (or lost it): the error it got.
struct FailedMessage {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;  // at most kMaxFailureMessageBytes
};
inline constexpr size_t kMaxFailureMessageBytes = 4096;

using HostMessage = std::variant<StartMessage, StdinMessage, ResizeMessage, SignalMessage>;
using GuestMessage =
    std::variant<StartedMessage, OutputMessage, ExitMessage, FailedMessage, ReadyMessage>;

// One whole frame (header and payload) for a message. kInvalidArgument
// when it would not fit a frame (a spec too large, a chunk over
// kMaxChunkBytes).
Result<std::string> EncodeHostMessage(const HostMessage& message);
Result<std::string> EncodeGuestMessage(const GuestMessage& message);

struct Frame {
  MessageType type;
  std::string payload;
};

// Splits a byte stream into frames. The first error ends the stream: every
// later call returns it again.
class FrameDecoder {
 public:
  // Appends bytes read from the channel.
  void Feed(std::string_view bytes);
  // The next whole frame, nullopt while it is incomplete; kCorrupt for a
  // header no peer of this version writes.
  Result<std::optional<Frame>> Next();
  // Bytes fed and not yet returned in a frame.
  size_t buffered() const { return buffer_.size() - offset_; }

 private:
  std::string buffer_;
  size_t offset_ = 0;
  std::optional<Error> failed_;
};

// Decode a frame's payload, refusing a message the sender may not send
// (kCorrupt, naming the field or the type).
Result<HostMessage> DecodeHostMessage(const Frame& frame);
Result<GuestMessage> DecodeGuestMessage(const Frame& frame);

// The signals a host may forward into a job.
bool IsForwardableSignal(int signal);

}  // namespace ralph::sandbox::vm
