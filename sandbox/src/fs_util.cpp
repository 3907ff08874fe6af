#include "fs_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::sandbox {

Result<void> WriteFileString(const std::string& path, const std::string& value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  ssize_t n;
  do {
    n = ::write(fd.get(), value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error::FromErrno(fmt::format("write '{}' to {}", value, path), errno);
  if (static_cast<size_t>(n) != value.size())
    return Error::Make(ErrorCode::kIo, fmt::format("short write of '{}' to {}", value, path));
  return {};
}

Result<std::string> ReadFileString(const std::string& path) {
  return ReadWholeFile(path);
}

bool PathExists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

Result<void> MakeDirs(const std::string& path, unsigned mode) {
  if (path.empty()) return {};
  size_t pos = 1;
  for (;;) {
    pos = path.find('/', pos);
    std::string prefix = pos == std::string::npos ? path : path.substr(0, pos);
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST)
      return Error::FromErrno(fmt::format("mkdir {}", prefix), errno);
    if (pos == std::string::npos) {
      // The leaf gets exactly `mode` even if it existed (or the umask cut it).
      if (::chmod(prefix.c_str(), mode) != 0)
        return Error::FromErrno(fmt::format("chmod {}", prefix), errno);
      break;
    }
    ++pos;
  }
  return {};
}

namespace {

Result<void> RemoveChildren(int dir_fd, const std::string& path, dev_t dev) {
  int dup_fd = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return Error::FromErrno(fmt::format("dup {}", path), errno);
  DIR* dir = ::fdopendir(dup_fd);
  if (dir == nullptr) {
    int err = errno;
    ::close(dup_fd);
    return Error::FromErrno(fmt::format("fdopendir {}", path), err);
  }
  std::unique_ptr<DIR, int (*)(DIR*)> dir_owner(dir, ::closedir);
  while (dirent* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      return Error::FromErrno(fmt::format("stat {}/{}", path, name), errno);
    }
    if (S_ISDIR(st.st_mode)) {
      if (st.st_dev != dev)
        return Error::Make(ErrorCode::kBusy, fmt::format("{}/{} is a mount point", path, name));
      UniqueFd child(
          ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!child) return Error::FromErrno(fmt::format("open {}/{}", path, name), errno);
      TRY(RemoveChildren(child.get(), path + "/" + name, dev));
      if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
        return Error::FromErrno(fmt::format("rmdir {}/{}", path, name), errno);
    } else if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
      return Error::FromErrno(fmt::format("unlink {}/{}", path, name), errno);
    }
  }
  return {};
}

}  // namespace

Result<void> RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return Error::FromErrno(fmt::format("stat {}", path), errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return Error::FromErrno(fmt::format("unlink {}", path), errno);
    return {};
  }
  {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
    TRY(RemoveChildren(fd.get(), path, st.st_dev));
  }
  if (::rmdir(path.c_str()) != 0 && errno != ENOENT)
    return Error::FromErrno(fmt::format("rmdir {}", path), errno);
  return {};
}

uint64_t ProcessStartTime(int pid) {
  auto stat = ReadFileString(fmt::format("/proc/{}/stat", pid));
  if (!stat) return 0;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
  size_t close = stat->rfind(')');
  if (close == std::string::npos) return 0;
  const char* p = stat->c_str() + close + 1;
  // Field 3 (state) comes first after ')'; field 22 is 19 fields later.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p + 1, ' ');
    if (!p) return 0;
  }
  return std::strtoull(p + 1, nullptr, 10);
}

}  // namespace ralph::sandbox
