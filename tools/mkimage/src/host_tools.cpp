#include "tools/mkimage/host_tools.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include <fmt/format.h>

#include "platform/unique_fd.h"

extern char** environ;

namespace ralph::mkimage {
namespace {

std::string Tail(const std::string& text, size_t max_chars) {
  std::string trimmed = text;
  while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == ' ')) trimmed.pop_back();
  if (trimmed.size() <= max_chars) return trimmed;
  return "..." + trimmed.substr(trimmed.size() - max_chars);
}

std::string Joined(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& arg : argv) {
    if (!out.empty()) out += ' ';
    out += arg;
  }
  return out;
}

}  // namespace

std::string PackageForTool(const std::string& tool) {
  static const std::map<std::string, std::string> kPackages = {
      {"apt-get", "apt"},          {"apt-cache", "apt"},    {"dpkg-deb", "dpkg"},
      {"depmod", "kmod"},          {"objcopy", "binutils"}, {"mksquashfs", "squashfs-tools"},
      {"mkfs.vfat", "dosfstools"}, {"mmd", "mtools"},       {"mcopy", "mtools"},
      {"mke2fs", "e2fsprogs"},     {"e2fsck", "e2fsprogs"}, {"zstd", "zstd"},
  };
  auto it = kPackages.find(tool);
  return it == kPackages.end() ? std::string() : it->second;
}

Result<std::string> RunTool(const ToolCommand& command) {
  if (command.argv.empty()) return Error::Make(ErrorCode::kInvalidArgument, "empty command");
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return Error::FromErrno("pipe2", errno);
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return Error::FromErrno("pipe2", errno);
  UniqueFd err_read(err_pipe[0]), err_write(err_pipe[1]);
  // An exec failure is reported through this pipe (closed by a successful exec).
  int exec_pipe[2];
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) return Error::FromErrno("pipe2", errno);
  UniqueFd exec_read(exec_pipe[0]), exec_write(exec_pipe[1]);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (const auto& extra : command.extra_env) env_strings.push_back(extra);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = command.argv;
  std::vector<char*> argv;
  for (auto& s : argv_copy) argv.push_back(s.data());
  argv.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) return Error::FromErrno("fork", errno);
  if (pid == 0) {
    ::dup2(out_write.get(), STDOUT_FILENO);
    ::dup2(err_write.get(), STDERR_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    if (!command.cwd.empty() && ::chdir(command.cwd.c_str()) != 0) {
      int err = errno;
      (void)!::write(exec_write.get(), &err, sizeof(err));
      ::_exit(127);
    }
    ::execvpe(argv[0], argv.data(), envp.data());
    int err = errno;
    (void)!::write(exec_write.get(), &err, sizeof(err));
    ::_exit(127);
  }
  out_write.reset();
  err_write.reset();
  exec_write.reset();

  std::string out, err;
  pollfd fds[2] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
  int open_count = 2;
  char buffer[65536];
  while (open_count > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno("poll", errno);
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fds[i].fd = -1;
        --open_count;
        continue;
      }
      (i == 0 ? out : err).append(buffer, static_cast<size_t>(n));
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Error::FromErrno("waitpid", errno);
  }
  int exec_errno = 0;
  if (::read(exec_read.get(), &exec_errno, sizeof(exec_errno)) == sizeof(exec_errno)) {
    std::string package = PackageForTool(command.argv[0]);
    Error error = Error::FromErrno(fmt::format("running {}", command.argv[0]), exec_errno);
    if (exec_errno == ENOENT && !package.empty()) {
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("{} is not installed (Debian package {}; "
                                     "run scripts/setup.sh)",
                                     command.argv[0], package));
    }
    return error;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string how = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                        : fmt::format("killed by signal {}", WTERMSIG(status));
    return Error::Make(ErrorCode::kIo,
                       fmt::format("`{}` failed ({}): {}", Tail(Joined(command.argv), 200), how,
                                   Tail(err.empty() ? out : err, 600)));
  }
  return out;
}

}  // namespace ralph::mkimage
