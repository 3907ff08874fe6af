#include "services/ota/writer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "platform/sha256.h"

namespace ralph::ota {
namespace {

std::string ChunkName(const Payload& p, uint64_t index) {
  uint64_t start = index * p.chunk_size;
  return fmt::format("{} chunk {} (bytes {}-{})", p.name, index, start,
                     start + p.ChunkLength(index) - 1);
}

Result<void> CheckCancel(const WriteOptions& options) {
  if (options.cancel && options.cancel->load()) {
    return Error::Make(ErrorCode::kCancelled, "cancelled");
  }
  return {};
}

// Reads chunk `index` from the source and checks it against the manifest.
Result<void> ReadVerifiedChunk(ByteSourceInterface& source, const Payload& p, uint64_t index,
                               std::span<uint8_t> out, Sha256& hasher) {
  TRY_CTX(source.ReadAt(p.offset + index * p.chunk_size, out),
          fmt::format("reading {} from {}", ChunkName(p, index), source.Describe()));
  TRY(hasher.Reset());
  TRY(hasher.Update(out));
  if (TRY(hasher.Finish()) != p.chunks[index]) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("{}: digest mismatch: the bundle's payload is corrupt or was "
                                   "tampered with",
                                   ChunkName(p, index)));
  }
  return {};
}

// Adaptive probing costs a read + hash of the target per chunk, a whole
// extra pass when the target holds an unrelated image. After this many
// consecutive misses only every kProbeStride-th chunk is probed, until a probe
// hits again (an unchanged region starts).
constexpr uint64_t kMissesBeforeSparseProbing = 32;
constexpr uint64_t kProbeStride = 16;
constexpr size_t kMinBuffers = 4;
// How far (in chunks) the probe threads may run ahead of the source stage.
constexpr uint64_t kProbeWindow = 64;

// The stages of one payload's data path (see InstallPayload in writer.h) and
// the state they share. The calling thread runs the source stage and owns
// the decisions (skip or write); probe, write and verify stages run on
// threads of their own. One mutex guards the queues and the probe results;
// the slow work (I/O, hashing, compares) happens outside it.
class Streamer {
 public:
  enum class Verify { kNo, kAfterFlush };

  Streamer(ByteSourceInterface& source, const Payload& payload, BlockDeviceInterface& slot,
           const WriteOptions& options, Verify verify)
      : source_(source), p_(payload), slot_(slot), options_(options), verify_(verify) {}

  Result<WriteStats> Run() {
    if (p_.size > slot_.size()) {
      return Error::Make(ErrorCode::kNoSpace,
                         fmt::format("{} payload is {} bytes, larger than the slot ({} bytes)",
                                     p_.name, p_.size, slot_.size()));
    }
    const uint64_t chunk_count = p_.ChunkCount();
    stats_.written.assign(chunk_count, false);
    probe_state_.assign(chunk_count, ProbeState::kPending);
    size_t buffers =
        static_cast<size_t>(std::max<uint64_t>(kMinBuffers, options_.buffer_bytes / p_.chunk_size));
    buffers = static_cast<size_t>(std::min<uint64_t>(buffers, std::max<uint64_t>(chunk_count, 1)));
    buffers = std::max(buffers, kMinBuffers);
    storage_.resize(buffers);
    for (size_t b = 0; b < buffers; ++b) free_.push_back(b);
    flush_every_ = std::max<uint64_t>(1, options_.flush_bytes / p_.chunk_size);

    // Readers for the other threads: their own handles when the caller can
    // open them, else the slot itself, shared under device_mutex_.
    bool adaptive = options_.mode == WriteOptions::Mode::kAdaptive;
    unsigned probers = adaptive ? std::max(1u, options_.probe_threads) : 0;
    unsigned readers_needed = probers + (verify_ == Verify::kAfterFlush ? 1 : 0);
    std::vector<std::unique_ptr<BlockDeviceInterface>> readers;
    if (options_.open_reader) {
      for (unsigned r = 0; r < readers_needed; ++r) {
        readers.push_back(TRY_CTX(options_.open_reader(), "opening the slot for reading"));
      }
    } else {
      shared_device_ = true;
    }
    auto reader = [&](unsigned r) -> BlockDeviceInterface& {
      return shared_device_ ? slot_ : *readers[r];
    };

    Sha256 hasher = TRY(Sha256::Create());
    std::vector<std::thread> threads;
    for (unsigned r = 0; r < probers; ++r) {
      threads.emplace_back([this, &device = reader(r)] { Guard(ProbeStage(device)); });
    }
    std::thread writer([this] { Guard(WriteStage()); });
    std::thread verifier;
    if (verify_ == Verify::kAfterFlush) {
      verifier = std::thread([this, &device = reader(probers)] { Guard(VerifyStage(device)); });
    }

    Result<void> produced = SourceStage(hasher);
    {
      std::lock_guard lock(mutex_);
      writes_closed_ = true;
      probes_closed_ = true;
      changed_.notify_all();
    }
    for (auto& t : threads) t.join();
    // The chunks already queued are written even when the source stage
    // failed (they were verified): a failure is reported with every chunk
    // before it on the device.
    writer.join();
    if (!produced) Fail(std::move(produced).error());
    if (verify_ == Verify::kAfterFlush) {
      bool failed = false;
      {
        std::lock_guard lock(mutex_);
        failed = failed_;
      }
      if (!failed) {
        // The last flush; only then are the last chunks re-read.
        Result<void> flushed = WithDevice([&] { return slot_.Flush(); });
        if (!flushed) {
          Fail(std::move(flushed).error().WithContext(fmt::format("flushing {}", p_.name)));
        } else if (options_.after_final_flush) {
          options_.after_final_flush();
        }
      }
      {
        std::lock_guard lock(mutex_);
        for (const Item& item : unflushed_) to_verify_.push_back(item);
        unflushed_.clear();
        verify_closed_ = true;
        changed_.notify_all();
      }
      // Report the verifier's progress until it is done.
      while (true) {
        std::unique_lock lock(mutex_);
        bool done =
            changed_.wait_for(lock, std::chrono::milliseconds(100), [&] { return verifier_done_; });
        lock.unlock();
        ReportVerified();
        if (done) break;
      }
      verifier.join();
    }
    std::lock_guard lock(mutex_);
    if (error_) return std::move(*error_);
    return std::move(stats_);
  }

 private:
  enum class ProbeState : uint8_t { kPending, kMatch, kMiss, kNotProbed };
  struct Item {
    uint64_t index = 0;
    size_t buffer = 0;
    size_t length = 0;
  };

  // The first error wins; every stage stops at its next step.
  void Fail(Error error) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = std::move(error);
    failed_ = true;
    changed_.notify_all();
  }
  void Guard(Result<void> result) {
    if (!result) Fail(std::move(result).error());
  }

  // Runs one device operation; serialised when the stages share one handle.
  template <typename F>
  Result<void> WithDevice(F&& f) {
    if (!shared_device_) return f();
    std::lock_guard lock(device_mutex_);
    return f();
  }

  std::span<uint8_t> BufferSpan(size_t buffer, size_t length) {
    auto& b = storage_[buffer];
    if (b.size() < length) b.resize(p_.chunk_size);  // allocated on first use
    return std::span<uint8_t>(b.data(), length);
  }

  void Release(size_t buffer) {
    std::lock_guard lock(mutex_);
    free_.push_back(buffer);
    changed_.notify_all();
  }

  void ReportVerified() {
    uint64_t verified = verified_bytes_.load();
    if (verified > reported_verified_ && options_.on_progress) {
      options_.on_progress(verified - reported_verified_);
    }
    reported_verified_ = verified;
  }

  // Probe threads: take the next chunk index, read the target's chunk and
  // hash it, publish match/miss for the source stage.
  Result<void> ProbeStage(BlockDeviceInterface& device) {
    Sha256 hasher = TRY(Sha256::Create());
    std::vector<uint8_t> current(p_.chunk_size);
    while (true) {
      uint64_t i = 0;
      bool probe = false;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] {
          return failed_ || probes_closed_ || next_probe_ >= probe_state_.size() ||
                 next_probe_ < source_index_ + kProbeWindow;
        });
        if (failed_ || probes_closed_ || next_probe_ >= probe_state_.size()) return {};
        i = next_probe_++;
        // A heuristic over the probes finished so far (not strictly in order).
        probe = consecutive_misses_ < kMissesBeforeSparseProbing || i % kProbeStride == 0;
        if (!probe) {
          probe_state_[i] = ProbeState::kNotProbed;
          changed_.notify_all();
          continue;
        }
      }
      std::span<uint8_t> data(current.data(), static_cast<size_t>(p_.ChunkLength(i)));
      TRY_CTX(WithDevice([&] { return device.ReadAt(i * p_.chunk_size, data); }),
              fmt::format("reading the slot's {}", ChunkName(p_, i)));
      TRY(hasher.Reset());
      TRY(hasher.Update(data));
      bool match = TRY(hasher.Finish()) == p_.chunks[i];
      std::lock_guard lock(mutex_);
      probe_state_[i] = match ? ProbeState::kMatch : ProbeState::kMiss;
      consecutive_misses_ = match ? 0 : consecutive_misses_ + 1;
      changed_.notify_all();
    }
  }

  // The calling thread: decide per chunk, read + verify what must be
  // written, in order (an HTTPS source streams front to back).
  Result<void> SourceStage(Sha256& hasher) {
    bool adaptive = options_.mode == WriteOptions::Mode::kAdaptive;
    for (uint64_t i = 0; i < p_.ChunkCount(); ++i) {
      TRY(CheckCancel(options_));
      ReportVerified();
      size_t length = static_cast<size_t>(p_.ChunkLength(i));
      ProbeState state = ProbeState::kNotProbed;
      size_t buffer = 0;
      {
        std::unique_lock lock(mutex_);
        source_index_ = i;
        changed_.notify_all();
        if (adaptive) {
          changed_.wait(lock, [&] { return failed_ || probe_state_[i] != ProbeState::kPending; });
          state = probe_state_[i];
        }
        if (state != ProbeState::kMatch) {
          changed_.wait(lock, [&] { return failed_ || !free_.empty(); });
          if (!failed_) {
            buffer = free_.front();
            free_.pop_front();
          }
        }
        if (failed_) return {};  // the stage that failed reports it
      }
      if (state == ProbeState::kMatch) {
        // Read back from the slot during this call and matched: verified.
        stats_.chunks_skipped++;
        stats_.bytes_skipped += length;
        if (verify_ == Verify::kAfterFlush) verified_bytes_ += length;
        if (options_.on_progress) options_.on_progress(length);
        if (options_.after_chunk) options_.after_chunk(i);
        continue;
      }
      auto verified = ReadVerifiedChunk(source_, p_, i, BufferSpan(buffer, length), hasher);
      if (!verified) {
        Release(buffer);
        return verified;
      }
      {
        std::lock_guard lock(mutex_);
        to_write_.push_back({i, buffer, length});
        changed_.notify_all();
      }
      stats_.written[i] = true;
      stats_.chunks_written++;
      stats_.bytes_written += length;
      if (options_.on_progress) options_.on_progress(length);
      if (options_.after_chunk) options_.after_chunk(i);
    }
    return {};
  }

  // Writes queued chunks. With verification, a written chunk's buffer is
  // kept until a flush covers it, then handed to the verify stage.
  Result<void> WriteStage() {
    while (true) {
      std::optional<Item> item;
      bool flush = false;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return failed_ || writes_closed_ || !to_write_.empty(); });
        if (failed_) return {};
        if (!to_write_.empty()) {
          item = to_write_.front();
          to_write_.pop_front();
        } else {
          return {};  // closed and drained; the caller does the last flush
        }
      }
      std::span<const uint8_t> data = BufferSpan(item->buffer, item->length);
      TRY_CTX(WithDevice([&] { return slot_.WriteAt(item->index * p_.chunk_size, data); }),
              fmt::format("writing {}", ChunkName(p_, item->index)));
      if (verify_ == Verify::kNo) {
        Release(item->buffer);
        continue;
      }
      {
        std::lock_guard lock(mutex_);
        unflushed_.push_back(*item);
        // Flush every flush_every_ chunks, and early when the source stage
        // is waiting for a buffer that only a flush (then verify) frees.
        flush = unflushed_.size() >= flush_every_ || (to_write_.empty() && free_.empty());
      }
      if (flush) TRY(FlushAndHandOver());
    }
  }

  Result<void> FlushAndHandOver() {
    TRY_CTX(WithDevice([&] { return slot_.Flush(); }), fmt::format("flushing {}", p_.name));
    std::lock_guard lock(mutex_);
    for (const Item& item : unflushed_) to_verify_.push_back(item);
    unflushed_.clear();
    changed_.notify_all();
    return {};
  }

  // Re-reads flushed chunks and compares them with what was written.
  Result<void> VerifyStage(BlockDeviceInterface& device) {
    struct Done {
      Streamer* s;
      ~Done() {
        std::lock_guard lock(s->mutex_);
        s->verifier_done_ = true;
        s->changed_.notify_all();
      }
    } done{this};
    std::vector<uint8_t> readback(p_.chunk_size);
    while (true) {
      Item item;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return failed_ || verify_closed_ || !to_verify_.empty(); });
        if (failed_) return {};
        if (to_verify_.empty()) return {};  // closed and drained
        item = to_verify_.front();
        to_verify_.pop_front();
      }
      std::span<uint8_t> read(readback.data(), item.length);
      TRY_CTX(WithDevice([&] { return device.ReadAt(item.index * p_.chunk_size, read); }),
              fmt::format("re-reading {}", ChunkName(p_, item.index)));
      std::span<const uint8_t> written = BufferSpan(item.buffer, item.length);
      if (std::memcmp(read.data(), written.data(), item.length) != 0) {
        return Error::Make(ErrorCode::kVerificationFailed,
                           fmt::format("re-reading {}: the slot holds other bytes than were "
                                       "written",
                                       ChunkName(p_, item.index)));
      }
      Release(item.buffer);
      verified_bytes_ += item.length;
    }
  }

  ByteSourceInterface& source_;
  const Payload& p_;
  BlockDeviceInterface& slot_;
  const WriteOptions& options_;
  const Verify verify_;
  WriteStats stats_;  // the calling thread's
  bool shared_device_ = false;
  std::mutex device_mutex_;
  uint64_t flush_every_ = 1;
  std::vector<std::vector<uint8_t>> storage_;
  std::atomic<uint64_t> verified_bytes_{0};
  uint64_t reported_verified_ = 0;  // calling thread

  std::mutex mutex_;  // guards everything below
  std::condition_variable changed_;
  std::optional<Error> error_;
  bool failed_ = false;
  std::deque<size_t> free_;
  std::deque<Item> to_write_;
  std::deque<Item> unflushed_;
  std::deque<Item> to_verify_;
  bool writes_closed_ = false;
  bool verify_closed_ = false;
  bool verifier_done_ = false;
  std::vector<ProbeState> probe_state_;
  uint64_t next_probe_ = 0;
  uint64_t source_index_ = 0;
  uint64_t consecutive_misses_ = 0;
  bool probes_closed_ = false;
};

// A fixed pool of chunk buffers handed between two threads (VerifySlot:
// reads on one, hashing on the other).
class ChunkPipeline {
 public:
  static constexpr size_t kPoolBuffers = 4;
  struct Item {
    uint64_t index = 0;
    std::vector<uint8_t>* buffer = nullptr;
    size_t length = 0;
  };

  explicit ChunkPipeline(size_t chunk_size) {
    for (auto& b : storage_) {
      b.resize(chunk_size);
      free_.push_back(&b);
    }
  }

  std::vector<uint8_t>* TakeFree() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !free_.empty(); });
    auto* b = free_.front();
    free_.pop_front();
    return b;
  }
  void GiveFree(std::vector<uint8_t>* b) {
    std::lock_guard lock(mutex_);
    free_.push_back(b);
    changed_.notify_all();
  }
  void Push(Item item) {
    std::lock_guard lock(mutex_);
    work_.push_back(item);
    changed_.notify_all();
  }
  std::optional<Item> Pop() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !work_.empty() || closed_; });
    if (work_.empty()) return std::nullopt;
    Item item = work_.front();
    work_.pop_front();
    return item;
  }
  void Close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    changed_.notify_all();
  }
  void SetError(Error error) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = std::move(error);
    failed_ = true;
  }
  bool failed() const { return failed_.load(); }
  std::optional<Error> TakeError() {
    std::lock_guard lock(mutex_);
    return std::move(error_);
  }

 private:
  std::array<std::vector<uint8_t>, kPoolBuffers> storage_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::vector<uint8_t>*> free_;
  std::deque<Item> work_;
  bool closed_ = false;
  std::atomic<bool> failed_{false};
  std::optional<Error> error_;
};

template <typename Produce, typename Consume>
Result<void> RunPipeline(ChunkPipeline& pipeline, Produce&& produce, Consume&& consume) {
  std::thread consumer([&] {
    while (auto item = pipeline.Pop()) {
      if (!pipeline.failed()) {
        auto result = consume(*item);
        if (!result) pipeline.SetError(std::move(result).error());
      }
      pipeline.GiveFree(item->buffer);
    }
  });
  Result<void> produced = produce();
  pipeline.Close();
  consumer.join();
  if (!produced) return produced;
  if (auto error = pipeline.TakeError()) return std::move(*error);
  return {};
}

}  // namespace

Result<WriteStats> WritePayload(ByteSourceInterface& source, const Payload& p,
                                BlockDeviceInterface& slot, const WriteOptions& options) {
  return Streamer(source, p, slot, options, Streamer::Verify::kNo).Run();
}

Result<WriteStats> InstallPayload(ByteSourceInterface& source, const Payload& p,
                                  BlockDeviceInterface& slot, const WriteOptions& options) {
  return Streamer(source, p, slot, options, Streamer::Verify::kAfterFlush).Run();
}

Result<void> VerifySlot(BlockDeviceInterface& slot, const Payload& p, const WriteOptions& options,
                        const std::vector<bool>* written) {
  if (written && written->size() != p.ChunkCount()) {
    return Error::Make(ErrorCode::kInternal, "verifying: chunk map does not match the payload");
  }
  if (p.size > slot.size()) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("{} payload is larger than the slot", p.name));
  }
  // Every byte is covered by exactly one chunk digest, and the chunk list is
  // signed, so matching every chunk is matching the whole payload; the
  // whole-payload digest would be a second hash pass for nothing.
  ChunkPipeline pipeline(p.chunk_size);
  Sha256 hasher = TRY(Sha256::Create());
  // Producer: reads (I/O) on this thread; consumer: hashes.
  auto produce = [&]() -> Result<void> {
    for (uint64_t i = 0; i < p.ChunkCount(); ++i) {
      TRY(CheckCancel(options));
      if (pipeline.failed()) return {};
      size_t length = static_cast<size_t>(p.ChunkLength(i));
      if (written && !(*written)[i]) {
        if (options.on_progress) options.on_progress(length);
        continue;
      }
      std::vector<uint8_t>* buffer = pipeline.TakeFree();
      auto read = slot.ReadAt(i * p.chunk_size, std::span<uint8_t>(buffer->data(), length));
      if (!read) {
        pipeline.GiveFree(buffer);
        return std::move(read).error().WithContext(fmt::format("re-reading {}", ChunkName(p, i)));
      }
      pipeline.Push({i, buffer, length});
      if (options.on_progress) options.on_progress(length);
    }
    return {};
  };
  auto consume = [&](const ChunkPipeline::Item& item) -> Result<void> {
    std::span<const uint8_t> data(item.buffer->data(), item.length);
    TRY(hasher.Reset());
    TRY(hasher.Update(data));
    if (TRY(hasher.Finish()) != p.chunks[item.index]) {
      return Error::Make(ErrorCode::kVerificationFailed,
                         fmt::format("re-reading {}: the slot holds other bytes than were written",
                                     ChunkName(p, item.index)));
    }
    return {};
  };
  return RunPipeline(pipeline, produce, consume);
}

Result<void> CopyVerifiedPayload(ByteSourceInterface& source, const Payload& p,
                                 const std::function<Result<void>(std::span<const uint8_t>)>& sink,
                                 const WriteOptions& options) {
  std::vector<uint8_t> buffer(p.chunk_size);
  Sha256 hasher = TRY(Sha256::Create());
  Sha256 whole = TRY(Sha256::Create());
  for (uint64_t i = 0; i < p.ChunkCount(); ++i) {
    TRY(CheckCancel(options));
    std::span<uint8_t> data(buffer.data(), static_cast<size_t>(p.ChunkLength(i)));
    TRY(ReadVerifiedChunk(source, p, i, data, hasher));
    TRY(whole.Update(data));
    TRY(sink(data));
    if (options.on_progress) options.on_progress(data.size());
  }
  if (TRY(whole.Finish()) != p.sha256) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("{}: whole-payload digest mismatch", p.name));
  }
  return {};
}

}  // namespace ralph::ota
