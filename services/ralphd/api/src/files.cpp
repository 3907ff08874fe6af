#include "files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::ralphd::api {

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
