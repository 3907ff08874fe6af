// ralph-test-agent: the e2e tests' hand inside the guest (test images only;
// ralph-mkimage adds it with --test-agent, product images never hold it).
//
// There is no shell in a RalphOS slot. The agent reads one JSON request per
// line from the virtio-serial port "org.ralphos.agent" (the host side is a
// QEMU unix socket) and answers one JSON line:
//   {"argv": ["ralphctl", "boot", "status"]}  -> {"exit": 0, "output": "..."}
// Allowed: ralphctl <args>, ralph-sandbox <args> and ralph-test-bomb <args>
// (run from the slot), `reboot`, `poweroff`, `nft-tables` (the nftables
// tables of the guest, "<family> <name>" per line), and
// `cat <path>` under /run/ralph or /proc, `efivar <Name-guid>` (hex data)
// and `efivar-delete <Name-guid>` (NVRAM-wipe scenarios).
#include <dirent.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/table.h>
#include <linux/fs.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
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
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the agent's own SIGTERM block
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

// Every nftables table of the guest's netns: a NFT_MSG_GETTABLE dump.
nlohmann::json ListNftTables() {
  struct SocketCloser {
    void operator()(mnl_socket* socket) const { mnl_socket_close(socket); }
  };
  struct TableFree {
    void operator()(nftnl_table* table) const { nftnl_table_free(table); }
  };
  std::unique_ptr<mnl_socket, SocketCloser> socket(
      mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));
  if (!socket || mnl_socket_bind(socket.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    return {{"exit", 1}, {"output", fmt::format("netfilter socket: {}", std::strerror(errno))}};
  }
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  uint32_t seq = static_cast<uint32_t>(::getpid());
  nlmsghdr* request =
      nftnl_nlmsg_build_hdr(buffer.data(), NFT_MSG_GETTABLE, NFPROTO_UNSPEC, NLM_F_DUMP, seq);
  if (mnl_socket_sendto(socket.get(), request, request->nlmsg_len) < 0) {
    return {{"exit", 1},
            {"output", fmt::format("sending the dump request: {}", std::strerror(errno))}};
  }
  std::string out;
  auto on_table = [](const nlmsghdr* message, void* data) -> int {
    std::unique_ptr<nftnl_table, TableFree> table(nftnl_table_alloc());
    if (!table || nftnl_table_nlmsg_parse(message, table.get()) < 0) return MNL_CB_ERROR;
    uint32_t family = nftnl_table_get_u32(table.get(), NFTNL_TABLE_FAMILY);
    const char* name = nftnl_table_get_str(table.get(), NFTNL_TABLE_NAME);
    *static_cast<std::string*>(data) +=
        fmt::format("{} {}\n", family == NFPROTO_INET ? "inet" : std::to_string(family), name);
    return MNL_CB_OK;
  };
  uint32_t portid = mnl_socket_get_portid(socket.get());
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(socket.get(), buffer.data(), buffer.size());
    if (n < 0) {
      return {{"exit", 1}, {"output", fmt::format("reading the dump: {}", std::strerror(errno))}};
    }
    int rc = mnl_cb_run(buffer.data(), static_cast<size_t>(n), seq, portid, on_table, &out);
    if (rc < 0) {
      return {{"exit", 1}, {"output", fmt::format("parsing the dump: {}", std::strerror(errno))}};
    }
    if (rc == MNL_CB_STOP) break;
  }
  return {{"exit", 0}, {"output", out}};
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
  if (argv[0] == "ralph-test-bomb") {
    argv[0] = "/usr/libexec/ralph-test-bomb";
    return RunProgram(argv);
  }
  if (argv[0] == "nft-tables" && argv.size() == 1) return ListNftTables();
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
  // SIGTERM (ralph-init stopping the services) is taken between requests
  // only: a request in flight, e.g. a command that reboots the machine,
  // still gets its reply.
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &term, nullptr);
  ralph::UniqueFd stop(::signalfd(-1, &term, SFD_CLOEXEC));
  if (!stop) {
    ralph::LogError("signalfd: {}", std::strerror(errno));
    return 1;
  }
  ralph::LogInfo("listening on {}", port);
  std::string pending;
  char buffer[4096];
  for (;;) {
    pollfd pfds[2] = {{fd.get(), POLLIN, 0}, {stop.get(), POLLIN, 0}};
    if (::poll(pfds, 2, 1000) <= 0) continue;
    if (pfds[1].revents & POLLIN) return 0;
    pollfd& pfd = pfds[0];
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
