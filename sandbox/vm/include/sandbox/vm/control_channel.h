// The control channel: one byte stream between the host and the guest agent
// carrying protocol.h's frames, whatever carries it. vsock is the preferred
// transport where the host has /dev/vhost-vsock; virtio-serial (a port
// named kControlPortName whose host side is a unix socket) works on any
// host. Both are a stream fd, so one class serves both sides and both
// transports.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/vm/protocol.h"
#include "sandbox/vm/vm_spec.h"

namespace ralph::sandbox::vm {

class ControlChannel {
 public:
  explicit ControlChannel(UniqueFd fd) : fd_(std::move(fd)) {}

  // Writes one encoded frame whole.
  Result<void> Send(const std::string& frame);
  // The next frame, waiting at most `timeout` (negative: no bound).
  // nullopt when the peer closed the stream at a frame boundary; kTimeout
  // when nothing whole came in time; kCorrupt for a bad frame or a stream
  // cut inside one.
  Result<std::optional<Frame>> Receive(std::chrono::milliseconds timeout);

  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  FrameDecoder decoder_;
};

// Whether this host can give guests a vsock (/dev/vhost-vsock opens).
bool HostHasVsock();

// Host side, virtio-serial: a listening unix socket at `path` (replaced if
// a stale one is there) that QEMU connects to as a client when it starts.
Result<UniqueFd> ListenUnix(const std::string& path);
// Accepts one connection on `listener`, waiting at most `timeout`; when
// `peer_pidfd` (the connecting process's pidfd, or -1) becomes readable
// first, that process has exited: kIo.
Result<UniqueFd> AcceptOne(int listener, std::chrono::milliseconds timeout, int peer_pidfd = -1);
// Host side, vsock: connects to the guest agent's port on `cid`.
Result<UniqueFd> ConnectVsock(uint32_t cid, uint32_t port);

// Guest side: the virtio-serial port named `name` (found through
// /sys/class/virtio-ports/*/name, as a guest without udev must).
Result<UniqueFd> OpenGuestSerialPort(std::string_view name);
// Guest side: listens on vsock `port` and accepts the host's one connection.
Result<UniqueFd> AcceptGuestVsock(uint32_t port);

}  // namespace ralph::sandbox::vm
