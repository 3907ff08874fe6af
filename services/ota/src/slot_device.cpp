#include "slot_device.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include <fmt/format.h>

namespace ralph::ota {

Result<std::unique_ptr<SlotDevice>> SlotDevice::Open(const std::string& path, uint64_t offset,
                                                     uint64_t length) {
  std::unique_ptr<BlockDevice> inner = length == UINT64_MAX
                                           ? TRY(BlockDevice::Open(path))
                                           : TRY(BlockDevice::OpenRange(path, offset, length));
  UniqueFd direct;
  if (inner->direct_io()) {
    // BlockDevice decided O_DIRECT works here (and that the range is
    // aligned); a second descriptor on the same file shares its semantics.
    int fd = -1;
    do {
      fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return Error::FromErrno(fmt::format("opening {} with O_DIRECT", path), errno);
    direct.reset(fd);
  }
  uint64_t base = length == UINT64_MAX ? 0 : offset;
  return std::unique_ptr<SlotDevice>(new SlotDevice(std::move(inner), std::move(direct), base));
}

bool SlotDevice::Aligned(uint64_t offset, const void* data, size_t length) const {
  if (!direct_) return false;
  // Page alignment for the memory satisfies every logical block size; the
  // device's own for offsets and lengths.
  uint64_t block = inner_->alignment();
  return reinterpret_cast<uintptr_t>(data) % 4096 == 0 && (base_ + offset) % block == 0 &&
         length % block == 0 && length > 0 && offset <= size() && length <= size() - offset;
}

Result<void> SlotDevice::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  if (!Aligned(offset, out.data(), out.size())) return inner_->ReadAt(offset, out);
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(direct_.get(), out.data() + done, out.size() - done,
                        static_cast<off_t>(base_ + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Error::FromErrno(fmt::format("reading {} at offset {}", inner_->path(), offset + done),
                              errno);
    }
    if (n == 0) {
      return Error::Make(ErrorCode::kIo, fmt::format("reading {} at offset {}: unexpected end",
                                                     inner_->path(), offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> SlotDevice::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  if (!Aligned(offset, data.data(), data.size())) return inner_->WriteAt(offset, data);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(direct_.get(), data.data() + done, data.size() - done,
                         static_cast<off_t>(base_ + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Error::FromErrno(fmt::format("writing {} at offset {}", inner_->path(), offset + done),
                              errno);
    }
    if (n == 0) {
      return Error::FromErrno(ErrorCode::kNoSpace,
                              fmt::format("writing {} at offset {}", inner_->path(), offset + done),
                              ENOSPC);
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace ralph::ota
