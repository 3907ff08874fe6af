#include "drivers/block_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace ralph {
namespace {

// Bounce buffer for O_DIRECT: big enough to stream efficiently, small
// enough not to matter.
constexpr size_t kBounceSize = 1024 * 1024;
// For files, O_DIRECT needs the underlying device's logical block size
// (fs/direct-io.c, iomap_dio_rw). 4096 is a multiple of every logical block
// size in use, so it is always correct without asking the file system.
constexpr uint32_t kFileDirectAlignment = 4096;
constexpr size_t kHashChunk = 1024 * 1024;

uint64_t AlignDown(uint64_t value, uint64_t alignment) {
  return value / alignment * alignment;
}
uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

int OpenRetrying(const std::string& path, int flags) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

}  // namespace

void BlockDevice::AlignedFree::operator()(uint8_t* p) const {
  std::free(p);
}

Result<std::unique_ptr<BlockDevice>> BlockDevice::Open(const std::string& path, IoMode mode) {
  return OpenRange(path, 0, UINT64_MAX, mode);
}

Result<std::unique_ptr<BlockDevice>> BlockDevice::OpenRange(const std::string& path,
                                                            uint64_t offset, uint64_t length,
                                                            IoMode mode) {
  bool whole = offset == 0 && length == UINT64_MAX;
  struct stat st;
  if (::stat(path.c_str(), &st) < 0)
    return Error::FromErrno(fmt::format("opening {}", path), errno);
  bool is_block = S_ISBLK(st.st_mode);
  if (!is_block && !S_ISREG(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("opening {}: not a block device or regular file", path));
  }

  std::unique_ptr<BlockDevice> device(new BlockDevice());
  device->path_ = path;
  device->is_block_ = is_block;
  device->mode_ = mode;

  int base_flags = O_RDWR | O_CLOEXEC;
  int fd = -1;
  bool direct = false;
  if (mode != IoMode::kBuffered) {
    fd = OpenRetrying(path, base_flags | O_DIRECT);
    if (fd >= 0) {
      direct = true;
    } else if (errno != EINVAL) {
      return Error::FromErrno(fmt::format("opening {}", path), errno);
    } else if (mode == IoMode::kDirect) {
      return Error::FromErrno(ErrorCode::kUnsupported,
                              fmt::format("opening {} with O_DIRECT", path), errno);
    }
  }
  if (fd < 0) {
    fd = OpenRetrying(path, base_flags);
    if (fd < 0) return Error::FromErrno(fmt::format("opening {}", path), errno);
  }
  device->fd_.reset(fd);

  uint64_t total = 0;
  if (is_block) {
    if (::ioctl(fd, BLKGETSIZE64, &total) < 0) {
      return Error::FromErrno(fmt::format("BLKGETSIZE64 {}", path), errno);
    }
    int logical = 0;
    if (::ioctl(fd, BLKSSZGET, &logical) < 0) {
      return Error::FromErrno(fmt::format("BLKSSZGET {}", path), errno);
    }
    device->alignment_ = static_cast<uint32_t>(std::max(logical, 512));
  } else {
    total = static_cast<uint64_t>(st.st_size);
    device->alignment_ = kFileDirectAlignment;
  }
  if (whole) length = total;
  if (offset > total || length > total - offset) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("opening {}: range [{}, +{}) lies outside its {} bytes", path,
                                   offset, length, total));
  }
  device->base_ = offset;
  device->length_ = length;

  // O_DIRECT through the bounce buffer needs the range itself aligned, so an
  // aligned block never reaches outside it (or past the end of a file).
  if (direct && (offset % device->alignment_ != 0 || (offset + length) % device->alignment_ != 0)) {
    if (mode == IoMode::kDirect) {
      return Error::Make(ErrorCode::kUnsupported,
                         fmt::format("{}: range [{}, +{}) is not aligned to {} bytes for O_DIRECT",
                                     path, offset, length, device->alignment_));
    }
    TRY(device->SwitchToBuffered());
    direct = false;
  }
  device->direct_ = direct;
  if (direct) {
    void* memory = std::aligned_alloc(std::max<size_t>(device->alignment_, 4096), kBounceSize);
    if (!memory) return Error::Make(ErrorCode::kInternal, "allocating the O_DIRECT bounce buffer");
    device->bounce_.reset(static_cast<uint8_t*>(memory));
    device->bounce_size_ = kBounceSize;
  }
  return device;
}

Result<void> BlockDevice::SwitchToBuffered() {
  int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd_.get(), F_SETFL, flags & ~O_DIRECT) < 0) {
    return Error::FromErrno(fmt::format("clearing O_DIRECT on {}", path_), errno);
  }
  direct_ = false;
  return {};
}

std::string BlockDevice::Where(uint64_t offset) const {
  if (base_ == 0) return fmt::format("{} at offset {}", path_, offset);
  return fmt::format("{} at offset {} (range base {})", path_, offset, base_);
}

Result<void> BlockDevice::CheckRange(uint64_t offset, uint64_t length,
                                     std::string_view what) const {
  if (offset > length_ || length > length_ - offset) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} {} bytes at offset {} of {}: outside its {} bytes", what,
                                   length, offset, path_, length_));
  }
  return {};
}

Result<void> BlockDevice::PwriteAll(uint64_t absolute, std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_.get(), data.data() + done, data.size() - done,
                         static_cast<off_t>(absolute + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno(fmt::format("writing {}", Where(absolute + done - base_)), errno);
    }
    if (n == 0) {
      return Error::FromErrno(ErrorCode::kNoSpace,
                              fmt::format("writing {}", Where(absolute + done - base_)), ENOSPC);
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> BlockDevice::PreadAll(uint64_t absolute, std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd_.get(), out.data() + done, out.size() - done,
                        static_cast<off_t>(absolute + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno(fmt::format("reading {}", Where(absolute + done - base_)), errno);
    }
    if (n == 0) {
      return Error::Make(ErrorCode::kIo, fmt::format("reading {}: unexpected end of file",
                                                     Where(absolute + done - base_)));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<void> BlockDevice::DirectWrite(uint64_t absolute, std::span<const uint8_t> data) {
  uint64_t position = absolute;
  uint64_t end = absolute + data.size();
  uint8_t* bounce = bounce_.get();
  while (position < end) {
    uint64_t chunk_start = AlignDown(position, alignment_);
    uint64_t chunk_end = std::min<uint64_t>(end, chunk_start + bounce_size_);
    uint64_t aligned_end = AlignUp(chunk_end, alignment_);
    size_t span = static_cast<size_t>(aligned_end - chunk_start);
    if (position != chunk_start || chunk_end != aligned_end) {
      // Unaligned edge: read the blocks around it, patch, write them back.
      TRY(DirectRead(chunk_start, std::span<uint8_t>(bounce, span)));
    }
    std::memcpy(bounce + (position - chunk_start), data.data() + (position - absolute),
                static_cast<size_t>(chunk_end - position));
    TRY(PwriteAll(chunk_start, std::span<const uint8_t>(bounce, span)));
    position = chunk_end;
  }
  return {};
}

// Reads [absolute, absolute + out.size()) through the bounce buffer.
Result<void> BlockDevice::DirectRead(uint64_t absolute, std::span<uint8_t> out) {
  if (out.data() == bounce_.get()) {
    // Called from DirectWrite with the bounce buffer itself, already aligned.
    return PreadAll(absolute, out);
  }
  uint64_t position = absolute;
  uint64_t end = absolute + out.size();
  uint8_t* bounce = bounce_.get();
  while (position < end) {
    uint64_t chunk_start = AlignDown(position, alignment_);
    uint64_t chunk_end = std::min<uint64_t>(end, chunk_start + bounce_size_);
    uint64_t aligned_end = AlignUp(chunk_end, alignment_);
    TRY(PreadAll(chunk_start,
                 std::span<uint8_t>(bounce, static_cast<size_t>(aligned_end - chunk_start))));
    std::memcpy(out.data() + (position - absolute), bounce + (position - chunk_start),
                static_cast<size_t>(chunk_end - position));
    position = chunk_end;
  }
  return {};
}

Result<void> BlockDevice::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  TRY(CheckRange(offset, data.size(), "writing"));
  if (data.empty()) return {};
  uint64_t absolute = base_ + offset;
  if (direct_) {
    auto written = DirectWrite(absolute, data);
    // Some file systems accept O_DIRECT at open() and refuse it per I/O
    // (EINVAL); writes are idempotent, so redo this one buffered.
    if (written || written.error().sys_errno() != EINVAL || mode_ == IoMode::kDirect) {
      return written;
    }
    TRY(SwitchToBuffered());
  }
  return PwriteAll(absolute, data);
}

Result<void> BlockDevice::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  TRY(CheckRange(offset, out.size(), "reading"));
  if (out.empty()) return {};
  uint64_t absolute = base_ + offset;
  if (direct_) {
    auto read = DirectRead(absolute, out);
    if (read || read.error().sys_errno() != EINVAL || mode_ == IoMode::kDirect) return read;
    TRY(SwitchToBuffered());
  }
  // Drop clean cached pages so a verification read after Flush() reaches the
  // media rather than the page cache (dirty pages stay: flush first).
  if (int rc = ::posix_fadvise(fd_.get(), static_cast<off_t>(absolute),
                               static_cast<off_t>(out.size()), POSIX_FADV_DONTNEED);
      rc != 0) {
    return Error::FromErrno(fmt::format("dropping the cached pages of {}", path_), rc);
  }
  return PreadAll(absolute, out);
}

Result<void> BlockDevice::Flush() {
  int rc;
  do {
    rc = direct_ ? ::fdatasync(fd_.get()) : ::fsync(fd_.get());
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return Error::FromErrno(fmt::format("flushing {}", path_), errno);
  return {};
}

Result<void> BlockDevice::Discard(uint64_t offset, uint64_t length) {
  TRY(CheckRange(offset, length, "discarding"));
  if (length == 0) return {};
  uint64_t absolute = base_ + offset;
  if (is_block_) {
    if (absolute % alignment_ != 0 || length % alignment_ != 0) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("discarding {} bytes at {}: not aligned to {} bytes", length,
                                     Where(offset), alignment_));
    }
    uint64_t range[2] = {absolute, length};
    if (::ioctl(fd_.get(), BLKDISCARD, range) < 0) {
      int err = errno;
      if (err == EOPNOTSUPP) {
        return Error::FromErrno(ErrorCode::kUnsupported, fmt::format("BLKDISCARD {}", path_), err);
      }
      return Error::FromErrno(fmt::format("BLKDISCARD {}", Where(offset)), err);
    }
    return {};
  }
  if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(absolute), static_cast<off_t>(length)) < 0) {
    int err = errno;
    if (err == EOPNOTSUPP) {
      return Error::FromErrno(ErrorCode::kUnsupported, fmt::format("punching a hole in {}", path_),
                              err);
    }
    return Error::FromErrno(fmt::format("punching a hole in {}", Where(offset)), err);
  }
  return {};
}

Result<Sha256Digest> HashRange(BlockDeviceInterface& device, uint64_t offset, uint64_t length) {
  Sha256 hasher = TRY(Sha256::Create());
  std::vector<uint8_t> buffer(static_cast<size_t>(std::min<uint64_t>(length, kHashChunk)));
  uint64_t done = 0;
  while (done < length) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(length - done, buffer.size()));
    std::span<uint8_t> chunk(buffer.data(), n);
    TRY(device.ReadAt(offset + done, chunk));
    TRY(hasher.Update(chunk));
    done += n;
  }
  return hasher.Finish();
}

Result<void> VerifyRange(BlockDeviceInterface& device, uint64_t offset, uint64_t length,
                         const Sha256Digest& expected) {
  Sha256Digest actual = TRY_CTX(HashRange(device, offset, length),
                                fmt::format("verifying {} bytes at offset {}", length, offset));
  if (actual != expected) {
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("verifying {} bytes at offset {}: digest mismatch: expected "
                                   "{}, read {}",
                                   length, offset, DigestToHex(expected), DigestToHex(actual)));
  }
  return {};
}

}  // namespace ralph
