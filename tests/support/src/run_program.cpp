#include "tests/support/run_program.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <string_view>

#include "platform/unique_fd.h"
#include "tests/support/wait_for.h"

namespace ralph::testing {
namespace {

// Waits for `pid`; the exit status as ProgramRun::exit has it, or -1.
int Reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

std::string ReadAll(int fd) {
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

std::vector<char*> CArgs(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  // execvp does not write through argv; the const_cast is for its C type.
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  return args;
}

}  // namespace

ProgramRun RunProgram(const std::vector<std::string>& argv) {
  if (argv.empty()) return {-1, "RunProgram: empty argv"};
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {-1, std::string("pipe2: ") + std::strerror(errno)};
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  std::vector<char*> args = CArgs(argv);
  pid_t pid = ::fork();
  if (pid < 0) return {-1, std::string("fork: ") + std::strerror(errno)};
  if (pid == 0) {
    ::dup2(write_end.get(), STDOUT_FILENO);
    ::dup2(write_end.get(), STDERR_FILENO);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  write_end.reset();
  std::string output = ReadAll(read_end.get());
  int exit = Reap(pid);
  if (exit < 0) return {-1, output + "\nwaitpid: " + std::strerror(errno)};
  return {exit, output};
}

ProgramStreams RunProgramStreams(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env) {
  if (argv.empty()) return {-1, "", "RunProgramStreams: empty argv"};
  // Memory files rather than pipes: the child can fill both without a
  // reader, and nothing lands on disk.
  UniqueFd out(::memfd_create("program-stdout", MFD_CLOEXEC));
  UniqueFd err(::memfd_create("program-stderr", MFD_CLOEXEC));
  if (!out || !err) return {-1, "", std::string("memfd_create: ") + std::strerror(errno)};
  // The environment is built before fork: the child of a threaded test
  // may only make async-signal-safe calls.
  std::vector<std::string> environment;
  for (char** entry = environ; *entry; ++entry) {
    std::string_view name(*entry);
    name = name.substr(0, name.find('='));
    bool changed = false;
    for (const std::string& change : env) {
      changed = changed || change.substr(0, change.find('=')) == name;
    }
    if (!changed) environment.emplace_back(*entry);
  }
  for (const std::string& change : env) {
    if (change.find('=') != std::string::npos) environment.push_back(change);
  }
  std::vector<char*> args = CArgs(argv);
  std::vector<char*> envp = CArgs(environment);
  pid_t pid = ::fork();
  if (pid < 0) return {-1, "", std::string("fork: ") + std::strerror(errno)};
  if (pid == 0) {
    ::dup2(out.get(), STDOUT_FILENO);
    ::dup2(err.get(), STDERR_FILENO);
    ::execvpe(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  int exit = Reap(pid);
  if (exit < 0) return {-1, "", std::string("waitpid: ") + std::strerror(errno)};
  ::lseek(out.get(), 0, SEEK_SET);
  ::lseek(err.get(), 0, SEEK_SET);
  return {exit, ReadAll(out.get()), ReadAll(err.get())};
}

pid_t StartProgram(const std::vector<std::string>& argv) {
  std::vector<char*> args = CArgs(argv);
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  ::dup2(null, STDIN_FILENO);
  ::dup2(null, STDOUT_FILENO);
  ::execv(args[0], args.data());
  ::_exit(127);
}

bool SocketAccepts(const std::string& path) {
  sockaddr_un address{.sun_family = AF_UNIX, .sun_path = {}};
  if (path.size() >= sizeof address.sun_path) return false;
  path.copy(address.sun_path, path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  return fd && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
}

pid_t StartServing(const std::vector<std::string>& argv, const std::string& socket,
                   std::string* why) {
  // A socket file left by a killed daemon may still accept a connection for
  // a moment (a child of the dead daemon may hold its listener until it
  // dies too): only a socket the new daemon made counts.
  ::unlink(socket.c_str());
  pid_t pid = StartProgram(argv);
  if (pid <= 0) {
    *why = "cannot start " + argv.front();
    return -1;
  }
  int status = 0;
  bool exited = false;
  bool served = WaitFor([&] {
    exited = ::waitpid(pid, &status, WNOHANG) == pid;
    return exited || SocketAccepts(socket);
  });
  if (served && !exited) return pid;
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    *why = argv.front() + " never served " + socket;
  } else {
    *why = argv.front() + " exited before serving " + socket +
           (WIFEXITED(status) ? ", status " + std::to_string(WEXITSTATUS(status))
                              : ", signal " + std::to_string(WTERMSIG(status)));
  }
  return -1;
}

}  // namespace ralph::testing
