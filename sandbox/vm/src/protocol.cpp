#include "sandbox/vm/protocol.h"

#include <csignal>
#include <cstring>

#include <fmt/format.h>

namespace ralph::sandbox::vm {
namespace {

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void I32(int32_t v) { U32(static_cast<uint32_t>(v)); }
  void Bool(bool v) { U8(v ? 1 : 0); }
  void Str(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }
  void Strs(const std::vector<std::string>& v) {
    U32(static_cast<uint32_t>(v.size()));
    for (const auto& s : v) Str(s);
  }
  std::string& out() { return out_; }

 private:
  void Le(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

// Reads a payload; the first failure sticks and names the field that was
// being read, so a decode is a straight line of reads and one check.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  uint8_t U8(std::string_view field) { return static_cast<uint8_t>(Le(field, 1)); }
  uint16_t U16(std::string_view field) { return static_cast<uint16_t>(Le(field, 2)); }
  uint32_t U32(std::string_view field) { return static_cast<uint32_t>(Le(field, 4)); }
  uint64_t U64(std::string_view field) { return Le(field, 8); }
  int32_t I32(std::string_view field) { return static_cast<int32_t>(U32(field)); }
  bool Bool(std::string_view field) {
    uint8_t v = U8(field);
    if (v > 1) Fail(field, fmt::format("{} is not a boolean", v));
    return v == 1;
  }
  // An enum of `count` values 0..count-1.
  uint8_t Enum(std::string_view field, uint8_t count) {
    uint8_t v = U8(field);
    if (v >= count) Fail(field, fmt::format("{} is out of range (0..{})", v, count - 1));
    return v;
  }
  std::string Str(std::string_view field, size_t max) {
    uint32_t size = U32(field);
    if (error_) return {};
    if (size > max) {
      Fail(field, fmt::format("{} bytes, more than {}", size, max));
      return {};
    }
    if (size > data_.size() - offset_) {
      Fail(field, fmt::format("{} bytes announced, {} left", size, data_.size() - offset_));
      return {};
    }
    std::string s(data_.substr(offset_, size));
    offset_ += size;
    return s;
  }
  // A count of elements each at least `min_element_bytes` long: never more
  // than the payload could hold, so a hostile count allocates nothing.
  uint32_t Count(std::string_view field, size_t min_element_bytes, uint32_t max) {
    uint32_t n = U32(field);
    if (error_) return 0;
    if (n > max) {
      Fail(field, fmt::format("{} entries, more than {}", n, max));
      return 0;
    }
    if (static_cast<uint64_t>(n) * min_element_bytes > data_.size() - offset_) {
      Fail(field, fmt::format("{} entries announced, the payload is shorter", n));
      return 0;
    }
    return n;
  }
  std::vector<std::string> Strs(std::string_view field, uint32_t max_count, size_t max_bytes) {
    std::vector<std::string> out;
    uint32_t n = Count(field, 4, max_count);
    out.reserve(n);
    for (uint32_t i = 0; i < n && !error_; ++i) {
      out.push_back(Str(fmt::format("{}[{}]", field, i), max_bytes));
    }
    return out;
  }
  void Fail(std::string_view field, std::string what) {
    if (!error_) error_ = Error::Make(ErrorCode::kCorrupt, fmt::format("{}: {}", field, what));
  }
  // The decode's verdict: its first failure, or trailing bytes.
  Result<void> Finish(std::string_view message) {
    if (!error_ && offset_ != data_.size()) {
      Fail("payload", fmt::format("{} bytes after the message's end", data_.size() - offset_));
    }
    if (error_) return std::move(*error_).WithContext(fmt::format("decoding {}", message));
    return {};
  }

 private:
  uint64_t Le(std::string_view field, size_t bytes) {
    if (error_) return 0;
    if (data_.size() - offset_ < bytes) {
      Fail(field, "the payload ends before it");
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[offset_ + i])) << (8 * i);
    }
    offset_ += bytes;
    return v;
  }

  std::string_view data_;
  size_t offset_ = 0;
  std::optional<Error> error_;
};

// Bounds on a decoded spec; ValidateSpec checks its meaning afterwards.
constexpr size_t kMaxPathBytes = 4096;
constexpr uint32_t kMaxListEntries = 4096;
constexpr size_t kMaxArgBytes = 128 * 1024;

void PutSpec(Writer& w, const SandboxSpec& s) {
  w.U8(static_cast<uint8_t>(s.base_kind));
  w.Str(s.base);
  w.U32(static_cast<uint32_t>(s.binds.size()));
  for (const auto& b : s.binds) {
    w.Str(b.source);
    w.Str(b.destination);
    w.U8(static_cast<uint8_t>(b.access));
  }
  w.Strs(s.argv);
  w.Strs(s.env);
  w.Str(s.cwd);
  w.Str(s.workspace);
  w.Str(s.hostname);
  const Limits& l = s.limits;
  w.U64(l.memory_bytes);
  w.U32(l.pids);
  w.U32(l.cpu_millis);
  w.U32(l.io_weight);
  w.U64(l.disk_bytes);
  w.U64(l.tmp_bytes);
  w.U64(l.open_files);
  w.U64(l.file_size_bytes);
  w.Bool(s.network.enabled);
  w.U32(static_cast<uint32_t>(s.network.allow.size()));
  for (const auto& r : s.network.allow) {
    w.Str(r.cidr);
    w.U16(r.port_min);
    w.U16(r.port_max);
    w.U8(static_cast<uint8_t>(r.protocol));
  }
  w.Strs(s.network.allowed_domains);
  w.U32(static_cast<uint32_t>(s.network.domain_ports.size()));
  for (uint16_t p : s.network.domain_ports) w.U16(p);
  w.U64(static_cast<uint64_t>(s.timeout.count()));
  w.U8(static_cast<uint8_t>(s.stdio));
  w.U16(s.terminal_size.columns);
  w.U16(s.terminal_size.rows);
  w.Bool(s.record_exec);
  w.Bool(s.proc_subset_pid);
}

SandboxSpec GetSpec(Reader& r) {
  SandboxSpec s;
  s.base_kind = static_cast<BaseKind>(r.Enum("spec.base_kind", 2));
  s.base = r.Str("spec.base", kMaxPathBytes);
  uint32_t binds = r.Count("spec.binds", 9, kMaxListEntries);
  for (uint32_t i = 0; i < binds; ++i) {
    BindMount b;
    b.source = r.Str(fmt::format("spec.binds[{}].source", i), kMaxPathBytes);
    b.destination = r.Str(fmt::format("spec.binds[{}].destination", i), kMaxPathBytes);
    b.access = static_cast<BindAccess>(r.Enum(fmt::format("spec.binds[{}].access", i), 2));
    s.binds.push_back(std::move(b));
  }
  s.argv = r.Strs("spec.argv", kMaxListEntries, kMaxArgBytes);
  s.env = r.Strs("spec.env", kMaxListEntries, kMaxArgBytes);
  s.cwd = r.Str("spec.cwd", kMaxPathBytes);
  s.workspace = r.Str("spec.workspace", kMaxPathBytes);
  s.hostname = r.Str("spec.hostname", 64);
  Limits& l = s.limits;
  l.memory_bytes = r.U64("spec.limits.memory_bytes");
  l.pids = r.U32("spec.limits.pids");
  l.cpu_millis = r.U32("spec.limits.cpu_millis");
  l.io_weight = r.U32("spec.limits.io_weight");
  l.disk_bytes = r.U64("spec.limits.disk_bytes");
  l.tmp_bytes = r.U64("spec.limits.tmp_bytes");
  l.open_files = r.U64("spec.limits.open_files");
  l.file_size_bytes = r.U64("spec.limits.file_size_bytes");
  s.network.enabled = r.Bool("spec.network.enabled");
  uint32_t rules = r.Count("spec.network.allow", 9, kMaxListEntries);
  for (uint32_t i = 0; i < rules; ++i) {
    EgressRule rule;
    rule.cidr = r.Str(fmt::format("spec.network.allow[{}].cidr", i), 64);
    rule.port_min = r.U16(fmt::format("spec.network.allow[{}].port_min", i));
    rule.port_max = r.U16(fmt::format("spec.network.allow[{}].port_max", i));
    rule.protocol =
        static_cast<Protocol>(r.Enum(fmt::format("spec.network.allow[{}].protocol", i), 3));
    s.network.allow.push_back(std::move(rule));
  }
  s.network.allowed_domains = r.Strs("spec.network.allowed_domains", kMaxListEntries, 255);
  uint32_t ports = r.Count("spec.network.domain_ports", 2, kMaxListEntries);
  s.network.domain_ports.clear();
  for (uint32_t i = 0; i < ports; ++i) {
    s.network.domain_ports.push_back(r.U16(fmt::format("spec.network.domain_ports[{}]", i)));
  }
  uint64_t timeout_ms = r.U64("spec.timeout_ms");
  if (timeout_ms > static_cast<uint64_t>(INT64_MAX)) r.Fail("spec.timeout_ms", "out of range");
  s.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_ms));
  s.stdio = static_cast<StdioMode>(r.Enum("spec.stdio", 2));
  s.terminal_size.columns = r.U16("spec.terminal_size.columns");
  s.terminal_size.rows = r.U16("spec.terminal_size.rows");
  s.record_exec = r.Bool("spec.record_exec");
  s.proc_subset_pid = r.Bool("spec.proc_subset_pid");
  return s;
}

Result<std::string> MakeFrame(MessageType type, std::string payload) {
  if (payload.size() > kMaxFramePayload) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("message type {}: {} bytes, a frame holds at most {}",
                                   static_cast<unsigned>(type), payload.size(), kMaxFramePayload));
  }
  Writer header;
  header.U32(static_cast<uint32_t>(payload.size()));
  header.U16(static_cast<uint16_t>(type));
  header.U16(0);
  return header.out() + payload;
}

bool IsKnownType(uint16_t type) {
  switch (static_cast<MessageType>(type)) {
    case MessageType::kStart:
    case MessageType::kStdin:
    case MessageType::kResize:
    case MessageType::kSignal:
    case MessageType::kStarted:
    case MessageType::kOutput:
    case MessageType::kExit:
    case MessageType::kFailed:
    case MessageType::kReady: return true;
  }
  return false;
}

Error WrongDirection(const Frame& frame, std::string_view receiver) {
  return Error::Make(ErrorCode::kCorrupt, fmt::format("message type {} is not one the {} receives",
                                                      static_cast<unsigned>(frame.type), receiver));
}

Result<void> CheckChunk(std::string_view what, const std::string& data) {
  if (data.size() > kMaxChunkBytes) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("{}: {} bytes, at most {} per message", what, data.size(), kMaxChunkBytes));
  }
  return {};
}

}  // namespace

bool IsForwardableSignal(int signal) {
  switch (signal) {
    case SIGHUP:
    case SIGINT:
    case SIGQUIT:
    case SIGTERM:
    case SIGKILL:
    case SIGUSR1:
    case SIGUSR2:
    case SIGCONT:
    case SIGSTOP:
    case SIGWINCH: return true;
    default: return false;
  }
}

Result<std::string> EncodeHostMessage(const HostMessage& message) {
  Writer w;
  MessageType type{};
  if (const auto* m = std::get_if<StartMessage>(&message)) {
    type = MessageType::kStart;
    w.U32(m->version);
    PutSpec(w, m->spec);
  } else if (const auto* m = std::get_if<StdinMessage>(&message)) {
    type = MessageType::kStdin;
    TRY(CheckChunk("stdin", m->data));
    w.Str(m->data);
  } else if (const auto* m = std::get_if<ResizeMessage>(&message)) {
    type = MessageType::kResize;
    w.U16(m->size.columns);
    w.U16(m->size.rows);
  } else if (const auto* m = std::get_if<SignalMessage>(&message)) {
    type = MessageType::kSignal;
    if (!IsForwardableSignal(m->signal)) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("signal {} is not one a job's owner sends", m->signal));
    }
    w.I32(m->signal);
  }
  return MakeFrame(type, std::move(w.out()));
}

Result<std::string> EncodeGuestMessage(const GuestMessage& message) {
  Writer w;
  MessageType type{};
  if (const auto* m = std::get_if<StartedMessage>(&message)) {
    type = MessageType::kStarted;
    w.U32(m->version);
  } else if (const auto* m = std::get_if<ReadyMessage>(&message)) {
    type = MessageType::kReady;
    w.U32(m->version);
  } else if (const auto* m = std::get_if<OutputMessage>(&message)) {
    type = MessageType::kOutput;
    TRY(CheckChunk("output", m->data));
    w.U8(static_cast<uint8_t>(m->stream));
    w.Str(m->data);
  } else if (const auto* m = std::get_if<ExitMessage>(&message)) {
    type = MessageType::kExit;
    w.U8(static_cast<uint8_t>(m->termination));
    w.I32(m->exit_code);
    w.I32(m->signal);
    w.U64(m->user_cpu_us);
    w.U64(m->system_cpu_us);
    w.U64(m->max_rss_kib);
    w.U64(m->cgroup.memory_peak_bytes);
    w.U64(m->cgroup.cpu_usage_ns);
    w.U64(m->cgroup.oom_kills);
    w.U64(m->output_dropped_bytes);
    w.U64(m->wall_ns);
  } else if (const auto* m = std::get_if<FailedMessage>(&message)) {
    type = MessageType::kFailed;
    w.U16(static_cast<uint16_t>(m->code));
    w.Str(std::string_view(m->message).substr(0, kMaxFailureMessageBytes));
  }
  return MakeFrame(type, std::move(w.out()));
}

void FrameDecoder::Feed(std::string_view bytes) {
  if (failed_) return;
  // Drop what was consumed before growing, so the buffer holds at most one
  // frame plus one read.
  if (offset_ > 0) {
    buffer_.erase(0, offset_);
    offset_ = 0;
  }
  buffer_.append(bytes);
}

Result<std::optional<Frame>> FrameDecoder::Next() {
  if (failed_) return *failed_;
  if (buffered() < kFrameHeaderBytes) return std::nullopt;
  Reader header(std::string_view(buffer_).substr(offset_, kFrameHeaderBytes));
  uint32_t length = header.U32("length");
  uint16_t type = header.U16("type");
  uint16_t reserved = header.U16("reserved");
  if (length > kMaxFramePayload) {
    failed_ = Error::Make(ErrorCode::kCorrupt,
                          fmt::format("frame of {} bytes, at most {}", length, kMaxFramePayload));
  } else if (!IsKnownType(type)) {
    failed_ = Error::Make(ErrorCode::kCorrupt, fmt::format("unknown message type {}", type));
  } else if (reserved != 0) {
    failed_ = Error::Make(ErrorCode::kCorrupt,
                          fmt::format("reserved header field is {}, not 0", reserved));
  }
  if (failed_) return *failed_;
  if (buffered() < kFrameHeaderBytes + length) return std::nullopt;
  Frame frame{static_cast<MessageType>(type), buffer_.substr(offset_ + kFrameHeaderBytes, length)};
  offset_ += kFrameHeaderBytes + length;
  return frame;
}

Result<HostMessage> DecodeHostMessage(const Frame& frame) {
  Reader r(frame.payload);
  switch (frame.type) {
    case MessageType::kStart: {
      StartMessage m;
      m.version = r.U32("version");
      if (m.version != kProtocolVersion) {
        r.Fail("version", fmt::format("{} is not this guest's {}", m.version, kProtocolVersion));
      }
      m.spec = GetSpec(r);
      TRY(r.Finish("start"));
      TRY_CTX(ValidateSpec(m.spec), "decoding start");
      return HostMessage(std::move(m));
    }
    case MessageType::kStdin: {
      StdinMessage m;
      m.data = r.Str("data", kMaxChunkBytes);
      TRY(r.Finish("stdin"));
      return HostMessage(std::move(m));
    }
    case MessageType::kResize: {
      ResizeMessage m;
      m.size.columns = r.U16("columns");
      m.size.rows = r.U16("rows");
      for (uint16_t v : {m.size.columns, m.size.rows}) {
        if (v == 0 || v > kMaxTerminalDimension) {
          r.Fail("size", fmt::format("{} is outside 1..{}", v, kMaxTerminalDimension));
        }
      }
      TRY(r.Finish("resize"));
      return HostMessage(m);
    }
    case MessageType::kSignal: {
      SignalMessage m;
      m.signal = r.I32("signal");
      if (!IsForwardableSignal(m.signal)) {
        r.Fail("signal", fmt::format("{} is not one a job's owner sends", m.signal));
      }
      TRY(r.Finish("signal"));
      return HostMessage(m);
    }
    default: return WrongDirection(frame, "guest");
  }
}

Result<GuestMessage> DecodeGuestMessage(const Frame& frame) {
  Reader r(frame.payload);
  switch (frame.type) {
    case MessageType::kStarted: {
      StartedMessage m;
      m.version = r.U32("version");
      if (m.version != kProtocolVersion) {
        r.Fail("version", fmt::format("{} is not the host's {}", m.version, kProtocolVersion));
      }
      TRY(r.Finish("started"));
      return GuestMessage(m);
    }
    case MessageType::kReady: {
      ReadyMessage m;
      m.version = r.U32("version");
      if (m.version != kProtocolVersion) {
        r.Fail("version", fmt::format("{} is not the host's {}", m.version, kProtocolVersion));
      }
      TRY(r.Finish("ready"));
      return GuestMessage(m);
    }
    case MessageType::kOutput: {
      OutputMessage m;
      m.stream = static_cast<OutputStream>(r.Enum("stream", 2));
      m.data = r.Str("data", kMaxChunkBytes);
      TRY(r.Finish("output"));
      return GuestMessage(std::move(m));
    }
    case MessageType::kExit: {
      ExitMessage m;
      m.termination = static_cast<Termination>(r.Enum("termination", 4));
      m.exit_code = r.I32("exit_code");
      m.signal = r.I32("signal");
      m.user_cpu_us = r.U64("user_cpu_us");
      m.system_cpu_us = r.U64("system_cpu_us");
      m.max_rss_kib = r.U64("max_rss_kib");
      m.cgroup.memory_peak_bytes = r.U64("memory_peak_bytes");
      m.cgroup.cpu_usage_ns = r.U64("cpu_usage_ns");
      m.cgroup.oom_kills = r.U64("oom_kills");
      m.output_dropped_bytes = r.U64("output_dropped_bytes");
      m.wall_ns = r.U64("wall_ns");
      if (m.termination == Termination::kExited && (m.exit_code < 0 || m.exit_code > 255)) {
        r.Fail("exit_code", fmt::format("{} is not an exit status", m.exit_code));
      }
      if (m.termination != Termination::kExited && (m.signal <= 0 || m.signal >= 65)) {
        r.Fail("signal", fmt::format("{} is not a signal", m.signal));
      }
      TRY(r.Finish("exit"));
      return GuestMessage(m);
    }
    case MessageType::kFailed: {
      FailedMessage m;
      uint16_t code = r.U16("code");
      if (code < static_cast<uint16_t>(ErrorCode::kInternal) ||
          code > static_cast<uint16_t>(ErrorCode::kNetwork)) {
        r.Fail("code", fmt::format("{} is not an error code", code));
      }
      m.code = static_cast<ErrorCode>(code);
      m.message = r.Str("message", kMaxFailureMessageBytes);
      TRY(r.Finish("failed"));
      return GuestMessage(std::move(m));
    }
    default: return WrongDirection(frame, "host");
  }
}

}  // namespace ralph::sandbox::vm
