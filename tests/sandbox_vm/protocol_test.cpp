#include "sandbox/vm/protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <csignal>
#include <random>

#include "tests/support/test_seed.h"

namespace ralph::sandbox::vm {
namespace {

using ::testing::HasSubstr;

SandboxSpec FullSpec() {
  SandboxSpec spec;
  spec.base_kind = BaseKind::kImage;
  spec.base = "/run/ralph/base.img";
  spec.binds = {{"/srv/data", "/data", BindAccess::kReadWrite}};
  spec.argv = {"sh", "-c", "echo hello"};
  spec.env = {"PATH=/usr/bin:/bin", "LANG=C.UTF-8"};
  spec.cwd = "/work/src";
  spec.workspace = "/work";
  spec.hostname = "job-7";
  spec.limits.memory_bytes = 300ull << 20;
  spec.limits.pids = 99;
  spec.limits.cpu_millis = 1500;
  spec.limits.io_weight = 7;
  spec.limits.disk_bytes = 100ull << 20;
  spec.limits.tmp_bytes = 5ull << 20;
  spec.limits.open_files = 77;
  spec.limits.file_size_bytes = 12345;
  spec.network.enabled = true;
  spec.network.allow = {{"203.0.113.0/24", 80, 443, Protocol::kUdp}};
  spec.network.allowed_domains = {"*.example.com"};
  spec.network.domain_ports = {443, 8443};
  spec.timeout = std::chrono::milliseconds(90000);
  spec.stdio = StdioMode::kPty;
  spec.terminal_size = {132, 43};
  spec.record_exec = true;
  spec.proc_subset_pid = false;
  return spec;
}

Frame OneFrame(const std::string& bytes) {
  FrameDecoder decoder;
  decoder.Feed(bytes);
  auto frame = decoder.Next();
  EXPECT_TRUE(frame) << frame.error().ToString();
  EXPECT_TRUE(frame->has_value());
  EXPECT_EQ(decoder.buffered(), 0u);
  return std::move(**frame);
}

TEST(Protocol, StartCarriesTheWholeSpec) {
  SandboxSpec spec = FullSpec();
  auto bytes = EncodeHostMessage(StartMessage{kProtocolVersion, spec});
  ASSERT_TRUE(bytes) << bytes.error().ToString();
  auto message = DecodeHostMessage(OneFrame(*bytes));
  ASSERT_TRUE(message) << message.error().ToString();
  const auto& got = std::get<StartMessage>(*message).spec;
  EXPECT_EQ(got.base_kind, spec.base_kind);
  EXPECT_EQ(got.base, spec.base);
  ASSERT_EQ(got.binds.size(), 1u);
  EXPECT_EQ(got.binds[0].source, "/srv/data");
  EXPECT_EQ(got.binds[0].destination, "/data");
  EXPECT_EQ(got.binds[0].access, BindAccess::kReadWrite);
  EXPECT_EQ(got.argv, spec.argv);
  EXPECT_EQ(got.env, spec.env);
  EXPECT_EQ(got.cwd, spec.cwd);
  EXPECT_EQ(got.workspace, spec.workspace);
  EXPECT_EQ(got.hostname, spec.hostname);
  EXPECT_EQ(got.limits.memory_bytes, spec.limits.memory_bytes);
  EXPECT_EQ(got.limits.pids, spec.limits.pids);
  EXPECT_EQ(got.limits.cpu_millis, spec.limits.cpu_millis);
  EXPECT_EQ(got.limits.io_weight, spec.limits.io_weight);
  EXPECT_EQ(got.limits.disk_bytes, spec.limits.disk_bytes);
  EXPECT_EQ(got.limits.tmp_bytes, spec.limits.tmp_bytes);
  EXPECT_EQ(got.limits.open_files, spec.limits.open_files);
  EXPECT_EQ(got.limits.file_size_bytes, spec.limits.file_size_bytes);
  EXPECT_EQ(got.network.enabled, true);
  ASSERT_EQ(got.network.allow.size(), 1u);
  EXPECT_EQ(got.network.allow[0].cidr, "203.0.113.0/24");
  EXPECT_EQ(got.network.allow[0].port_min, 80);
  EXPECT_EQ(got.network.allow[0].port_max, 443);
  EXPECT_EQ(got.network.allow[0].protocol, Protocol::kUdp);
  EXPECT_EQ(got.network.allowed_domains, spec.network.allowed_domains);
  EXPECT_EQ(got.network.domain_ports, spec.network.domain_ports);
  EXPECT_EQ(got.timeout, spec.timeout);
  EXPECT_EQ(got.stdio, StdioMode::kPty);
  EXPECT_EQ(got.terminal_size.columns, 132);
  EXPECT_EQ(got.terminal_size.rows, 43);
  EXPECT_TRUE(got.record_exec);
  EXPECT_FALSE(got.proc_subset_pid);
}

TEST(Protocol, EveryMessageRoundTrips) {
  auto stdin_bytes = EncodeHostMessage(StdinMessage{"input\n"});
  auto host = DecodeHostMessage(OneFrame(*stdin_bytes));
  ASSERT_TRUE(host);
  EXPECT_EQ(std::get<StdinMessage>(*host).data, "input\n");

  host = DecodeHostMessage(OneFrame(*EncodeHostMessage(ResizeMessage{{100, 30}})));
  ASSERT_TRUE(host);
  EXPECT_EQ(std::get<ResizeMessage>(*host).size.columns, 100);

  host = DecodeHostMessage(OneFrame(*EncodeHostMessage(SignalMessage{SIGTERM})));
  ASSERT_TRUE(host);
  EXPECT_EQ(std::get<SignalMessage>(*host).signal, SIGTERM);

  auto guest = DecodeGuestMessage(OneFrame(*EncodeGuestMessage(StartedMessage{})));
  ASSERT_TRUE(guest);
  EXPECT_TRUE(std::holds_alternative<StartedMessage>(*guest));

  guest = DecodeGuestMessage(OneFrame(*EncodeGuestMessage(ReadyMessage{})));
  ASSERT_TRUE(guest);
  EXPECT_TRUE(std::holds_alternative<ReadyMessage>(*guest));

  guest = DecodeGuestMessage(
      OneFrame(*EncodeGuestMessage(OutputMessage{OutputStream::kStderr, "oops"})));
  ASSERT_TRUE(guest);
  EXPECT_EQ(std::get<OutputMessage>(*guest).stream, OutputStream::kStderr);
  EXPECT_EQ(std::get<OutputMessage>(*guest).data, "oops");

  ExitMessage exit;
  exit.termination = Termination::kSignaled;
  exit.exit_code = -1;
  exit.signal = SIGKILL;
  exit.user_cpu_us = 1;
  exit.system_cpu_us = 2;
  exit.max_rss_kib = 3;
  exit.cgroup = {4, 5, 6};
  exit.output_dropped_bytes = 7;
  exit.wall_ns = 8;
  guest = DecodeGuestMessage(OneFrame(*EncodeGuestMessage(exit)));
  ASSERT_TRUE(guest) << guest.error().ToString();
  const auto& got = std::get<ExitMessage>(*guest);
  EXPECT_EQ(got.termination, Termination::kSignaled);
  EXPECT_EQ(got.signal, SIGKILL);
  EXPECT_EQ(got.cgroup.memory_peak_bytes, 4u);
  EXPECT_EQ(got.cgroup.cpu_usage_ns, 5u);
  EXPECT_EQ(got.cgroup.oom_kills, 6u);
  EXPECT_EQ(got.wall_ns, 8u);

  guest = DecodeGuestMessage(
      OneFrame(*EncodeGuestMessage(FailedMessage{ErrorCode::kNotFound, "no /bin/sh"})));
  ASSERT_TRUE(guest);
  EXPECT_EQ(std::get<FailedMessage>(*guest).code, ErrorCode::kNotFound);
  EXPECT_EQ(std::get<FailedMessage>(*guest).message, "no /bin/sh");
}

TEST(Protocol, FramesArriveInAnyPieces) {
  std::string stream = *EncodeGuestMessage(StartedMessage{}) +
                       *EncodeGuestMessage(OutputMessage{OutputStream::kStdout, "hello\n"}) +
                       *EncodeGuestMessage(ExitMessage{});
  FrameDecoder decoder;
  std::vector<MessageType> types;
  for (char c : stream) {
    decoder.Feed(std::string_view(&c, 1));
    auto frame = decoder.Next();
    ASSERT_TRUE(frame);
    if (*frame) types.push_back((*frame)->type);
  }
  EXPECT_THAT(types, ::testing::ElementsAre(MessageType::kStarted, MessageType::kOutput,
                                            MessageType::kExit));
}

TEST(Protocol, HeaderErrorsAreFinalAndNamed) {
  struct Case {
    std::string header;
    const char* what;
  };
  const Case cases[] = {
      // 1 MiB + 1: refused from the header, before the payload is buffered.
      {std::string("\x01\x00\x10\x00\x11\x00\x00\x00", 8), "frame of 1048577 bytes"},
      {std::string("\x00\x00\x00\x00\x63\x00\x00\x00", 8), "unknown message type 99"},
      {std::string("\x00\x00\x00\x00\x11\x00\x01\x00", 8), "reserved header field is 1"},
  };
  for (const auto& c : cases) {
    FrameDecoder decoder;
    decoder.Feed(c.header);
    auto frame = decoder.Next();
    ASSERT_FALSE(frame) << c.what;
    EXPECT_EQ(frame.error().code(), ErrorCode::kCorrupt);
    EXPECT_THAT(frame.error().ToString(), HasSubstr(c.what));
    // Good bytes after a bad header do not revive the stream.
    decoder.Feed(*EncodeGuestMessage(StartedMessage{}));
    EXPECT_FALSE(decoder.Next());
  }
}

TEST(Protocol, EachSideRefusesTheOthersMessages) {
  auto guest = DecodeGuestMessage(OneFrame(*EncodeHostMessage(SignalMessage{SIGKILL})));
  ASSERT_FALSE(guest);
  EXPECT_THAT(guest.error().ToString(), HasSubstr("not one the host receives"));
  auto host = DecodeHostMessage(OneFrame(*EncodeGuestMessage(StartedMessage{})));
  ASSERT_FALSE(host);
  EXPECT_THAT(host.error().ToString(), HasSubstr("not one the guest receives"));
}

// Rewrites one payload and decodes it again as a guest message.
Result<GuestMessage> DecodeGuestPayload(MessageType type, std::string payload) {
  return DecodeGuestMessage(Frame{type, std::move(payload)});
}

TEST(Protocol, HostileGuestPayloadsAreRefusedNamingTheField) {
  std::string output =
      OneFrame(*EncodeGuestMessage(OutputMessage{OutputStream::kStdout, "x"})).payload;
  // Stream 2 does not exist.
  std::string bad_stream = output;
  bad_stream[0] = 2;
  auto r = DecodeGuestPayload(MessageType::kOutput, bad_stream);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("stream: 2 is out of range"));
  // A length beyond the payload.
  std::string long_len = output;
  long_len[1] = 100;
  r = DecodeGuestPayload(MessageType::kOutput, long_len);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("data: 100 bytes announced, 1 left"));
  // Trailing garbage.
  r = DecodeGuestPayload(MessageType::kOutput, output + "zz");
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("2 bytes after the message's end"));
  // Truncated.
  r = DecodeGuestPayload(MessageType::kOutput, output.substr(0, 3));
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("data: the payload ends before it"));

  ExitMessage exit;
  exit.exit_code = 256;
  r = DecodeGuestMessage(OneFrame(*EncodeGuestMessage(exit)));
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("exit_code: 256 is not an exit status"));
  exit = ExitMessage{};
  exit.termination = Termination::kKilled;
  exit.signal = 0;
  r = DecodeGuestMessage(OneFrame(*EncodeGuestMessage(exit)));
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("signal: 0 is not a signal"));

  std::string failed = OneFrame(*EncodeGuestMessage(FailedMessage{ErrorCode::kIo, "m"})).payload;
  failed[0] = 99;
  r = DecodeGuestPayload(MessageType::kFailed, failed);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("code: 99 is not an error code"));

  r = DecodeGuestPayload(MessageType::kStarted, std::string("\x02\x00\x00\x00", 4));
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("version: 2 is not the host's 1"));
}

TEST(Protocol, HostileCountsAllocateNothing) {
  SandboxSpec spec = FullSpec();
  std::string payload = OneFrame(*EncodeHostMessage(StartMessage{kProtocolVersion, spec})).payload;
  // The argv count sits after the version, base kind, base and the bind.
  size_t at = 4 + 1 + 4 + spec.base.size() + 4 + 4 + 9 + 4 + 5 + 1;
  ASSERT_EQ(payload.substr(at, 4), std::string("\x03\x00\x00\x00", 4));
  payload.replace(at, 4, std::string("\xff\xff\x00\x00", 4));
  auto r = DecodeHostMessage(Frame{MessageType::kStart, payload});
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("spec.argv: 65535 entries, more than 4096"));
  payload.replace(at, 4, std::string("\x00\x10\x00\x00", 4));
  r = DecodeHostMessage(Frame{MessageType::kStart, payload});
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("spec.argv: 4096 entries announced"));
}

TEST(Protocol, DecodedSpecIsValidated) {
  SandboxSpec spec = FullSpec();
  spec.cwd = "relative";
  auto bytes = EncodeHostMessage(StartMessage{kProtocolVersion, spec});
  ASSERT_TRUE(bytes);
  auto r = DecodeHostMessage(OneFrame(*bytes));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().ToString(), HasSubstr("cwd"));
}

TEST(Protocol, OnlyForwardableSignalsAreSentOrTaken) {
  EXPECT_FALSE(EncodeHostMessage(SignalMessage{SIGSEGV}));
  auto payload = std::string("\x0b\x00\x00\x00", 4);  // SIGSEGV
  auto r = DecodeHostMessage(Frame{MessageType::kSignal, payload});
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().ToString(), HasSubstr("signal: 11 is not one a job's owner sends"));
}

TEST(Protocol, OversizedChunksAreRefusedBeforeFraming) {
  EXPECT_FALSE(EncodeGuestMessage(
      OutputMessage{OutputStream::kStdout, std::string(kMaxChunkBytes + 1, 'x')}));
  EXPECT_TRUE(
      EncodeGuestMessage(OutputMessage{OutputStream::kStdout, std::string(kMaxChunkBytes, 'x')}));
}

// Random mutations of valid streams (bytes flipped, cut, inserted) never
// crash the decoder or return a message that fails to re-encode; replay
// with RALPH_TEST_SEED.
TEST(Protocol, MutatedStreamsNeverCrashTheHost) {
  std::mt19937 rng(ralph::testing::TestSeed());
  std::vector<std::string> seeds = {
      *EncodeGuestMessage(StartedMessage{}),
      *EncodeGuestMessage(OutputMessage{OutputStream::kStdout, "hello\n"}),
      *EncodeGuestMessage(ExitMessage{}),
      *EncodeGuestMessage(FailedMessage{ErrorCode::kIo, "disk"}),
      *EncodeHostMessage(StartMessage{kProtocolVersion, FullSpec()}),
  };
  int decoded = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = seeds[rng() % seeds.size()];
    int edits = 1 + rng() % 4;
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0: bytes[at] = static_cast<char>(rng()); break;
        case 1: bytes.erase(at, 1 + rng() % 8); break;
        case 2: bytes.insert(at, std::string(1 + rng() % 8, static_cast<char>(rng()))); break;
      }
    }
    FrameDecoder decoder;
    decoder.Feed(bytes);
    for (;;) {
      auto frame = decoder.Next();
      if (!frame || !*frame) break;
      auto guest = DecodeGuestMessage(**frame);
      if (guest) {
        ++decoded;
        EXPECT_TRUE(EncodeGuestMessage(*guest));
      }
      auto host = DecodeHostMessage(**frame);
      if (host) {
        ++decoded;
        EXPECT_TRUE(EncodeHostMessage(*host));
      }
    }
  }
  // Some mutations leave a valid message (a changed output byte): the loop
  // reached the decoders, not only the header checks.
  EXPECT_GT(decoded, 0);
}

}  // namespace
}  // namespace ralph::sandbox::vm
