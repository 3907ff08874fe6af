// The streaming core of the slot writer: one payload from a bundle source to
// a slot, chunk by chunk, with constant memory (two chunk-sized buffers).
//
// For each chunk i of the payload:
//   1. adaptive: read chunk i of the target and hash it; if it equals the
//      manifest's digest the slot already holds it: skip (the source is not
//      read, so an HTTPS install downloads only changed chunks). After 32
//      misses in a row only every 16th chunk is probed until one hits, so a
//      target holding an unrelated image costs no extra read pass;
//   2. read chunk i from the source and hash it; a mismatch with the
//      manifest's digest stops everything BEFORE the chunk is written;
//   3. write it (drivers/block_device.h: O_DIRECT, read-modify-write of a
//      short last block).
// The manifest digests are covered by the verified signature, so a chunk that
// reaches the disk is exactly what the signer built.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "drivers/block_device.h"
#include "platform/result.h"
#include "services/ota/manifest.h"
#include "services/ota/source.h"

namespace ralph::ota {

struct WriteStats {
  uint64_t chunks_written = 0;
  uint64_t chunks_skipped = 0;
  uint64_t bytes_written = 0;  // payload bytes written to the slot
  uint64_t bytes_skipped = 0;  // payload bytes the slot already held
  // Per chunk: true when written. A skipped chunk was read back from the
  // slot and matched the manifest during this run, and was not written since.
  std::vector<bool> written;
};

struct WriteOptions {
  enum class Mode { kAdaptive, kFull };
  Mode mode = Mode::kAdaptive;
  // Called after each chunk with the payload bytes it covered, always on the
  // calling thread (the writer overlaps I/O and hashing on a second thread).
  std::function<void(uint64_t bytes)> on_progress;
  // Checked between chunks; set -> kCancelled.
  const std::atomic<bool>* cancel = nullptr;
  // Optional second handle on the same slot for the adaptive probe reads, so
  // they overlap with the writes (one device object is not thread-safe).
  BlockDeviceInterface* probe_device = nullptr;
  // Test hook, called after chunk `index` has been handled (written or
  // skipped). Fault-injection tests kill the process here.
  std::function<void(uint64_t index)> after_chunk;
};

// Writes `payload` (its bytes at payload.offset in `source`) to the start of
// `slot`. kNoSpace when the payload is larger than the slot;
// kVerificationFailed naming the chunk when source bytes do not match the
// manifest ("rootfs chunk 17 (bytes 17825792-18874367): digest mismatch");
// kCancelled; I/O errors with the offset.
Result<WriteStats> WritePayload(ByteSourceInterface& source, const Payload& payload,
                                BlockDeviceInterface& slot, const WriteOptions& options);

// Re-reads the first payload.size bytes of `slot` and checks every chunk
// digest (which together cover the whole payload). With `written` (from
// WriteStats), only the chunks written are re-read: the others were read
// from the slot and matched the manifest during WritePayload, after the slot
// was marked `writing`, and nothing has written them since, so every chunk of
// the slot is still verified from the device exactly once. kVerificationFailed naming the first
// chunk that differs.
Result<void> VerifySlot(BlockDeviceInterface& slot, const Payload& payload,
                        const WriteOptions& options, const std::vector<bool>* written = nullptr);

// Streams `payload` from `source`, verifying each chunk against the manifest,
// into `sink` (used for the UKI, which goes to a file on the ESP).
Result<void> CopyVerifiedPayload(ByteSourceInterface& source, const Payload& payload,
                                 const std::function<Result<void>(std::span<const uint8_t>)>& sink,
                                 const WriteOptions& options);

}  // namespace ralph::ota
