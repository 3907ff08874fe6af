// ralph-test-agent: the e2e tests' hand inside the guest (test images only;
// ralph-mkimage adds it with --test-agent, product images never hold it).
//
// There is no shell in a RalphOS slot. The agent reads one JSON request per
// line from the virtio-serial port "org.ralphos.agent" (the host side is a
// QEMU unix socket) and answers one JSON line:
//   {"argv": ["ralphctl", "boot", "status"]}  -> {"exit": 0, "output": "..."}
// Allowed: ralphctl <args> and ralph-sandbox <args> (run from the slot),
// `reboot`, `poweroff`, and
// `cat <path>` under /run/ralph or /proc, `efivar <Name-guid>` (hex data)
// and `efivar-delete <Name-guid>` (NVRAM-wipe scenarios).
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/log.h"
#include "platform/unique_fd.h"

namespace {

constexpr const char* kPortName = "org.ralphos.agent";

std::string ReadAll(int fd) {
  std::string out;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

std::string FindPort() {
  DIR* dir = ::opendir("/sys/class/virtio-ports");
  if (!dir) return "";
  std::string found;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::string name_path = fmt::format("/sys/class/virtio-ports/{}/name", entry->d_name);
    int fd = ::open(name_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    std::string name = ReadAll(fd);
    ::close(fd);
    while (!name.empty() && name.back() == '\n') name.pop_back();
    if (name == kPortName) found = fmt::format("/dev/{}", entry->d_name);
  }
  ::closedir(dir);
  return found;
}

nlohmann::json RunProgram(const std::vector<std::string>& argv) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return {{"exit", 126}, {"output", "pipe2 failed"}};
  ralph::UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(write_end.get(), STDOUT_FILENO);
    ::dup2(write_end.get(), STDERR_FILENO);
    char* envp[] = {const_cast<char*>("PATH=/usr/bin:/sbin"), nullptr};
    ::execve(args[0], args.data(), envp);
    fmt::print(stderr, "exec {}: {}\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  write_end.reset();
  std::string output = ReadAll(read_end.get());
  int status = 0;
  while (pid > 0 && ::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {{"exit", code}, {"output", output}};
}

nlohmann::json Handle(const std::string& line, bool* reboot_after, bool* poweroff_after) {
  auto request = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded() || !request.is_object() || !request.contains("argv") ||
      !request["argv"].is_array() || request["argv"].empty()) {
    return {{"exit", 2}, {"output", "request is not {\"argv\": [...]}"}};
  }
  std::vector<std::string> argv;
  for (const auto& item : request["argv"]) {
    if (!item.is_string()) return {{"exit", 2}, {"output", "argv items must be strings"}};
    argv.push_back(item.get<std::string>());
  }
  if (argv[0] == "ralphctl") {
    argv[0] = "/usr/bin/ralphctl";
    return RunProgram(argv);
  }
  if (argv[0] == "ralph-sandbox") {
    argv[0] = "/usr/bin/ralph-sandbox";
    return RunProgram(argv);
  }
  if (argv[0] == "reboot" && argv.size() == 1) {
    *reboot_after = true;
    return {{"exit", 0}, {"output", ""}};
  }
  if (argv[0] == "poweroff" && argv.size() == 1) {
    *poweroff_after = true;
    return {{"exit", 0}, {"output", ""}};
  }
  if (argv[0] == "cat" && argv.size() == 2 &&
      (argv[1].rfind("/run/ralph/", 0) == 0 || argv[1].rfind("/proc/", 0) == 0) &&
      argv[1].find("..") == std::string::npos) {
    int fd = ::open(argv[1].c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return {{"exit", 1}, {"output", fmt::format("open {}: {}", argv[1], std::strerror(errno))}};
    std::string text = ReadAll(fd);
    ::close(fd);
    return {{"exit", 0}, {"output", text}};
  }
  if (argv[0] == "efivar" && argv.size() == 2 && argv[1].find('/') == std::string::npos) {
    // efivarfs: 4 attribute bytes, then the data; answered in hex.
    std::string path = "/sys/firmware/efi/efivars/" + argv[1];
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return {{"exit", errno == ENOENT ? 3 : 1},
              {"output", fmt::format("open {}: {}", path, std::strerror(errno))}};
    }
    std::string raw = ReadAll(fd);
    ::close(fd);
    std::string hex;
    for (size_t i = 4; i < raw.size(); ++i) {
      hex += fmt::format("{:02x}", static_cast<uint8_t>(raw[i]));
    }
    return {{"exit", 0}, {"output", hex}};
  }
  if (argv[0] == "efivar-delete" && argv.size() == 2 && argv[1].find('/') == std::string::npos) {
    // efivarfs marks most variables immutable (chattr +i) against
    // accidental deletion (Documentation/filesystems/efivarfs.rst).
    std::string path = "/sys/firmware/efi/efivars/" + argv[1];
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      int flags = 0;
      if (::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL)) {
        flags &= ~FS_IMMUTABLE_FL;
        ::ioctl(fd, FS_IOC_SETFLAGS, &flags);
      }
      ::close(fd);
    }
    if (::unlink(path.c_str()) != 0) {
      return {{"exit", 1}, {"output", fmt::format("unlink {}: {}", path, std::strerror(errno))}};
    }
    return {{"exit", 0}, {"output", ""}};
  }
  return {{"exit", 2}, {"output", fmt::format("command '{}' is not allowed", argv[0])}};
}

}  // namespace

int main() {
  ralph::LogInit("ralph-test-agent", ralph::LogSink::kKmsg);
  std::string port;
  for (int i = 0; i < 100 && (port = FindPort()).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (port.empty()) {
    ralph::LogError("no virtio-serial port named {}", kPortName);
    return 1;
  }
  ralph::UniqueFd fd(::open(port.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    ralph::LogError("open {}: {}", port, std::strerror(errno));
    return 1;
  }
  ralph::LogInfo("listening on {}", port);
  std::string pending;
  char buffer[4096];
  for (;;) {
    pollfd pfd{fd.get(), POLLIN, 0};
    if (::poll(&pfd, 1, 1000) <= 0) continue;
    if (!(pfd.revents & POLLIN)) {
      // Host side not connected (POLLHUP): wait for it.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    pending.append(buffer, static_cast<size_t>(n));
    for (size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      bool reboot = false, poweroff = false;
      // Invalid UTF-8 in a command's output is replaced, not thrown on (no exceptions).
      std::string reply = Handle(line, &reboot, &poweroff)
                              .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
                          "\n";
      std::string_view rest = reply;
      while (!rest.empty()) {
        ssize_t w = ::write(fd.get(), rest.data(), rest.size());
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        rest.remove_prefix(static_cast<size_t>(w));
      }
      if (reboot) ::kill(1, SIGTERM);
      if (poweroff) ::kill(1, SIGUSR2);
    }
  }
}
