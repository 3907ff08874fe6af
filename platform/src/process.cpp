#include "platform/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "platform/unique_fd.h"

extern char** environ;

namespace ralph {
namespace {

constexpr size_t kMaxStderr = 64 << 10;

std::string Joined(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& arg : argv) {
    if (!out.empty()) out += ' ';
    out += arg;
  }
  return out;
}

std::string Tail(std::string_view text, size_t max_chars) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.size() <= max_chars) return std::string(text);
  return "..." + std::string(text.substr(text.size() - max_chars));
}

// posix_spawn's attributes and file actions, released on every path.
class SpawnSetup {
 public:
  SpawnSetup() {
    posix_spawnattr_init(&attr_);
    posix_spawn_file_actions_init(&actions_);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions_);
    posix_spawnattr_destroy(&attr_);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;

  posix_spawnattr_t attr_;
  posix_spawn_file_actions_t actions_;
};

// The pipe ends the parent reads when the output is captured.
struct CapturePipes {
  UniqueFd out_read, out_write, err_read, err_write;
};

Result<CapturePipes> MakePipes() {
  CapturePipes pipes;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Error::FromErrno("pipe2", errno);
  pipes.out_read.reset(fds[0]);
  pipes.out_write.reset(fds[1]);
  if (::pipe2(fds, O_CLOEXEC) != 0) return Error::FromErrno("pipe2", errno);
  pipes.err_read.reset(fds[0]);
  pipes.err_write.reset(fds[1]);
  return pipes;
}

// Starts the child; `pipes` is set for kCapture.
Result<pid_t> Spawn(const ProgramCommand& command, const CapturePipes* pipes, short extra_flags) {
  if (command.argv.empty()) return Error::Make(ErrorCode::kInvalidArgument, "empty command");
  SpawnSetup setup;
  // The child starts as a fresh process would: nothing blocked, nothing
  // ignored (SIG_IGN survives exec, and PID 1 blocks what its signalfd reads).
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&setup.attr_, &none);
  posix_spawnattr_setsigdefault(&setup.attr_, &all);
  posix_spawnattr_setflags(&setup.attr_, static_cast<short>(POSIX_SPAWN_SETSIGMASK |
                                                            POSIX_SPAWN_SETSIGDEF | extra_flags));
  posix_spawn_file_actions_t* actions = &setup.actions_;
  posix_spawn_file_actions_addopen(actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  switch (command.output) {
    case ProgramOutput::kCapture:
      posix_spawn_file_actions_adddup2(actions, pipes->out_write.get(), STDOUT_FILENO);
      posix_spawn_file_actions_adddup2(actions, pipes->err_write.get(), STDERR_FILENO);
      break;
    case ProgramOutput::kInherit: break;
    case ProgramOutput::kFile:
      posix_spawn_file_actions_addopen(actions, STDOUT_FILENO, command.output_file.c_str(),
                                       O_WRONLY | O_NOCTTY, 0);
      posix_spawn_file_actions_adddup2(actions, STDOUT_FILENO, STDERR_FILENO);
      break;
  }
  if (!command.cwd.empty()) posix_spawn_file_actions_addchdir_np(actions, command.cwd.c_str());

  std::vector<std::string> env_strings;
  if (command.environment == ProgramEnvironment::kInheritPlus) {
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  }
  env_strings.insert(env_strings.end(), command.env.begin(), command.env.end());
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = command.argv;
  std::vector<char*> argv;
  for (auto& s : argv_copy) argv.push_back(s.data());
  argv.push_back(nullptr);

  pid_t pid = 0;
  // glibc's posix_spawn reports a failed exec (or chdir, open) as its result.
  int rc = ::posix_spawnp(&pid, argv[0], actions, &setup.attr_, argv.data(), envp.data());
  if (rc == ENOENT && command.cwd.empty()) {
    std::string package =
        command.package.empty() ? "" : fmt::format(" (Debian package {})", command.package);
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("{}: not found{}", command.argv[0], package));
  }
  if (rc != 0) return Error::FromErrno(fmt::format("running {}", command.argv[0]), rc);
  return pid;
}

Result<int> Wait(pid_t pid, const std::string& name) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Error::FromErrno(fmt::format("waitpid {}", name), errno);
  }
  return status;
}

}  // namespace

std::string ProgramExit::Describe() const {
  return signal != 0 ? fmt::format("killed by signal {}", signal)
                     : fmt::format("exit status {}", exit_status);
}

Result<ProgramExit> RunProgram(const ProgramCommand& command) {
  ProgramExit exit;
  if (command.output != ProgramOutput::kCapture) {
    pid_t pid = TRY(Spawn(command, nullptr, 0));
    int status = TRY(Wait(pid, command.argv[0]));
    if (WIFSIGNALED(status)) exit.signal = WTERMSIG(status);
    if (WIFEXITED(status)) exit.exit_status = WEXITSTATUS(status);
    return exit;
  }
  CapturePipes pipes = TRY(MakePipes());
  pid_t pid = TRY(Spawn(command, &pipes, 0));
  pipes.out_write.reset();
  pipes.err_write.reset();

  // Both pipes are drained to their end even when delivery failed, so the
  // child never blocks on a full pipe.
  Result<void> delivered;
  Result<void> read_result;
  pollfd fds[2] = {{pipes.out_read.get(), POLLIN, 0}, {pipes.err_read.get(), POLLIN, 0}};
  int open_count = 2;
  uint8_t buffer[65536];
  while (open_count > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      read_result = Error::FromErrno(fmt::format("poll output of {}", command.argv[0]), errno);
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n < 0) {
          read_result = Error::FromErrno(fmt::format("read output of {}", command.argv[0]), errno);
        }
        fds[i].fd = -1;
        --open_count;
        continue;
      }
      std::span<const uint8_t> chunk(buffer, static_cast<size_t>(n));
      if (i == 1) {
        exit.err.append(reinterpret_cast<const char*>(buffer), chunk.size());
        if (exit.err.size() > kMaxStderr) exit.err.erase(0, exit.err.size() - kMaxStderr);
      } else if (!command.on_stdout) {
        exit.out.append(reinterpret_cast<const char*>(buffer), chunk.size());
      } else if (delivered) {
        delivered = command.on_stdout(chunk);
      }
    }
  }
  if (!read_result) {
    // The child may still be writing: end it rather than wait on a full pipe.
    ::kill(pid, SIGKILL);
  }
  int status = TRY(Wait(pid, command.argv[0]));
  TRY(std::move(read_result));
  TRY(std::move(delivered));
  if (WIFSIGNALED(status)) exit.signal = WTERMSIG(status);
  if (WIFEXITED(status)) exit.exit_status = WEXITSTATUS(status);
  return exit;
}

Result<std::string> RunProgramChecked(const ProgramCommand& command) {
  ProgramExit exit = TRY(RunProgram(command));
  if (!exit.ok()) {
    return Error::Make(
        ErrorCode::kIo,
        fmt::format("`{}` failed ({}): {}", Tail(Joined(command.argv), 200), exit.Describe(),
                    Tail(exit.err.empty() ? exit.out : exit.err, 600)));
  }
  return std::move(exit.out);
}

Result<pid_t> StartProgram(const ProgramCommand& command) {
  if (command.output == ProgramOutput::kCapture) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "StartProgram: the output of a started program cannot be captured");
  }
  return Spawn(command, nullptr, POSIX_SPAWN_SETSID);
}

}  // namespace ralph
