#include "services/init/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include "platform/unique_fd.h"

namespace ralph::init {

Result<std::string> ReadTextFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  std::string out;
  char buffer[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", path), errno);
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

Result<void> WriteTextFile(const std::string& path, std::string_view content) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return Error::FromErrno(fmt::format("create {}", path), errno);
  while (!content.empty()) {
    ssize_t n = ::write(fd.get(), content.data(), content.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("write {}", path), errno);
    content.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

}  // namespace ralph::init
