#include "platform/testing/efivar_directory.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "platform/unique_fd.h"

namespace ralph::testing {
namespace {

// Set in the child so it knows the directory is already made.
constexpr const char* kChildMarker = "RALPH_TEST_EFIVAR_DIRECTORY";

}  // namespace

void RemoveEfivarDirectory(const std::string& dir) {
  std::error_code ignored;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir, ignored)) {
    UniqueFd fd(::open(entry.path().c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    int flags = 0;
    if (!fd || ::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) < 0) continue;
    if ((flags & FS_IMMUTABLE_FL) == 0) continue;
    flags &= ~FS_IMMUTABLE_FL;
    ::ioctl(fd.get(), FS_IOC_SETFLAGS, &flags);
  }
  std::filesystem::remove_all(dir, ignored);
}

int RunWithEfivarDirectory(char** argv, const std::string& prefix,
                           const std::function<int()>& tests) {
  if (std::getenv(kChildMarker)) return tests();
  std::string dir = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (!::mkdtemp(dir.data())) {
    std::perror(("mkdtemp " + dir).c_str());
    return 1;
  }
  ::setenv("EFIVARFS_PATH", (dir + "/").c_str(), 1);
  ::setenv(kChildMarker, "1", 1);
  pid_t child = ::fork();
  if (child < 0) {
    std::perror("fork");
    RemoveEfivarDirectory(dir);
    return 1;
  }
  if (child == 0) {
    ::execv("/proc/self/exe", argv);
    std::perror("execv /proc/self/exe");
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  RemoveEfivarDirectory(dir);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  std::fprintf(stderr, "test child died with signal %d\n", WTERMSIG(status));
  return 1;
}

std::string EfivarDirectoryPath() {
  const char* path = std::getenv("EFIVARFS_PATH");
  return path ? path : "";
}

std::vector<uint8_t> ReadRawFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

void WriteRawFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

}  // namespace ralph::testing
