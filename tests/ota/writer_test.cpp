// Unit tests of the streaming writer on FakeBlockDevice: verify-before-write,
// adaptive skipping, bounds, re-read verification.
#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include <fmt/format.h>

#include "drivers/testing/fake_block_device.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/writer.h"
#include "test_pki.h"
#include "test_util.h"

namespace ralph::ota {
namespace {

using testing::TempDir;

class WriterTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kChunk = 4096;
  void SetUp() override {
    ca_ = testing::MakeCa(dir_.path(), "ca");
    signer_ = testing::MakeSigner(dir_.path(), "signer", ca_);
    image_ = testing::RandomBytes(10 * kChunk + 123, 42);
    bundle_path_ = Build(image_);
  }
  std::string Build(const std::vector<uint8_t>& image) {
    testing::WriteFile(dir_ / "rootfs.img", image);
    testing::WriteFile(dir_ / "uki.efi", testing::RandomBytes(9000, 43));
    CreateOptions o;
    o.cert_path = signer_.cert_path;
    o.key_path = signer_.key_path;
    o.version = {1, 0, 0};
    o.product = "ralphos";
    o.arch = "x86_64";
    o.rootfs_path = dir_ / "rootfs.img";
    o.uki_path = dir_ / "uki.efi";
    o.chunk_size = kChunk;
    o.output_path = dir_ / "x.rbundle";
    auto m = CreateBundle(o);
    EXPECT_TRUE(m.has_value()) << m.error().ToString();
    return o.output_path;
  }
  struct Opened {
    std::unique_ptr<FileSource> source;
    OpenedBundle bundle;
    const Payload& rootfs() const { return *bundle.manifest.Find(PayloadType::kSystemImage); }
  };
  Opened Open() {
    auto source = FileSource::Open(bundle_path_);
    EXPECT_TRUE(source.has_value());
    auto keyring = Keyring::Load(ca_.cert_path);
    auto bundle = OpenBundle(**source, *keyring);
    EXPECT_TRUE(bundle.has_value()) << bundle.error().ToString();
    return {std::move(*source), std::move(*bundle)};
  }
  void FlipByte(uint64_t offset) {
    auto bytes = testing::ReadFileBytes(bundle_path_);
    bytes[offset] ^= 0x01;
    testing::WriteFile(bundle_path_, bytes);
  }

  TempDir dir_;
  testing::KeyPair ca_, signer_;
  std::vector<uint8_t> image_;
  std::string bundle_path_;
};

TEST_F(WriterTest, WritesVerifiesAndThenSkipsEverything) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice slot(16 * kChunk);
  auto stats = WritePayload(*o.source, o.rootfs(), slot, {});
  ASSERT_TRUE(stats.has_value()) << stats.error().ToString();
  EXPECT_EQ(stats->chunks_written, 11u);
  EXPECT_EQ(stats->bytes_written, image_.size());
  EXPECT_TRUE(std::equal(image_.begin(), image_.end(), slot.data().begin()));
  ASSERT_TRUE(slot.Flush().has_value());
  EXPECT_TRUE(VerifySlot(slot, o.rootfs(), {}).has_value());

  // A second run finds every chunk in place and writes nothing.
  int writes_before = slot.writes();
  auto again = WritePayload(*o.source, o.rootfs(), slot, {});
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->chunks_skipped, 11u);
  EXPECT_EQ(again->bytes_written, 0u);
  EXPECT_EQ(slot.writes(), writes_before);
}

TEST_F(WriterTest, AdaptiveWritesOnlyChangedChunks) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice slot(16 * kChunk);
  ASSERT_TRUE(WritePayload(*o.source, o.rootfs(), slot, {}).has_value());
  // New image: chunks 3 and 10 (the short last one) change.
  image_[3 * kChunk + 5] ^= 0xff;
  image_[10 * kChunk + 1] ^= 0xff;
  bundle_path_ = Build(image_);
  Opened updated = Open();
  auto stats = WritePayload(*updated.source, updated.rootfs(), slot, {});
  ASSERT_TRUE(stats.has_value()) << stats.error().ToString();
  EXPECT_EQ(stats->chunks_written, 2u);
  EXPECT_EQ(stats->chunks_skipped, 9u);
  EXPECT_TRUE(VerifySlot(slot, updated.rootfs(), {}).has_value());
  // With the chunk map, only the written chunks are read back: a read error
  // in a skipped (already verified) chunk is not reached, one in a written
  // chunk is.
  ASSERT_EQ(stats->written.size(), 11u);
  EXPECT_TRUE(stats->written[3] && stats->written[10] && !stats->written[4]);
  slot.FailReadsAt(4 * kChunk + 1);
  EXPECT_TRUE(VerifySlot(slot, updated.rootfs(), {}, &stats->written).has_value());
  EXPECT_FALSE(VerifySlot(slot, updated.rootfs(), {}).has_value());
  slot.ClearFaults();
  slot.FailReadsAt(3 * kChunk + 1);
  auto failed = VerifySlot(slot, updated.rootfs(), {}, &stats->written);
  ASSERT_FALSE(failed.has_value());
  EXPECT_NE(failed.error().message().find("re-reading rootfs chunk 3"), std::string::npos)
      << failed.error().message();
}

TEST_F(WriterTest, RefusesFlippedPayloadByteBeforeWritingThatChunk) {
  for (uint64_t chunk : {uint64_t{0}, uint64_t{5}, uint64_t{10}}) {
    bundle_path_ = Build(image_);
    Opened clean = Open();
    uint64_t at = clean.rootfs().offset + chunk * kChunk + 7;
    FlipByte(at);
    Opened o = Open();  // the manifest is intact: the bundle still opens
    // One source thread, and more than there are cores: chunks are hashed
    // out of order, but none after the bad one may be written.
    for (unsigned hash_threads : {1u, 2u, 5u}) {
      ralph::testing::FakeBlockDevice slot(16 * kChunk);
      WriteOptions options;
      options.hash_threads = hash_threads;
      auto stats = WritePayload(*o.source, o.rootfs(), slot, options);
      ASSERT_FALSE(stats.has_value()) << chunk;
      EXPECT_EQ(stats.error().code(), ErrorCode::kVerificationFailed);
      EXPECT_NE(stats.error().message().find(fmt::format("rootfs chunk {} (bytes", chunk)),
                std::string::npos)
          << stats.error().message();
      EXPECT_NE(stats.error().message().find("digest mismatch"), std::string::npos);
      // Nothing of the bad chunk reached the device; earlier chunks did.
      EXPECT_EQ(slot.bytes_written(), chunk * kChunk) << chunk << " " << hash_threads;
    }
  }
}

TEST_F(WriterTest, RefusesOversizedPayload) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice slot(4 * kChunk);
  auto stats = WritePayload(*o.source, o.rootfs(), slot, {});
  ASSERT_FALSE(stats.has_value());
  EXPECT_EQ(stats.error().code(), ErrorCode::kNoSpace);
  EXPECT_NE(stats.error().message().find("larger than the slot"), std::string::npos);
  EXPECT_EQ(slot.writes(), 0);
}

TEST_F(WriterTest, VerifyCatchesSilentCorruptionAndIoErrorsPropagate) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice slot(16 * kChunk);
  ASSERT_TRUE(WritePayload(*o.source, o.rootfs(), slot, {}).has_value());
  slot.CorruptByte(7 * kChunk + 100);
  auto verified = VerifySlot(slot, o.rootfs(), {});
  ASSERT_FALSE(verified.has_value());
  EXPECT_NE(verified.error().message().find("re-reading rootfs chunk 7"), std::string::npos)
      << verified.error().message();

  ralph::testing::FakeBlockDevice failing(16 * kChunk);
  failing.FailWritesAt(2 * kChunk + 10);
  auto stats = WritePayload(*o.source, o.rootfs(), failing, {.mode = WriteOptions::Mode::kFull});
  ASSERT_FALSE(stats.has_value());
  EXPECT_NE(stats.error().message().find("writing rootfs chunk 2"), std::string::npos)
      << stats.error().message();
}

// Several handles on one FakeBlockDevice (like InstallPayload's reader
// handles on a slot) that log every operation in order; optionally corrupt
// what one write lands (a device that silently stores other bytes).
class SharedLog {
 public:
  struct Op {
    char kind;  // 'r', 'w', 'f'
    uint64_t offset;
    size_t length;
  };
  explicit SharedLog(ralph::testing::FakeBlockDevice& fake) : fake_(fake) {}
  std::mutex mutex;
  std::vector<Op> ops;
  std::optional<uint64_t> corrupt_write_at;
  ralph::testing::FakeBlockDevice& fake_;
};

class LoggingDevice final : public BlockDeviceInterface {
 public:
  explicit LoggingDevice(SharedLog& log) : log_(log) {}
  uint64_t size() const override { return log_.fake_.size(); }
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) override {
    std::lock_guard lock(log_.mutex);
    log_.ops.push_back({'r', offset, out.size()});
    return log_.fake_.ReadAt(offset, out);
  }
  Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) override {
    std::lock_guard lock(log_.mutex);
    log_.ops.push_back({'w', offset, data.size()});
    TRY(log_.fake_.WriteAt(offset, data));
    if (log_.corrupt_write_at && *log_.corrupt_write_at >= offset &&
        *log_.corrupt_write_at < offset + data.size()) {
      log_.fake_.CorruptByte(*log_.corrupt_write_at);
    }
    return {};
  }
  Result<void> Flush() override {
    std::lock_guard lock(log_.mutex);
    log_.ops.push_back({'f', 0, 0});
    return log_.fake_.Flush();
  }
  Result<void> Discard(uint64_t offset, uint64_t length) override {
    std::lock_guard lock(log_.mutex);
    return log_.fake_.Discard(offset, length);
  }

 private:
  SharedLog& log_;
};

WriteOptions WithReaders(SharedLog& log, WriteOptions options = {}) {
  options.open_handle = [&log]() -> Result<std::unique_ptr<BlockDeviceInterface>> {
    return std::unique_ptr<BlockDeviceInterface>(new LoggingDevice(log));
  };
  return options;
}

TEST_F(WriterTest, InstallPayloadReReadsEveryWrittenChunkAfterAFlush) {
  // A larger image, so that several flushes happen during the write.
  image_ = testing::RandomBytes(300 * kChunk + 77, 44);
  bundle_path_ = Build(image_);
  Opened o = Open();
  ralph::testing::FakeBlockDevice fake(320 * kChunk);
  SharedLog log(fake);
  LoggingDevice slot(log);
  // Flushes every 5 chunks with writers waiting at 10 unflushed; or every
  // 64 with 4 buffers, so each buffer is reused many times before the flush
  // that lets its chunk be re-read (checked against its fingerprint).
  struct Budget {
    uint64_t buffers, flush, max_unflushed;
    int min_flushes;
  };
  for (Budget budget : {Budget{16, 5, 10, 30}, Budget{4, 64, 128, 2}}) {
    for (bool shared : {false, true}) {
      for (unsigned threads : {1u, 3u}) {
        SCOPED_TRACE(fmt::format("{}, {} thread(s) per stage, {} buffers, flush every {} chunks",
                                 shared ? "one shared handle" : "reader handles", threads,
                                 budget.buffers, budget.flush));
        log.ops.clear();
        WriteOptions options = shared ? WriteOptions{} : WithReaders(log);
        options.mode = WriteOptions::Mode::kFull;
        options.hash_threads = threads;
        options.write_threads = threads;
        options.verify_threads = threads;
        options.buffer_bytes = budget.buffers * kChunk;
        options.flush_bytes = budget.flush * kChunk;
        options.max_unflushed_bytes = budget.max_unflushed * kChunk;
        uint64_t progress = 0;
        options.on_progress = [&](uint64_t bytes) { progress += bytes; };
        bool final_flush_seen = false;
        options.after_final_flush = [&] { final_flush_seen = true; };
        auto stats = InstallPayload(*o.source, o.rootfs(), slot, options);
        ASSERT_TRUE(stats.has_value()) << stats.error().ToString();
        EXPECT_EQ(stats->chunks_written, 301u);
        EXPECT_TRUE(final_flush_seen);
        EXPECT_EQ(progress, 2 * image_.size());  // written, then verified
        EXPECT_TRUE(std::equal(image_.begin(), image_.end(), fake.durable_data().begin()));
        // Per chunk: written, then a flush, then read back.
        std::map<uint64_t, int> stage;  // 1 written, 2 flushed, 3 read back
        int flushes = 0;
        for (const auto& op : log.ops) {
          if (op.kind == 'f') {
            ++flushes;
            for (auto& [offset, s] : stage) {
              if (s == 1) s = 2;
            }
            continue;
          }
          // One request may cover a run of chunks.
          for (uint64_t at = op.offset; at < op.offset + op.length; at += kChunk) {
            if (op.kind == 'w') {
              EXPECT_EQ(stage[at], 0) << "chunk at " << at << " written twice";
              stage[at] = 1;
            } else {
              EXPECT_EQ(stage[at], 2) << "chunk at " << at << " read back before a flush";
              stage[at] = 3;
            }
          }
        }
        // Overlapped: flushed as it goes (at least every max_unflushed
        // chunks), not once at the end.
        EXPECT_GE(flushes, budget.min_flushes);
        ASSERT_EQ(stage.size(), 301u);
        for (const auto& [offset, s] : stage) EXPECT_EQ(s, 3) << "chunk at " << offset;
      }
    }
  }
}

TEST_F(WriterTest, InstallPayloadCatchesADeviceThatStoresOtherBytes) {
  Opened o = Open();
  for (bool shared : {false, true}) {
    ralph::testing::FakeBlockDevice fake(16 * kChunk);
    SharedLog log(fake);
    log.corrupt_write_at = 6 * kChunk + 99;
    LoggingDevice slot(log);
    auto stats =
        InstallPayload(*o.source, o.rootfs(), slot, shared ? WriteOptions{} : WithReaders(log));
    ASSERT_FALSE(stats.has_value());
    EXPECT_EQ(stats.error().code(), ErrorCode::kVerificationFailed);
    EXPECT_NE(stats.error().message().find(
                  "re-reading rootfs chunk 6 (bytes 24576-28671): the slot holds other bytes"),
              std::string::npos)
        << stats.error().message();
  }
}

TEST_F(WriterTest, InstallPayloadReportsFlushAndReadErrors) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice slot(16 * kChunk);
  slot.FailFlush();
  auto stats = InstallPayload(*o.source, o.rootfs(), slot, {});
  ASSERT_FALSE(stats.has_value());
  EXPECT_NE(stats.error().message().find("flushing rootfs"), std::string::npos)
      << stats.error().message();

  ralph::testing::FakeBlockDevice reading(16 * kChunk);
  reading.FailReadsAt(2 * kChunk + 3);
  stats = InstallPayload(*o.source, o.rootfs(), reading, {});
  ASSERT_FALSE(stats.has_value());
  EXPECT_NE(stats.error().message().find("reading the slot's rootfs chunk 2"), std::string::npos)
      << stats.error().message();
}

TEST_F(WriterTest, InstallPayloadSkipsWhatTheSlotHoldsAndVerifiesTheRest) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice fake(16 * kChunk);
  ASSERT_TRUE(WritePayload(*o.source, o.rootfs(), fake, {}).has_value());
  image_[2 * kChunk] ^= 0x5a;
  image_[9 * kChunk + 4000] ^= 0x5a;
  bundle_path_ = Build(image_);
  Opened updated = Open();
  SharedLog log(fake);
  LoggingDevice slot(log);
  uint64_t progress = 0;
  WriteOptions options = WithReaders(log);
  options.on_progress = [&](uint64_t bytes) { progress += bytes; };
  auto stats = InstallPayload(*updated.source, updated.rootfs(), slot, options);
  ASSERT_TRUE(stats.has_value()) << stats.error().ToString();
  EXPECT_EQ(stats->chunks_written, 2u);
  EXPECT_EQ(stats->chunks_skipped, 9u);
  EXPECT_EQ(progress, 2 * image_.size());
  EXPECT_TRUE(std::equal(image_.begin(), image_.end(), fake.durable_data().begin()));
  // Each chunk read once to probe it; the two written ones once more after
  // the flush: nothing is read or hashed twice otherwise.
  std::map<uint64_t, int> reads;
  for (const auto& op : log.ops) {
    if (op.kind != 'r') continue;
    for (uint64_t at = op.offset; at < op.offset + op.length; at += kChunk) reads[at]++;
  }
  for (uint64_t i = 0; i < 11; ++i) {
    EXPECT_EQ(reads[i * kChunk], (i == 2 || i == 9) ? 2 : 1) << "chunk " << i;
  }
}

TEST_F(WriterTest, HonoursCancel) {
  Opened o = Open();
  ralph::testing::FakeBlockDevice slot(16 * kChunk);
  std::atomic<bool> cancel{false};
  WriteOptions options;
  options.cancel = &cancel;
  options.after_chunk = [&](uint64_t index) {
    if (index == 3) cancel = true;
  };
  auto stats = WritePayload(*o.source, o.rootfs(), slot, options);
  ASSERT_FALSE(stats.has_value());
  EXPECT_EQ(stats.error().code(), ErrorCode::kCancelled);
  EXPECT_EQ(slot.bytes_written(), 4u * kChunk);
}

}  // namespace
}  // namespace ralph::ota
