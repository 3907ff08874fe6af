// Block I/O behind a small interface, with a fake: the OTA slot writer,
// recovery's reflash and the image builder write slots through
// BlockDeviceInterface; tests use FakeBlockDevice
// (drivers/testing/fake_block_device.h), which injects EIO, short/torn
// writes, ENOSPC, silent corruption and power cuts.
//
// BlockDevice is the real one: a whole partition device (/dev/vda3,
// /dev/loop3p2) or a byte range of an image file or disk (a slot inside an
// appliance image: PartitionInfo::offset_bytes()/size_bytes()).
//   - Writes use O_DIRECT through an aligned bounce buffer when the file
//     system/device supports it (no page-cache pollution, errors reported at
//     write time), with read-modify-write for unaligned edges; otherwise
//     buffered writes. Flush() is fdatasync() (fsync() in buffered mode).
//   - Reads in buffered mode drop the clean cached pages of the range first
//     (posix_fadvise DONTNEED), so a read after Flush() comes from the media.
//   - Discard() is BLKDISCARD on a block device, a punched hole in a file.
//   - EINTR is retried; short reads/writes are continued.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "platform/result.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"

namespace ralph {

class BlockDeviceInterface {
 public:
  virtual ~BlockDeviceInterface() = default;

  // Size of the device/range in bytes.
  virtual uint64_t size() const = 0;
  // Reads exactly out.size() bytes at `offset` (relative to the range).
  // kInvalidArgument when the range lies outside [0, size()); kIo otherwise.
  virtual Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) = 0;
  // Writes all of `data` at `offset`. kInvalidArgument outside [0, size()),
  // kNoSpace on ENOSPC, kIo otherwise (a failed write may have written part).
  virtual Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) = 0;
  // Makes everything written so far durable (fdatasync/fsync).
  virtual Result<void> Flush() = 0;
  // Tells the device the range is unused (its content becomes undefined).
  // kUnsupported when the device cannot.
  virtual Result<void> Discard(uint64_t offset, uint64_t length) = 0;
};

// SHA-256 of [offset, offset + length), read through ReadAt in chunks.
Result<Sha256Digest> HashRange(BlockDeviceInterface& device, uint64_t offset, uint64_t length);
// Re-reads the range and compares its SHA-256: kVerificationFailed naming
// both digests ("digest mismatch: expected ab12..., read cd34...").
Result<void> VerifyRange(BlockDeviceInterface& device, uint64_t offset, uint64_t length,
                         const Sha256Digest& expected);

enum class IoMode {
  kAuto,      // O_DIRECT when supported, else buffered
  kDirect,    // O_DIRECT or fail (kUnsupported)
  kBuffered,  // page cache + fsync
};

class BlockDevice final : public BlockDeviceInterface {
 public:
  // A whole device or file: a partition device (/dev/loop3p2), a disk, or an
  // image file. kNotFound when absent.
  static Result<std::unique_ptr<BlockDevice>> Open(const std::string& path,
                                                   IoMode mode = IoMode::kAuto);
  // The byte range [offset, offset + length) of `path`. kInvalidArgument when
  // the range does not lie inside it.
  static Result<std::unique_ptr<BlockDevice>> OpenRange(const std::string& path, uint64_t offset,
                                                        uint64_t length,
                                                        IoMode mode = IoMode::kAuto);

  uint64_t size() const override { return length_; }
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Result<void> Flush() override;
  Result<void> Discard(uint64_t offset, uint64_t length) override;

  const std::string& path() const { return path_; }
  bool is_block_device() const { return is_block_; }
  // True when I/O goes through O_DIRECT.
  bool direct_io() const { return direct_; }
  // The alignment O_DIRECT needs here (logical block size, at least 512).
  uint32_t alignment() const { return alignment_; }

 private:
  struct AlignedFree {
    void operator()(uint8_t* p) const;
  };
  BlockDevice() = default;

  Result<void> DirectWrite(uint64_t absolute, std::span<const uint8_t> data);
  Result<void> DirectRead(uint64_t absolute, std::span<uint8_t> out);
  Result<void> PwriteAll(uint64_t absolute, std::span<const uint8_t> data);
  Result<void> PreadAll(uint64_t absolute, std::span<uint8_t> out);
  Result<void> SwitchToBuffered();
  Result<void> CheckRange(uint64_t offset, uint64_t length, std::string_view what) const;
  std::string Where(uint64_t offset) const;

  std::string path_;
  UniqueFd fd_;
  uint64_t base_ = 0;
  uint64_t length_ = 0;
  bool is_block_ = false;
  bool direct_ = false;
  IoMode mode_ = IoMode::kAuto;
  uint32_t alignment_ = 512;
  std::unique_ptr<uint8_t, AlignedFree> bounce_;
  size_t bounce_size_ = 0;
};

}  // namespace ralph
