// The slot as the installer writes it: drivers' BlockDevice, plus a
// zero-copy path for the aligned I/O the writer does.
//
// BlockDevice moves O_DIRECT I/O through a 1 MiB bounce buffer, so every
// request is at most 1 MiB and costs a memcpy. The writer's chunk buffers
// are page-aligned and its I/O starts on chunk boundaries, so SlotDevice
// reads and writes them in place, one request per call, and hands
// everything else (a short last chunk, unaligned buffers, devices without
// O_DIRECT) to the BlockDevice it wraps.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "drivers/block_device.h"
#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::ota {

class SlotDevice final : public BlockDeviceInterface {
 public:
  // [offset, offset + length) of `path`, as BlockDevice::OpenRange; the
  // whole of `path` when length is UINT64_MAX. The errors of
  // BlockDevice::OpenRange.
  static Result<std::unique_ptr<SlotDevice>> Open(const std::string& path, uint64_t offset,
                                                  uint64_t length);

  uint64_t size() const override { return inner_->size(); }
  Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Result<void> Flush() override { return inner_->Flush(); }
  Result<void> Discard(uint64_t offset, uint64_t length) override {
    return inner_->Discard(offset, length);
  }

 private:
  SlotDevice(std::unique_ptr<BlockDevice> inner, UniqueFd direct, uint64_t base)
      : inner_(std::move(inner)), direct_(std::move(direct)), base_(base) {}
  bool Aligned(uint64_t offset, const void* data, size_t length) const;

  std::unique_ptr<BlockDevice> inner_;
  UniqueFd direct_;  // O_DIRECT, or empty when the inner device is buffered
  uint64_t base_ = 0;
};

}  // namespace ralph::ota
