#include "services/ota/writer.h"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
// XXH3 compiled into this file (no run-time library).
#define XXH_INLINE_ALL
#include <xxhash.h>

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

// Checks bundle bytes of chunk `index` against the manifest's digest.
Result<void> CheckChunkDigest(const Payload& p, uint64_t index, std::span<const uint8_t> data,
                              Sha256& hasher) {
  TRY(hasher.Reset());
  TRY(hasher.Update(data));
  if (TRY(hasher.Finish()) != p.chunks[index]) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("{}: digest mismatch: the bundle's payload is corrupt or was "
                                   "tampered with",
                                   ChunkName(p, index)));
  }
  return {};
}

// Reads chunk `index` from the source and checks it against the manifest.
Result<void> ReadVerifiedChunk(ByteSourceInterface& source, const Payload& p, uint64_t index,
                               std::span<uint8_t> out, Sha256& hasher) {
  TRY_CTX(source.ReadAt(p.offset + index * p.chunk_size, out),
          fmt::format("reading {} from {}", ChunkName(p, index), source.Describe()));
  return CheckChunkDigest(p, index, out, hasher);
}

// What the re-read of a written chunk is checked against: the XXH3-128 of
// the buffer that was written, taken right after that buffer's SHA-256
// matched the signed manifest. Equal fingerprints mean equal bytes for any
// fault a device makes (a flipped bit, a torn or misdirected write, stale
// data: a chance of 2^-128 to miss one); XXH3 is not collision-resistant
// against someone who picks the bytes, but whoever controls what the device
// returns is not stopped by any re-read (it can return other bytes at boot).
// It lets a chunk's buffer go back to the pool as soon as the chunk is
// written, instead of waiting for the flush and the re-read, so flushes can
// be as rare as the device likes at a fixed memory cost; and at ~15 GB/s it
// costs a tenth of a second SHA-256.
using Fingerprint = XXH128_hash_t;

Fingerprint FingerprintOf(std::span<const uint8_t> data) {
  return XXH3_128bits(data.data(), data.size());
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
constexpr uint64_t kRunBytes = 2u << 20;

// Page-aligned memory for O_DIRECT I/O in place: `count` buffers of
// `buffer_bytes` each, in one anonymous mapping aligned to 2 MiB and advised
// for transparent huge pages (O_DIRECT pins the pages of every request; huge
// pages make that cheap). Pages become resident when first touched.
class BufferPool {
 public:
  static Result<BufferPool> Create(size_t count, size_t buffer_bytes) {
    constexpr size_t kHuge = 2u << 20;
    size_t stride = (buffer_bytes + 4095) / 4096 * 4096;
    size_t bytes = (std::max<size_t>(1, count) * stride + kHuge - 1) / kHuge * kHuge;
    // Over-map by one huge page and trim, for the alignment.
    void* mapped =
        ::mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) {
      return Error::FromErrno(fmt::format("allocating {} bytes of I/O buffers", bytes), errno);
    }
    auto start = reinterpret_cast<uintptr_t>(mapped);
    uintptr_t aligned = (start + kHuge - 1) / kHuge * kHuge;
    if (aligned > start) ::munmap(mapped, aligned - start);
    if (uintptr_t end = start + bytes + kHuge; end > aligned + bytes) {
      ::munmap(reinterpret_cast<void*>(aligned + bytes), end - aligned - bytes);
    }
    auto* base = reinterpret_cast<uint8_t*>(aligned);
    ::madvise(base, bytes, MADV_HUGEPAGE);  // advice only: without THP, 4 KiB pages
    return BufferPool(base, bytes, stride);
  }
  BufferPool(BufferPool&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)), bytes_(other.bytes_), stride_(other.stride_) {}
  BufferPool& operator=(BufferPool&&) = delete;
  ~BufferPool() {
    if (base_) ::munmap(base_, bytes_);
  }

  std::span<uint8_t> Get(size_t index, size_t length) const {
    return std::span<uint8_t>(base_ + index * stride_, length);
  }

 private:
  BufferPool(uint8_t* base, size_t bytes, size_t stride)
      : base_(base), bytes_(bytes), stride_(stride) {}
  uint8_t* base_ = nullptr;
  size_t bytes_ = 0;
  size_t stride_ = 0;
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
// the state they share. Probe, source, write, flush and verify stages run on
// threads of their own; the calling thread takes the chunks in order and
// decides (skip or write). One mutex guards the queues and per-chunk states;
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
    chunk_state_.assign(chunk_count, ChunkState::kPending);
    ready_.assign(chunk_count, Ready{});
    size_t buffers =
        static_cast<size_t>(std::max<uint64_t>(kMinBuffers, options_.buffer_bytes / p_.chunk_size));
    buffers = static_cast<size_t>(std::min<uint64_t>(buffers, std::max<uint64_t>(chunk_count, 1)));
    buffers = std::max(buffers, kMinBuffers);
    pool_.emplace(TRY(BufferPool::Create(buffers, p_.chunk_size)));
    for (size_t b = 0; b < buffers; ++b) free_.push_back(b);
    flush_bytes_ = std::max<uint64_t>(p_.chunk_size, options_.flush_bytes);
    max_unflushed_bytes_ = std::max<uint64_t>(flush_bytes_, options_.max_unflushed_bytes);
    run_chunks_ = std::max<uint64_t>(1, kRunBytes / p_.chunk_size);

    // Handles for the other threads: their own when the caller can open
    // them, else the slot itself, shared under device_mutex_.
    bool adaptive = options_.mode == WriteOptions::Mode::kAdaptive;
    unsigned probers = adaptive ? std::max(1u, options_.probe_threads) : 0;
    unsigned hashers = std::max(1u, options_.hash_threads);
    unsigned writers = std::max(1u, options_.write_threads);
    bool verify = verify_ == Verify::kAfterFlush;
    unsigned verifiers = verify ? std::max(1u, options_.verify_threads) : 0;
    unsigned handles_needed = probers + (writers - 1) + (verify ? 1 + verifiers : 0);
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

    std::vector<std::thread> probe_threads;
    for (unsigned r = 0; r < probers; ++r) {
      probe_threads.emplace_back([this, &device = handle()] { Guard(ProbeStage(device)); });
    }
    std::vector<std::thread> source_threads;
    for (unsigned h = 0; h < hashers; ++h) {
      source_threads.emplace_back([this] { Guard(SourceStage()); });
    }
    std::vector<std::thread> write_threads;
    writers_running_ = writers;
    for (unsigned w = 0; w < writers; ++w) {
      BlockDeviceInterface& device = w == 0 ? slot_ : handle();
      write_threads.emplace_back([this, &device] { Guard(WriteStage(device)); });
    }
    std::thread flush_thread;
    if (verify)
      flush_thread = std::thread([this, &device = handle()] { Guard(FlushStage(device)); });
    std::vector<std::thread> verify_threads;
    verifiers_running_ = verifiers;
    for (unsigned v = 0; v < verifiers; ++v) {
      verify_threads.emplace_back([this, &device = handle()] { Guard(VerifyStage(device)); });
    }

    Result<void> produced = Sequence();
    {
      std::lock_guard lock(mutex_);
      source_closed_ = true;
      writes_closed_ = true;
      probes_closed_ = true;
      WakeAll();
    }
    for (auto& t : probe_threads) t.join();
    for (auto& t : source_threads) t.join();
    // The chunks already queued are written even when the source stage
    // failed (they were verified): a failure is reported with every chunk
    // before it on the device.
    for (auto& t : write_threads) t.join();
    if (flush_thread.joinable()) flush_thread.join();
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
        verify_cv_.notify_all();
      }
      // Report the verifier's progress until it is done.
      while (true) {
        std::unique_lock lock(mutex_);
        bool done = sequence_cv_.wait_for(lock, std::chrono::milliseconds(100),
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
  // A chunk on its way from the source stage to the calling thread.
  enum class ChunkState : uint8_t { kPending, kSkip, kReady, kFailed };
  // A chunk read and checked, waiting for its turn (kReady).
  struct Ready {
    size_t buffer = 0;
    Fingerprint fingerprint{};
  };
  struct Item {
    uint64_t index = 0;
    size_t buffer = 0;  // until written
    size_t length = 0;
    Fingerprint fingerprint{};
  };

  // The first error wins; every stage stops at its next step.
  void Fail(Error error) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = std::move(error);
    failed_ = true;
    WakeAll();
  }
  // Under mutex_.
  void WakeAll() {
    for (auto* cv : {&probe_cv_, &source_cv_, &sequence_cv_, &write_cv_, &flush_cv_, &verify_cv_}) {
      cv->notify_all();
    }
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

  std::span<uint8_t> BufferSpan(size_t buffer, size_t length) const {
    return pool_->Get(buffer, length);
  }

  // When the flush stage flushes (under mutex_): once flush_bytes_ are
  // written and not covered by a flush. (The writers wait for a flush only
  // at max_unflushed_bytes_, which is at least flush_bytes_.)
  bool ShouldFlush() const { return !unflushed_.empty() && unflushed_bytes_ >= flush_bytes_; }

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
    BufferPool current = TRY(BufferPool::Create(1, run_chunks_ * p_.chunk_size));
    uint64_t window = std::max<uint64_t>(kProbeWindow, 4 * run_chunks_);
    const uint64_t n = probe_state_.size();
    while (true) {
      uint64_t first = 0;
      uint64_t count = 0;
      {
        std::unique_lock lock(mutex_);
        probe_cv_.wait(lock, [&] {
          return failed_ || probes_closed_ || next_probe_ >= n || next_probe_ < next_read_ + window;
        });
        if (failed_ || probes_closed_ || next_probe_ >= n) return {};
        // After many misses in a row (a heuristic over the probes finished
        // so far, not strictly in order), probe only every kProbeStride-th.
        if (consecutive_misses_ >= kMissesBeforeSparseProbing) {
          while (next_probe_ < n && next_probe_ % kProbeStride != 0) {
            probe_state_[next_probe_++] = ProbeState::kNotProbed;
          }
          source_cv_.notify_all();
          if (next_probe_ >= n) return {};
          first = next_probe_++;
          count = 1;
        } else {
          first = next_probe_;
          count = std::min({run_chunks_, n - first, next_read_ + window - first});
          next_probe_ += count;
        }
      }
      uint64_t bytes = 0;
      for (uint64_t i = first; i < first + count; ++i) bytes += p_.ChunkLength(i);
      std::span<uint8_t> data = current.Get(0, bytes);
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
      source_cv_.notify_all();
    }
  }

  // Source threads: each takes the next chunk to write, reads it from the
  // source into a pool buffer (one at a time and in order, under
  // source_mutex_: an HTTPS source streams front to back), then checks its
  // SHA-256 against the manifest while the next one is read, on the thread
  // that has its bytes in cache. A failure is kept with its chunk: the
  // calling thread reports it after queueing every chunk before it.
  Result<void> SourceStage() {
    bool adaptive = options_.mode == WriteOptions::Mode::kAdaptive;
    const uint64_t n = chunk_state_.size();
    Sha256 hasher = TRY(Sha256::Create());
    while (true) {
      uint64_t index = 0;
      size_t buffer = 0;
      std::unique_lock source_lock(source_mutex_);
      {
        std::unique_lock lock(mutex_);
        while (true) {
          source_cv_.wait(lock, [&] {
            return failed_ || source_closed_ || next_read_ >= n || !adaptive ||
                   probe_state_[next_read_] != ProbeState::kPending;
          });
          if (failed_ || source_closed_ || next_read_ >= n) return {};
          if (adaptive && probe_state_[next_read_] == ProbeState::kMatch) {
            chunk_state_[next_read_++] = ChunkState::kSkip;  // the source is not read
            sequence_cv_.notify_all();
            probe_cv_.notify_all();  // the probe window moved
            continue;
          }
          break;
        }
        source_cv_.wait(lock, [&] { return failed_ || source_closed_ || !free_.empty(); });
        if (failed_ || source_closed_) return {};
        buffer = free_.front();
        free_.pop_front();
        index = next_read_++;
        probe_cv_.notify_all();  // the probe window moved
      }
      std::span<uint8_t> data = BufferSpan(buffer, static_cast<size_t>(p_.ChunkLength(index)));
      Result<void> read = source_.ReadAt(p_.offset + index * p_.chunk_size, data);
      source_lock.unlock();
      Result<void> checked =
          read ? CheckChunkDigest(p_, index, data, hasher)
               : Result<void>(std::move(read).error().WithContext(
                     fmt::format("reading {} from {}", ChunkName(p_, index), source_.Describe())));
      // Taken from the bytes that matched the manifest, while they are in
      // this core's cache; the buffer is not written to again until the
      // chunk was written to the slot.
      Fingerprint fingerprint{};
      if (checked && verify_ == Verify::kAfterFlush) fingerprint = FingerprintOf(data);
      std::lock_guard lock(mutex_);
      if (checked) {
        chunk_state_[index] = ChunkState::kReady;
        ready_[index] = {buffer, fingerprint};
      } else {
        chunk_state_[index] = ChunkState::kFailed;
        chunk_errors_.emplace(index, std::move(checked).error());
        source_closed_ = true;  // nothing after a bad chunk is read
        free_.push_back(buffer);
      }
      sequence_cv_.notify_all();
      source_cv_.notify_all();
    }
  }

  // The calling thread: takes the chunks in order, as the source stage
  // decided them, and queues those to write. A chunk reaches the writers
  // only after every chunk before it was verified or skipped.
  Result<void> Sequence() {
    for (uint64_t i = 0; i < p_.ChunkCount(); ++i) {
      TRY(CheckCancel(options_));
      ReportVerified();
      size_t length = static_cast<size_t>(p_.ChunkLength(i));
      ChunkState state = ChunkState::kPending;
      {
        std::unique_lock lock(mutex_);
        sequence_cv_.wait(lock, [&] { return failed_ || chunk_state_[i] != ChunkState::kPending; });
        if (failed_) return {};  // the stage that failed reports it
        state = chunk_state_[i];
        if (state == ChunkState::kFailed) {
          auto it = chunk_errors_.find(i);
          return std::move(it->second);
        }
        if (state == ChunkState::kReady) {
          to_write_.push_back({i, ready_[i].buffer, length, ready_[i].fingerprint});
          write_cv_.notify_all();
        }
      }
      if (state == ChunkState::kSkip) {
        // Read back from the slot during this call and matched: verified.
        stats_.chunks_skipped++;
        stats_.bytes_skipped += length;
        if (verify_ == Verify::kAfterFlush) verified_bytes_ += length;
      } else {
        stats_.written[i] = true;
        stats_.chunks_written++;
        stats_.bytes_written += length;
      }
      if (options_.on_progress) options_.on_progress(length);
      if (options_.after_chunk) options_.after_chunk(i);
    }
    return {};
  }

  // Writes queued chunks (several writer threads keep more than one write
  // in flight) and hands the buffer back at once: the re-read checks the
  // chunk's fingerprint, not the buffer.
  Result<void> WriteStage(BlockDeviceInterface& device) {
    struct Done {
      Streamer* s;
      ~Done() {
        std::lock_guard lock(s->mutex_);
        s->writers_running_--;
        s->flush_cv_.notify_all();
      }
    } done{this};
    while (true) {
      Item item;
      {
        std::unique_lock lock(mutex_);
        // At most max_unflushed_bytes_ written and not yet covered by a
        // finished flush: bounds what one flush has to write back and how
        // far the re-reads lag behind.
        write_cv_.wait(lock, [&] {
          return failed_ || (writes_closed_ && to_write_.empty()) ||
                 (!to_write_.empty() &&
                  unflushed_bytes_ + flushing_bytes_ + writing_bytes_ < max_unflushed_bytes_);
        });
        if (failed_) return {};
        if (to_write_.empty()) return {};  // closed and drained; the caller does the last flush
        item = to_write_.front();
        to_write_.pop_front();
        writing_bytes_ += item.length;
      }
      std::span<const uint8_t> data = BufferSpan(item.buffer, item.length);
      TRY_CTX(WithDevice([&] { return device.WriteAt(item.index * p_.chunk_size, data); }),
              fmt::format("writing {}", ChunkName(p_, item.index)));
      std::lock_guard lock(mutex_);
      writing_bytes_ -= item.length;
      free_.push_back(item.buffer);
      if (verify_ == Verify::kAfterFlush) {
        unflushed_.push_back(item);
        unflushed_bytes_ += item.length;
      }
      flush_cv_.notify_all();
      source_cv_.notify_all();
    }
  }

  // Flushes on a thread of its own, so that writes continue while a flush
  // is in flight; only writes completed before a flush starts count as
  // covered by it, the rest wait for the next one. Back to back: a flush
  // starts as soon as the previous one is done and flush_bytes_ more are
  // written, so a device that flushes slowly gets fewer, larger flushes
  // (which cost it less per byte). The chunks covered go to the verify
  // stage. The last flush is the calling thread's.
  Result<void> FlushStage(BlockDeviceInterface& device) {
    while (true) {
      std::deque<Item> flushing;
      {
        std::unique_lock lock(mutex_);
        flush_cv_.wait(lock, [&] {
          return failed_ || ShouldFlush() || (writes_closed_ && writers_running_ == 0);
        });
        if (failed_ || (writes_closed_ && writers_running_ == 0)) return {};
        flushing.swap(unflushed_);
        flushing_bytes_ = unflushed_bytes_;
        unflushed_bytes_ = 0;
      }
      TRY_CTX(WithDevice([&] { return device.Flush(); }), fmt::format("flushing {}", p_.name));
      std::lock_guard lock(mutex_);
      for (const Item& flushed : flushing) to_verify_.push_back(flushed);
      flushing_bytes_ = 0;
      write_cv_.notify_all();  // see WriteStage
      verify_cv_.notify_all();
    }
  }

  // Re-reads flushed chunks, runs of consecutive ones in one request, and
  // checks each against the fingerprint of the bytes that were written.
  Result<void> VerifyStage(BlockDeviceInterface& device) {
    struct Done {
      Streamer* s;
      ~Done() {
        std::lock_guard lock(s->mutex_);
        s->verifiers_running_--;
        s->sequence_cv_.notify_all();
      }
    } done{this};
    BufferPool readback = TRY(BufferPool::Create(1, run_chunks_ * p_.chunk_size));
    std::vector<Item> run;
    while (true) {
      run.clear();
      {
        std::unique_lock lock(mutex_);
        verify_cv_.wait(lock, [&] { return failed_ || verify_closed_ || !to_verify_.empty(); });
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
      std::span<uint8_t> read = readback.Get(0, bytes);
      TRY(WithDevice([&] { return ReadRun(device, p_, first, run.size(), read, "re-reading"); }));
      for (const Item& item : run) {
        std::span<const uint8_t> got =
            read.subspan((item.index - first) * p_.chunk_size, item.length);
        if (!XXH128_isEqual(FingerprintOf(got), item.fingerprint)) {
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
  std::mutex source_mutex_;  // one source read at a time, in chunk order
  uint64_t flush_bytes_ = 1;
  uint64_t max_unflushed_bytes_ = 1;
  std::optional<BufferPool> pool_;
  uint64_t run_chunks_ = 1;  // chunks per run read
  std::atomic<uint64_t> verified_bytes_{0};
  uint64_t reported_verified_ = 0;  // calling thread

  std::mutex mutex_;  // guards everything below
  // Who waits on what: probe threads, source threads, the calling thread
  // (chunks decided; the verifiers done), writers, the flush stage, verifiers.
  std::condition_variable probe_cv_, source_cv_, sequence_cv_, write_cv_, flush_cv_, verify_cv_;
  std::optional<Error> error_;
  bool failed_ = false;
  std::deque<size_t> free_;
  std::vector<ChunkState> chunk_state_;
  std::vector<Ready> ready_;  // kReady: the buffer holding the chunk, its fingerprint
  std::map<uint64_t, Error> chunk_errors_;
  uint64_t next_read_ = 0;  // the next chunk the source stage decides
  bool source_closed_ = false;
  std::deque<Item> to_write_;
  uint64_t writing_bytes_ = 0;  // in writes under way
  unsigned writers_running_ = 0;
  std::deque<Item> unflushed_;
  uint64_t unflushed_bytes_ = 0;  // written, not yet covered by a flush
  uint64_t flushing_bytes_ = 0;   // covered by the flush under way
  std::deque<Item> to_verify_;
  bool writes_closed_ = false;
  bool verify_closed_ = false;
  unsigned verifiers_running_ = 0;
  std::vector<ProbeState> probe_state_;
  uint64_t next_probe_ = 0;
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
