// Byte access to the target slot for the slot writer: a region of a block
// device or image file, read and written with O_DIRECT in whole, aligned
// blocks, so that the writer's reads of the target see the device and not
// the page cache, and its memory does not grow with the image.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::ota {

// Alignment of offsets, lengths and buffers for SlotIo (O_DIRECT on 4Kn disks).
inline constexpr size_t kIoAlignment = 4096;

class SlotIoInterface {
 public:
  virtual ~SlotIoInterface() = default;
  virtual uint64_t Size() const = 0;
  // `offset`, `data.size()` and `data.data()` must be kIoAlignment-aligned,
  // except that the last block of the region may be cut short by Size().
  virtual Result<void> ReadAt(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) = 0;
  // fsync: everything written is on stable storage.
  virtual Result<void> Sync() = 0;
  virtual std::string Describe() const = 0;
};

// A region [offset, offset + size) of a block device or file, with O_DIRECT.
// Open fails with kInvalidArgument for an unaligned region, kNotFound for a
// missing path; a file system without O_DIRECT support (tmpfs) falls back to
// buffered I/O + fsync, which is only for tests.
class DirectSlotIo final : public SlotIoInterface {
 public:
  static Result<std::unique_ptr<DirectSlotIo>> Open(const std::string& path, uint64_t offset,
                                                    uint64_t size);
  uint64_t Size() const override { return size_; }
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> data) override;
  Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Result<void> Sync() override;
  std::string Describe() const override { return path_; }

 private:
  DirectSlotIo(UniqueFd fd, std::string path, uint64_t offset, uint64_t size)
      : fd_(std::move(fd)), path_(std::move(path)), offset_(offset), size_(size) {}
  Result<void> CheckRange(uint64_t offset, size_t length, const void* buffer) const;
  UniqueFd fd_;
  std::string path_;
  uint64_t offset_;
  uint64_t size_;
};

// An aligned heap buffer for O_DIRECT (free()d on destruction).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size);
  ~AlignedBuffer();
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data() { return data_; }
  size_t size() const { return size_; }
  std::span<uint8_t> span(size_t length) { return {data_, length}; }

 private:
  uint8_t* data_;
  size_t size_;
};

}  // namespace ralph::ota
