#include "drivers/testing/fake_block_device.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace ralph::testing {

Result<void> FakeBlockDevice::CheckRange(uint64_t offset, uint64_t length, const char* what) const {
  if (offset > data_.size() || length > data_.size() - offset) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} {} bytes at offset {} of the fake device: outside its {} "
                                   "bytes",
                                   what, length, offset, data_.size()));
  }
  return {};
}

Result<void> FakeBlockDevice::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  TRY(CheckRange(offset, out.size(), "reading"));
  if (read_fault_ && read_fault_->offset >= offset && read_fault_->offset < offset + out.size()) {
    return Error::FromErrno(
        fmt::format("reading the fake device at offset {}", read_fault_->offset), read_fault_->err);
  }
  std::copy_n(data_.begin() + static_cast<ptrdiff_t>(offset), out.size(), out.begin());
  return {};
}

Result<void> FakeBlockDevice::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  TRY(CheckRange(offset, data.size(), "writing"));
  ++writes_;
  uint64_t lands = data.size();
  int err = 0;
  if (write_fault_ && write_fault_->offset >= offset &&
      write_fault_->offset < offset + data.size()) {
    lands = write_fault_->offset - offset;
    err = write_fault_->err;
  }
  if (short_write_) {
    if (*short_write_ < lands) {
      lands = *short_write_;
      err = EIO;
    }
    short_write_.reset();
  }
  if (capacity_ && offset + lands > *capacity_) {
    lands = *capacity_ > offset ? *capacity_ - offset : 0;
    err = ENOSPC;
  }
  std::copy_n(data.begin(), lands, data_.begin() + static_cast<ptrdiff_t>(offset));
  bytes_written_ += lands;
  if (err != 0) {
    return Error::FromErrno(fmt::format("writing the fake device at offset {}", offset + lands),
                            err);
  }
  return {};
}

Result<void> FakeBlockDevice::Flush() {
  if (flush_errno_ != 0) return Error::FromErrno("flushing the fake device", flush_errno_);
  ++flushes_;
  durable_ = data_;
  return {};
}

Result<void> FakeBlockDevice::Discard(uint64_t offset, uint64_t length) {
  TRY(CheckRange(offset, length, "discarding"));
  if (!discard_supported_) {
    return Error::FromErrno(ErrorCode::kUnsupported, "discarding on the fake device", EOPNOTSUPP);
  }
  ++discards_;
  std::fill_n(data_.begin() + static_cast<ptrdiff_t>(offset), length, 0);
  return {};
}

void FakeBlockDevice::CorruptByte(uint64_t offset) {
  if (offset >= data_.size()) return;
  data_[offset] ^= 0xff;
  durable_[offset] ^= 0xff;
}

void FakeBlockDevice::ClearFaults() {
  write_fault_.reset();
  read_fault_.reset();
  short_write_.reset();
  capacity_.reset();
  flush_errno_ = 0;
  discard_supported_ = true;
}

}  // namespace ralph::testing
