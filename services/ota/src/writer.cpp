#include "services/ota/writer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
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
// Probes and re-reads read runs of consecutive chunks up to this size in
// one request: large requests are what makes reading fast (see slot_device.h).
constexpr uint64_t kRunBytes = 4u << 20;

// Page-aligned memory, so that O_DIRECT I/O can use it in place.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Allocates on first use: a pool sized for the worst case costs only what
  // is touched.
  std::span<uint8_t> Get(size_t capacity, size_t length) {
    if (!data_) {
      data_.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, (capacity + 4095) / 4096 * 4096)));
      if (!data_) std::abort();  // as operator new does without exceptions
    }
    return std::span<uint8_t>(data_.get(), length);
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
};

// Reads chunks [first, first + count) in one request; when that fails,
// chunk by chunk, so the error names the chunk that cannot be read.
Result<void> ReadRun(BlockDeviceInterface& device, const Payload& p, uint64_t first, uint64_t count,
                     std::span<uint8_t> out, std::string_view what) {
  auto whole = device.ReadAt(first * p.chunk_size, out);
  if (whole) return {};
  if (count == 1) {
    return std::move(whole).error().WithContext(fmt::format("{} {}", what, ChunkName(p, first)));
  }
  for (uint64_t i = first; i < first + count; ++i) {
    std::span<uint8_t> part = out.subspan((i - first) * p.chunk_size, p.ChunkLength(i));
    TRY_CTX(device.ReadAt(i * p.chunk_size, part), fmt::format("{} {}", what, ChunkName(p, i)));
  }
  return {};
}

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
    write_queue_target_ = std::max(1u, options_.write_threads) + 2;
    flush_every_ = std::max<uint64_t>(1, options_.flush_bytes / p_.chunk_size);
    run_chunks_ = std::max<uint64_t>(1, kRunBytes / p_.chunk_size);

    // Handles for the other threads: their own when the caller can open
    // them, else the slot itself, shared under device_mutex_.
    bool adaptive = options_.mode == WriteOptions::Mode::kAdaptive;
    unsigned probers = adaptive ? std::max(1u, options_.probe_threads) : 0;
    unsigned writers = std::max(1u, options_.write_threads);
    bool verify = verify_ == Verify::kAfterFlush;
    unsigned verifiers = verify ? std::max(1u, options_.verify_threads) : 0;
    unsigned handles_needed = probers + (writers - 1) + verifiers;
    std::vector<std::unique_ptr<BlockDeviceInterface>> handles;
    if (options_.open_handle) {
      for (unsigned h = 0; h < handles_needed; ++h) {
        handles.push_back(TRY_CTX(options_.open_handle(), "opening the slot"));
      }
    } else {
      shared_device_ = true;
    }
    unsigned next_handle = 0;
    auto handle = [&]() -> BlockDeviceInterface& {
      return shared_device_ ? slot_ : *handles[next_handle++];
    };

    Sha256 hasher = TRY(Sha256::Create());
    std::vector<std::thread> probe_threads;
    for (unsigned r = 0; r < probers; ++r) {
      probe_threads.emplace_back([this, &device = handle()] { Guard(ProbeStage(device)); });
    }
    std::vector<std::thread> write_threads;
    for (unsigned w = 0; w < writers; ++w) {
      BlockDeviceInterface& device = w == 0 ? slot_ : handle();
      write_threads.emplace_back([this, &device] { Guard(WriteStage(device)); });
    }
    std::vector<std::thread> verify_threads;
    verifiers_running_ = verifiers;
    for (unsigned v = 0; v < verifiers; ++v) {
      verify_threads.emplace_back([this, &device = handle()] { Guard(VerifyStage(device)); });
    }

    Result<void> produced = SourceStage(hasher);
    {
      std::lock_guard lock(mutex_);
      writes_closed_ = true;
      probes_closed_ = true;
      changed_.notify_all();
    }
    for (auto& t : probe_threads) t.join();
    // The chunks already queued are written even when the source stage
    // failed (they were verified): a failure is reported with every chunk
    // before it on the device.
    for (auto& t : write_threads) t.join();
    if (!produced) Fail(std::move(produced).error());
    if (verify) {
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
        bool done = changed_.wait_for(lock, std::chrono::milliseconds(100),
                                      [&] { return verifiers_running_ == 0; });
        lock.unlock();
        ReportVerified();
        if (done) break;
      }
      for (auto& t : verify_threads) t.join();
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
    // False once the source stage took the buffer back (see TakeBuffer):
    // the chunk is then verified by its digest instead of by comparison.
    bool has_buffer = true;
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
    return storage_[buffer].Get(p_.chunk_size, length);
  }

  // A buffer for the source stage: a free one, else the one of the oldest
  // written chunk still waiting for its flush (that chunk will be verified
  // by re-hashing it instead). So memory stays bounded while flushes stay
  // rare, and nothing waits for a flush to get a buffer. Under mutex_.
  // Taking one back only while the writers are short of work keeps the
  // source stage from running far ahead and keeps most buffers until their
  // re-read, where a compare is cheaper than a second SHA-256.
  bool CanTakeBuffer() const {
    if (!free_.empty()) return true;
    if (to_write_.size() >= write_queue_target_) return false;
    return std::any_of(unflushed_.begin(), unflushed_.end(),
                       [](const Item& item) { return item.has_buffer; });
  }
  size_t TakeBuffer() {
    if (!free_.empty()) {
      size_t buffer = free_.front();
      free_.pop_front();
      return buffer;
    }
    for (Item& item : unflushed_) {
      if (item.has_buffer) {
        item.has_buffer = false;
        return item.buffer;
      }
    }
    return 0;  // unreachable: CanTakeBuffer() was true
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

  // Probe threads: take the next run of chunks, read the target's chunks
  // and hash them, publish match/miss for the source stage.
  Result<void> ProbeStage(BlockDeviceInterface& device) {
    Sha256 hasher = TRY(Sha256::Create());
    AlignedBuffer current;
    uint64_t window = std::max<uint64_t>(kProbeWindow, 4 * run_chunks_);
    const uint64_t n = probe_state_.size();
    while (true) {
      uint64_t first = 0;
      uint64_t count = 0;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] {
          return failed_ || probes_closed_ || next_probe_ >= n ||
                 next_probe_ < source_index_ + window;
        });
        if (failed_ || probes_closed_ || next_probe_ >= n) return {};
        // After many misses in a row (a heuristic over the probes finished
        // so far, not strictly in order), probe only every kProbeStride-th.
        if (consecutive_misses_ >= kMissesBeforeSparseProbing) {
          while (next_probe_ < n && next_probe_ % kProbeStride != 0) {
            probe_state_[next_probe_++] = ProbeState::kNotProbed;
          }
          changed_.notify_all();
          if (next_probe_ >= n) return {};
          first = next_probe_++;
          count = 1;
        } else {
          first = next_probe_;
          count = std::min({run_chunks_, n - first, source_index_ + window - first});
          next_probe_ += count;
        }
      }
      uint64_t bytes = 0;
      for (uint64_t i = first; i < first + count; ++i) bytes += p_.ChunkLength(i);
      std::span<uint8_t> data = current.Get(run_chunks_ * p_.chunk_size, bytes);
      TRY(WithDevice(
          [&] { return ReadRun(device, p_, first, count, data, "reading the slot's"); }));
      std::vector<bool> match(count);
      for (uint64_t k = 0; k < count; ++k) {
        TRY(hasher.Reset());
        TRY(hasher.Update(data.subspan(k * p_.chunk_size, p_.ChunkLength(first + k))));
        match[k] = TRY(hasher.Finish()) == p_.chunks[first + k];
      }
      std::lock_guard lock(mutex_);
      for (uint64_t k = 0; k < count; ++k) {
        probe_state_[first + k] = match[k] ? ProbeState::kMatch : ProbeState::kMiss;
        consecutive_misses_ = match[k] ? 0 : consecutive_misses_ + 1;
      }
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
          changed_.wait(lock, [&] { return failed_ || CanTakeBuffer(); });
          if (!failed_) buffer = TakeBuffer();
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

  // Writes queued chunks (several writer threads keep more than one write
  // in flight). With verification, a written chunk's buffer is kept until a
  // flush covers it, then handed to the verify stage.
  Result<void> WriteStage(BlockDeviceInterface& device) {
    while (true) {
      Item item;
      std::deque<Item> flushing;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return failed_ || writes_closed_ || !to_write_.empty(); });
        if (failed_) return {};
        if (to_write_.empty()) return {};  // closed and drained; the caller does the last flush
        item = to_write_.front();
        to_write_.pop_front();
        changed_.notify_all();  // see CanTakeBuffer
      }
      std::span<const uint8_t> data = BufferSpan(item.buffer, item.length);
      TRY_CTX(WithDevice([&] { return device.WriteAt(item.index * p_.chunk_size, data); }),
              fmt::format("writing {}", ChunkName(p_, item.index)));
      if (verify_ == Verify::kNo) {
        Release(item.buffer);
        continue;
      }
      {
        std::lock_guard lock(mutex_);
        unflushed_.push_back(item);
        changed_.notify_all();  // its buffer may be taken (TakeBuffer)
        // Only writes completed before the flush starts are covered by it:
        // take them now, later ones wait for the next flush.
        if (unflushed_.size() >= flush_every_) flushing.swap(unflushed_);
      }
      if (!flushing.empty()) {
        TRY_CTX(WithDevice([&] { return device.Flush(); }), fmt::format("flushing {}", p_.name));
        std::lock_guard lock(mutex_);
        for (const Item& flushed : flushing) to_verify_.push_back(flushed);
        changed_.notify_all();
      }
    }
  }

  // Re-reads flushed chunks: compares them with the buffer that was
  // written when it is still held, else checks their manifest digest.
  Result<void> VerifyStage(BlockDeviceInterface& device) {
    struct Done {
      Streamer* s;
      ~Done() {
        std::lock_guard lock(s->mutex_);
        s->verifiers_running_--;
        s->changed_.notify_all();
      }
    } done{this};
    Sha256 hasher = TRY(Sha256::Create());
    AlignedBuffer readback;
    std::vector<Item> run;
    while (true) {
      run.clear();
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return failed_ || verify_closed_ || !to_verify_.empty(); });
        if (failed_) return {};
        if (to_verify_.empty()) return {};  // closed and drained
        // A run of consecutive chunks, read back in one request.
        do {
          run.push_back(to_verify_.front());
          to_verify_.pop_front();
        } while (!to_verify_.empty() && run.size() < run_chunks_ &&
                 to_verify_.front().index == run.back().index + 1);
      }
      uint64_t first = run.front().index;
      uint64_t bytes = 0;
      for (const Item& item : run) bytes += item.length;
      std::span<uint8_t> read = readback.Get(run_chunks_ * p_.chunk_size, bytes);
      TRY(WithDevice([&] { return ReadRun(device, p_, first, run.size(), read, "re-reading"); }));
      for (const Item& item : run) {
        std::span<const uint8_t> got =
            read.subspan((item.index - first) * p_.chunk_size, item.length);
        bool same = false;
        if (item.has_buffer) {
          same = std::memcmp(got.data(), BufferSpan(item.buffer, item.length).data(),
                             item.length) == 0;
          Release(item.buffer);
        } else {
          TRY(hasher.Reset());
          TRY(hasher.Update(got));
          same = TRY(hasher.Finish()) == p_.chunks[item.index];
        }
        if (!same) {
          return Error::Make(ErrorCode::kVerificationFailed,
                             fmt::format("re-reading {}: the slot holds other bytes than were "
                                         "written",
                                         ChunkName(p_, item.index)));
        }
        verified_bytes_ += item.length;
      }
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
  std::vector<AlignedBuffer> storage_;
  uint64_t run_chunks_ = 1;        // chunks per run read
  size_t write_queue_target_ = 4;  // chunks queued for the writers
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
  unsigned verifiers_running_ = 0;
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
