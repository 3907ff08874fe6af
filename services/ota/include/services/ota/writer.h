// The streaming core of the slot writer: one payload from a bundle source to
// a slot, chunk by chunk, with constant memory (a bounded buffer pool; see
// WriteOptions), its stages overlapped on worker threads (InstallPayload).
//
// For each chunk i of the payload:
//   1. adaptive: read chunk i of the target and hash it; if it equals the
//      manifest's digest the slot already holds it: skip (the source is not
//      read, so an HTTPS install downloads only changed chunks). After 32
//      misses in a row only every 16th chunk is probed until one hits, so a
//      target holding an unrelated image costs no extra read pass;
//   2. read chunk i from the source and hash it; a mismatch with the
//      manifest's digest stops everything BEFORE the chunk is written;
//   3. write it (O_DIRECT; drivers/block_device.h does the read-modify-write
//      of a short last block);
//   4. InstallPayload: after a flush that followed the write, read it back
//      and check it against the fingerprint (XXH3-128) of the bytes that
//      matched the manifest in step 2.
// The manifest digests are covered by the verified signature, so a chunk that
// reaches the disk is exactly what the signer built.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "drivers/block_device.h"
#include "platform/result.h"
#include "services/ota/bundle/manifest.h"
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
  // Called with the payload bytes each step covered (InstallPayload: a chunk
  // handled, then the same chunk verified, so 2 x payload.size in all),
  // always on the calling thread (the stages run on worker threads).
  std::function<void(uint64_t bytes)> on_progress;
  // Checked between chunks; set -> kCancelled.
  const std::atomic<bool>* cancel = nullptr;
  // Opens another read-write handle on the same slot. The adaptive probes,
  // the extra writer threads and the re-read verification then each use a
  // handle of their own, overlapping one another (one device object is not
  // thread-safe). Unset: every stage shares `slot`, taking turns. A Flush()
  // through one handle must cover the writes made through all of them, as
  // fdatasync() does for fds on one block device or file.
  std::function<Result<std::unique_ptr<BlockDeviceInterface>>()> open_handle;
  // Threads that read and hash the target's chunks (adaptive).
  unsigned probe_threads = 2;
  // Threads reading chunks from the source (one read at a time, in order)
  // and checking their SHA-256 (in parallel).
  unsigned hash_threads = 2;
  // Threads writing chunks, so that more than one write is in flight.
  unsigned write_threads = 2;
  // Threads re-reading and checking flushed chunks (more than one read in
  // flight).
  unsigned verify_threads = 2;
  // Memory for chunks in flight (read and checked, waiting for their turn,
  // being written); at least 4 chunks. One mapping, in transparent huge
  // pages where the kernel has them. A written chunk's buffer is free again
  // at once (InstallPayload re-reads it against a fingerprint).
  uint64_t buffer_bytes = 32u << 20;
  // InstallPayload flushes the slot on a thread of its own, while the writes
  // go on, back to back: a flush starts once the previous one is done and
  // this many bytes are written and not covered by a flush; then the chunks
  // it covered are re-read. A device that flushes slowly gets fewer, larger
  // flushes.
  uint64_t flush_bytes = 64u << 20;
  // The writers wait while this many bytes are written and not yet covered
  // by a finished flush (at least flush_bytes): bounds the data one flush
  // writes back and how far the re-reads lag behind the writes.
  uint64_t max_unflushed_bytes = 256u << 20;
  // Test hook, called after chunk `index` has been handled (queued for
  // writing or skipped). Fault-injection tests kill the process here.
  std::function<void(uint64_t index)> after_chunk;
  // InstallPayload: called on the calling thread after the last flush,
  // before the last chunks are re-read.
  std::function<void()> after_final_flush;
};

// Writes `payload` (its bytes at payload.offset in `source`) to the start of
// `slot`. kNoSpace when the payload is larger than the slot;
// kVerificationFailed naming the chunk when source bytes do not match the
// manifest ("rootfs chunk 17 (bytes 17825792-18874367): digest mismatch");
// kCancelled; I/O errors with the offset.
Result<WriteStats> WritePayload(ByteSourceInterface& source, const Payload& payload,
                                BlockDeviceInterface& slot, const WriteOptions& options);

// The whole data path of an install: WritePayload, flush and the re-read
// verification, overlapped. Chunks flow through a bounded pool of buffers
// (options.buffer_bytes) between stages on their own threads:
//   probe (adaptive): read + hash the target's chunk, skip it if it matches
//   source: read the chunk from the source (in order, one read at a time),
//     check its manifest digest (hash_threads in parallel); the calling
//     thread queues the chunks in order, so none is written before every
//     chunk ahead of it was checked
//   write: O_DIRECT write
//   flush: back to back, once options.flush_bytes more are written, Flush()
//   verify: once a flush has covered the chunk, read it back from the slot
//     and check its XXH3-128 against the fingerprint taken from the buffer
//     right after its SHA-256 matched the signed manifest (the buffer was
//     reused as soon as the chunk was written; see writer.cpp for why a
//     fingerprint is enough).
// On success every chunk of the payload has been read from the slot during
// this call and matched the manifest: a skipped chunk when probed, a written
// one after a flush that followed its write. The errors of WritePayload and
// VerifySlot; the first error stops every stage.
Result<WriteStats> InstallPayload(ByteSourceInterface& source, const Payload& payload,
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
