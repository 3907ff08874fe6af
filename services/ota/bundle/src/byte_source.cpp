#include "services/ota/bundle/byte_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

namespace ralph::ota {

Result<std::unique_ptr<FileSource>> FileSource::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Error::FromErrno(fmt::format("stat {}", path), errno);
  if (!S_ISREG(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} is not a regular file", path));
  }
  // The writer reads each byte once, front to back.
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::unique_ptr<FileSource>(
      new FileSource(std::move(fd), path, static_cast<uint64_t>(st.st_size)));
}

Result<void> FileSource::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  if (offset > size_ || out.size() > size_ - offset) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("reading {} bytes at {} from {}: past its end ({} bytes)",
                                   out.size(), offset, path_, size_));
  }
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        ::pread(fd_.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno(fmt::format("read {} at {}", path_, offset + done), errno);
    }
    if (n == 0) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("{} shrank while reading (end at {})", path_, offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace ralph::ota
