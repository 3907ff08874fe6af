#include "files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::ralphd::api {

Result<void> WriteNewFileDurably(const std::string& path, std::string_view content, mode_t mode) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return Error::FromErrno(fmt::format("create {}", path), errno);
  if (::fchmod(fd.get(), mode) != 0) return Error::FromErrno(fmt::format("chmod {}", path), errno);
  while (!content.empty()) {
    ssize_t n = ::write(fd.get(), content.data(), content.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("write {}", path), errno);
    content.remove_prefix(static_cast<size_t>(n));
  }
  if (::fsync(fd.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", path), errno);
  return {};
}

Result<void> FsyncDirectory(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  if (::fsync(fd.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", path), errno);
  return {};
}

Result<void> MakeDirectories(const std::string& path, mode_t mode) {
  if (path.empty()) return {};
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} is not a directory", path));
    }
    return {};
  }
  size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) TRY(MakeDirectories(path.substr(0, slash), mode));
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", path), errno);
  }
  return {};
}

}  // namespace ralph::ralphd::api
