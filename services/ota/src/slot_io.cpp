#include "services/ota/slot_io.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace ralph::ota {

AlignedBuffer::AlignedBuffer(size_t size) : data_(nullptr), size_(size) {
  // aligned_alloc needs size to be a multiple of the alignment.
  size_t rounded = (size + kIoAlignment - 1) / kIoAlignment * kIoAlignment;
  data_ = static_cast<uint8_t*>(std::aligned_alloc(kIoAlignment, rounded ? rounded : kIoAlignment));
  if (!data_) std::abort();  // out of memory: nothing sensible to return without exceptions
}

AlignedBuffer::~AlignedBuffer() {
  std::free(data_);
}

Result<std::unique_ptr<DirectSlotIo>> DirectSlotIo::Open(const std::string& path, uint64_t offset,
                                                         uint64_t size) {
  if (offset % kIoAlignment != 0) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("{}: region offset {} is not {}-aligned", path, offset, kIoAlignment));
  }
  int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  if (fd < 0 && errno == EINVAL) {
    // tmpfs and a few others refuse O_DIRECT; tests may put images there.
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  }
  if (fd < 0) return Error::FromErrno(fmt::format("open {}", path), errno);
  UniqueFd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error::FromErrno(fmt::format("stat {}", path), errno);
  uint64_t total = 0;
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd, BLKGETSIZE64, &total) != 0) {
      return Error::FromErrno(fmt::format("BLKGETSIZE64 {}", path), errno);
    }
  } else if (S_ISREG(st.st_mode)) {
    total = static_cast<uint64_t>(st.st_size);
  } else {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} is neither a block device nor a file", path));
  }
  if (offset > total || size > total - offset) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("{}: region {}+{} runs past its end ({} bytes)", path, offset, size, total));
  }
  return std::unique_ptr<DirectSlotIo>(new DirectSlotIo(std::move(owned), path, offset, size));
}

Result<void> DirectSlotIo::CheckRange(uint64_t offset, size_t length, const void* buffer) const {
  if (offset > size_ || length > size_ - offset) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{}: {} bytes at {} run past the slot's end ({} bytes)", path_,
                                   length, offset, size_));
  }
  if (offset % kIoAlignment != 0 || reinterpret_cast<uintptr_t>(buffer) % kIoAlignment != 0 ||
      (length % kIoAlignment != 0 && offset + length != size_)) {
    return Error::Make(ErrorCode::kInternal,
                       fmt::format("{}: unaligned I/O of {} bytes at {}", path_, length, offset));
  }
  return {};
}

Result<void> DirectSlotIo::ReadAt(uint64_t offset, std::span<uint8_t> data) {
  TRY(CheckRange(offset, data.size(), data.data()));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pread(fd_.get(), data.data() + done, data.size() - done,
                        static_cast<off_t>(offset_ + offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno(fmt::format("read {} at {}", path_, offset + done), errno);
    }
    if (n == 0) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("read {} at {}: unexpected end", path_, offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> DirectSlotIo::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  TRY(CheckRange(offset, data.size(), data.data()));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_.get(), data.data() + done, data.size() - done,
                         static_cast<off_t>(offset_ + offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno(fmt::format("write {} at {}", path_, offset + done), errno);
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> DirectSlotIo::Sync() {
  if (::fsync(fd_.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", path_), errno);
  return {};
}

}  // namespace ralph::ota
