#include "sandbox/vm/control_channel.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "platform/file_io.h"

namespace ralph::sandbox::vm {
namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline` for poll(2); -1 without one.
int PollTimeout(std::optional<Clock::time_point> deadline) {
  if (!deadline) return -1;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX));
}

Result<void> WaitReadable(int fd, std::optional<Clock::time_point> deadline,
                          std::string_view what) {
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, PollTimeout(deadline));
    if (n > 0) return {};
    if (n == 0) return Error::Make(ErrorCode::kTimeout, fmt::format("waiting for {}", what));
    if (errno != EINTR) return Error::FromErrno(fmt::format("poll {}", what), errno);
  }
}

sockaddr_vm VsockAddress(uint32_t cid, uint32_t port) {
  sockaddr_vm address{};
  address.svm_family = AF_VSOCK;
  address.svm_cid = cid;
  address.svm_port = port;
  return address;
}

}  // namespace

Result<void> ControlChannel::Send(const std::string& frame) {
  return WriteAll(
      fd_.get(),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(frame.data()), frame.size()),
      "control channel");
}

Result<std::optional<Frame>> ControlChannel::Receive(std::chrono::milliseconds timeout) {
  std::optional<Clock::time_point> deadline;
  if (timeout.count() >= 0) deadline = Clock::now() + timeout;
  for (;;) {
    auto frame = TRY(decoder_.Next());
    if (frame) return frame;
    TRY(WaitReadable(fd_.get(), deadline, "a control message"));
    char buffer[64 * 1024];
    ssize_t n = ::read(fd_.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Error::FromErrno("reading the control channel", errno);
    }
    if (n == 0) {
      if (decoder_.buffered() != 0) {
        return Error::Make(ErrorCode::kCorrupt,
                           fmt::format("the control channel closed inside a frame ({} bytes "
                                       "buffered)",
                                       decoder_.buffered()));
      }
      return std::optional<Frame>();
    }
    decoder_.Feed(std::string_view(buffer, static_cast<size_t>(n)));
  }
}

bool HostHasVsock() {
  UniqueFd fd(::open("/dev/vhost-vsock", O_RDWR | O_CLOEXEC));
  return static_cast<bool>(fd);
}

Result<UniqueFd> ListenUnix(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("socket path {} is too long", path));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("socket(AF_UNIX)", errno);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Error::FromErrno(fmt::format("unlink {}", path), errno);
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Error::FromErrno(fmt::format("bind {}", path), errno);
  }
  if (::listen(fd.get(), 1) != 0) return Error::FromErrno(fmt::format("listen {}", path), errno);
  return fd;
}

Result<UniqueFd> AcceptOne(int listener, std::chrono::milliseconds timeout, int peer_pidfd) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p[2] = {{listener, POLLIN, 0}, {peer_pidfd, POLLIN, 0}};
    int n = ::poll(p, peer_pidfd >= 0 ? 2 : 1, PollTimeout(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("poll for the VM's control connection", errno);
    if (n == 0) return Error::Make(ErrorCode::kTimeout, "waiting for the VM's control connection");
    if (p[0].revents != 0) break;
    return Error::Make(ErrorCode::kIo, "the VMM exited before it connected its control channel");
  }
  UniqueFd fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd) return Error::FromErrno("accept", errno);
  return fd;
}

Result<UniqueFd> ConnectVsock(uint32_t cid, uint32_t port) {
  UniqueFd fd(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("socket(AF_VSOCK)", errno);
  sockaddr_vm address = VsockAddress(cid, port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Error::FromErrno(fmt::format("connect vsock {}:{}", cid, port), errno);
  }
  return fd;
}

Result<UniqueFd> OpenGuestSerialPort(std::string_view name) {
  const std::string dir = "/sys/class/virtio-ports";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return Error::FromErrno(fmt::format("opendir {}", dir), errno);
  std::string device;
  while (dirent* entry = ::readdir(d)) {
    std::string port = entry->d_name;
    if (port.starts_with(".")) continue;
    auto port_name = ReadWholeFile(dir + "/" + port + "/name");
    if (!port_name) continue;
    std::string text = *port_name;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    if (text == name) device = "/dev/" + port;
  }
  ::closedir(d);
  if (device.empty()) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("no virtio-serial port named {}", name));
  }
  UniqueFd fd(::open(device.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY));
  if (!fd) return Error::FromErrno(fmt::format("open {}", device), errno);
  return fd;
}

Result<UniqueFd> AcceptGuestVsock(uint32_t port) {
  UniqueFd listener(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return Error::FromErrno("socket(AF_VSOCK)", errno);
  sockaddr_vm address = VsockAddress(VMADDR_CID_ANY, port);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Error::FromErrno(fmt::format("bind vsock port {}", port), errno);
  }
  if (::listen(listener.get(), 1) != 0) return Error::FromErrno("listen vsock", errno);
  UniqueFd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd) return Error::FromErrno("accept vsock", errno);
  return fd;
}

}  // namespace ralph::sandbox::vm
