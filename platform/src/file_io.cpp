#include "platform/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph {

Result<std::string> ReadWholeFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  std::string out;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", path), errno);
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

Result<void> WriteAll(int fd, std::span<const uint8_t> data, std::string_view what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("write {}", what), errno);
    data = data.subspan(static_cast<size_t>(n));
  }
  return {};
}

Result<void> WriteWholeFile(const std::string& path, std::string_view content, mode_t mode) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return Error::FromErrno(fmt::format("create {}", path), errno);
  TRY(WriteAll(fd.get(), content, path));
  // The file gets exactly `mode` whatever the umask (image builds must be
  // reproducible) and also when it existed before.
  if (::fchmod(fd.get(), mode) != 0) return Error::FromErrno(fmt::format("chmod {}", path), errno);
  return {};
}

Result<AtomicFile> AtomicFile::Create(const std::string& path, mode_t mode) {
  static std::atomic<uint64_t> counter{0};
  std::string temp_path = fmt::format("{}.{}-{}.tmp", path, ::getpid(), counter++);
  UniqueFd fd(::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return Error::FromErrno(fmt::format("create {}", temp_path), errno);
  // Exactly `mode` whatever the umask, as WriteWholeFile.
  if (::fchmod(fd.get(), mode) != 0) {
    int err = errno;
    ::unlink(temp_path.c_str());
    return Error::FromErrno(fmt::format("chmod {}", temp_path), err);
  }
  return AtomicFile(path, std::move(temp_path), std::move(fd));
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::move(other.fd_)) {
  other.temp_path_.clear();
}

AtomicFile::~AtomicFile() {
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

Result<void> AtomicFile::Commit(Durability durability) {
  if (temp_path_.empty()) {
    return Error::Make(ErrorCode::kInvalidState, fmt::format("{}: already committed", path_));
  }
  if (durability != Durability::kNone && ::fsync(fd_.get()) != 0) {
    return Error::FromErrno(fmt::format("fsync {}", temp_path_), errno);
  }
  fd_.reset();
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return Error::FromErrno(fmt::format("rename {} to {}", temp_path_, path_), errno);
  }
  temp_path_.clear();
  if (durability == Durability::kFileAndDirectorySynced) {
    size_t slash = path_.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path_.substr(0, slash);
    UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd) return Error::FromErrno(fmt::format("open {}", dir), errno);
    if (::fsync(dir_fd.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", dir), errno);
  }
  return {};
}

Result<void> WriteFileAtomically(const std::string& path, std::string_view content, mode_t mode,
                                 Durability durability) {
  AtomicFile file = TRY(AtomicFile::Create(path, mode));
  TRY(WriteAll(file.fd(), content, file.temp_path()));
  return file.Commit(durability);
}

}  // namespace ralph
