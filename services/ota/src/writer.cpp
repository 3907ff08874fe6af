#include "services/ota/writer.h"

#include <algorithm>
#include <array>
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

// A fixed pool of chunk buffers handed between two threads: the thread that
// reads (source, target) and hashes, and the thread that does the slow I/O
// (writing to the slot, or reading it back). On two cores hashing and I/O
// overlap instead of alternating; memory stays kPoolBuffers chunks.
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
  // Blocks for the next item; nullopt once Close() was called and the queue
  // is drained.
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
  // The consumer's first error; the producer checks it between chunks.
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

// Runs `consume` on every item pushed to `pipeline` on a second thread until
// `produce` returns; returns the first error of either side.
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

// Adaptive probing costs a read + hash of the target per chunk, a whole
// extra pass when the target holds an unrelated image. After this many
// consecutive misses only every kProbeStride-th chunk is probed, until a probe
// hits again (an unchanged region starts).
constexpr uint64_t kMissesBeforeSparseProbing = 32;
constexpr uint64_t kProbeStride = 16;

}  // namespace

Result<WriteStats> WritePayload(ByteSourceInterface& source, const Payload& p,
                                BlockDeviceInterface& slot, const WriteOptions& options) {
  if (p.size > slot.size()) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("{} payload is {} bytes, larger than the slot ({} bytes)",
                                   p.name, p.size, slot.size()));
  }
  WriteStats stats;
  stats.written.assign(p.ChunkCount(), false);
  ChunkPipeline pipeline(p.chunk_size);
  std::vector<uint8_t> existing(p.chunk_size);
  Sha256 hasher = TRY(Sha256::Create());
  uint64_t misses = 0;
  // Block devices are not thread-safe (BlockDevice has one bounce buffer):
  // probe reads go through a second handle when the caller gave one, else
  // they and the writes take turns.
  BlockDeviceInterface& probe_device = options.probe_device ? *options.probe_device : slot;
  std::mutex device_mutex;
  auto lock_device = [&]() {
    return options.probe_device ? std::unique_lock<std::mutex>()
                                : std::unique_lock<std::mutex>(device_mutex);
  };
  // Producer (this thread): decide, read from the source in order, verify.
  auto produce = [&]() -> Result<void> {
    for (uint64_t i = 0; i < p.ChunkCount(); ++i) {
      TRY(CheckCancel(options));
      if (pipeline.failed()) return {};  // the writer's error is reported
      uint64_t offset = i * p.chunk_size;
      size_t length = static_cast<size_t>(p.ChunkLength(i));
      bool probe = options.mode == WriteOptions::Mode::kAdaptive &&
                   (misses < kMissesBeforeSparseProbing || i % kProbeStride == 0);
      if (probe) {
        std::span<uint8_t> current(existing.data(), length);
        {
          auto lock = lock_device();
          TRY_CTX(probe_device.ReadAt(offset, current),
                  fmt::format("reading the slot's {}", ChunkName(p, i)));
        }
        TRY(hasher.Reset());
        TRY(hasher.Update(current));
        if (TRY(hasher.Finish()) == p.chunks[i]) {
          misses = 0;
          stats.chunks_skipped++;
          stats.bytes_skipped += length;
          if (options.on_progress) options.on_progress(length);
          if (options.after_chunk) options.after_chunk(i);
          continue;
        }
        ++misses;
      }
      std::vector<uint8_t>* buffer = pipeline.TakeFree();
      std::span<uint8_t> chunk(buffer->data(), length);
      auto verified = ReadVerifiedChunk(source, p, i, chunk, hasher);
      if (!verified) {
        pipeline.GiveFree(buffer);
        return verified;
      }
      pipeline.Push({i, buffer, length});
      stats.written[i] = true;
      stats.chunks_written++;
      stats.bytes_written += length;
      if (options.on_progress) options.on_progress(length);
      if (options.after_chunk) options.after_chunk(i);
    }
    return {};
  };
  // Consumer: the writes.
  auto consume = [&](const ChunkPipeline::Item& item) -> Result<void> {
    auto lock = lock_device();
    TRY_CTX(slot.WriteAt(item.index * p.chunk_size,
                         std::span<const uint8_t>(item.buffer->data(), item.length)),
            fmt::format("writing {}", ChunkName(p, item.index)));
    return {};
  };
  TRY(RunPipeline(pipeline, produce, consume));
  return stats;
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
