#include "services/ota/writer.h"

#include <algorithm>
#include <cstring>

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

}  // namespace

Result<WriteStats> WritePayload(ByteSourceInterface& source, const Payload& p,
                                BlockDeviceInterface& slot, const WriteOptions& options) {
  if (p.size > slot.size()) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("{} payload is {} bytes, larger than the slot ({} bytes)",
                                   p.name, p.size, slot.size()));
  }
  WriteStats stats;
  // Two chunk buffers, whatever the image size: memory stays bounded.
  std::vector<uint8_t> incoming(p.chunk_size);
  std::vector<uint8_t> existing(p.chunk_size);
  Sha256 hasher = TRY(Sha256::Create());
  for (uint64_t i = 0; i < p.ChunkCount(); ++i) {
    TRY(CheckCancel(options));
    uint64_t offset = i * p.chunk_size;
    size_t length = static_cast<size_t>(p.ChunkLength(i));
    if (options.mode == WriteOptions::Mode::kAdaptive) {
      std::span<uint8_t> current(existing.data(), length);
      TRY_CTX(slot.ReadAt(offset, current), fmt::format("reading the slot's {}", ChunkName(p, i)));
      TRY(hasher.Reset());
      TRY(hasher.Update(current));
      if (TRY(hasher.Finish()) == p.chunks[i]) {
        stats.chunks_skipped++;
        stats.bytes_skipped += length;
        if (options.on_progress) options.on_progress(length);
        if (options.after_chunk) options.after_chunk(i);
        continue;
      }
    }
    std::span<uint8_t> chunk(incoming.data(), length);
    TRY(ReadVerifiedChunk(source, p, i, chunk, hasher));
    TRY_CTX(slot.WriteAt(offset, chunk), fmt::format("writing {}", ChunkName(p, i)));
    stats.chunks_written++;
    stats.bytes_written += length;
    if (options.on_progress) options.on_progress(length);
    if (options.after_chunk) options.after_chunk(i);
  }
  return stats;
}

Result<void> VerifySlot(BlockDeviceInterface& slot, const Payload& p, const WriteOptions& options) {
  if (p.size > slot.size()) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("{} payload is larger than the slot", p.name));
  }
  std::vector<uint8_t> buffer(p.chunk_size);
  Sha256 chunk = TRY(Sha256::Create());
  Sha256 whole = TRY(Sha256::Create());
  for (uint64_t i = 0; i < p.ChunkCount(); ++i) {
    TRY(CheckCancel(options));
    std::span<uint8_t> data(buffer.data(), static_cast<size_t>(p.ChunkLength(i)));
    TRY_CTX(slot.ReadAt(i * p.chunk_size, data), fmt::format("re-reading {}", ChunkName(p, i)));
    TRY(chunk.Reset());
    TRY(chunk.Update(data));
    TRY(whole.Update(data));
    if (TRY(chunk.Finish()) != p.chunks[i]) {
      return Error::Make(ErrorCode::kVerificationFailed,
                         fmt::format("re-reading {}: the slot holds other bytes than were written",
                                     ChunkName(p, i)));
    }
    if (options.on_progress) options.on_progress(data.size());
  }
  if (TRY(whole.Finish()) != p.sha256) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("{}: whole-payload digest mismatch after writing", p.name));
  }
  return {};
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
