#include "drivers/testing/run_program.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "platform/unique_fd.h"

namespace ralph::testing {

ProgramRun RunProgram(const std::vector<std::string>& argv) {
  if (argv.empty()) return {-1, "RunProgram: empty argv"};
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {-1, std::string("pipe2: ") + std::strerror(errno)};
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return {-1, std::string("fork: ") + std::strerror(errno)};
  if (pid == 0) {
    ::dup2(write_end.get(), STDOUT_FILENO);
    ::dup2(write_end.get(), STDERR_FILENO);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  write_end.reset();
  std::string output;
  char buffer[4096];
  for (ssize_t n; (n = ::read(read_end.get(), buffer, sizeof(buffer))) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    output.append(buffer, static_cast<size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return {-1, output + "\nwaitpid: " + std::strerror(errno)};
  }
  if (WIFSIGNALED(status)) return {128 + WTERMSIG(status), output};
  return {WEXITSTATUS(status), output};
}

}  // namespace ralph::testing
