#include "nflog_listener.h"

// glibc's netinet/in.h must precede the kernel uapi headers below.
#include <netinet/in.h>  // NOLINT(build/include_order)

#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

Result<void> SendConfig(mnl_socket* socket, uint16_t group, uint8_t command, bool with_mode) {
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buffer.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  nlh->nlmsg_seq = 1;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = AF_UNSPEC;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = htons(group);
  if (command != NFULNL_CFG_CMD_NONE) {
    // The kernel rejects an explicit CMD_NONE with ENOTSUPP: omit it.
    nfulnl_msg_config_cmd cmd{.command = command};
    mnl_attr_put(nlh, NFULA_CFG_CMD, sizeof(cmd), &cmd);
  }
  if (with_mode) {
    // Headers are all we decode: 128 bytes cover IPv6 + TCP.
    nfulnl_msg_config_mode mode{};
    mode.copy_range = htonl(128);
    mode.copy_mode = NFULNL_COPY_PACKET;
    mnl_attr_put(nlh, NFULA_CFG_MODE, sizeof(mode), &mode);
  }
  if (mnl_socket_sendto(socket, nlh, nlh->nlmsg_len) < 0) {
    return Error::FromErrno("nflog: sending config", errno);
  }
  std::vector<char> reply(MNL_SOCKET_BUFFER_SIZE);
  ssize_t n = mnl_socket_recvfrom(socket, reply.data(), reply.size());
  if (n < 0) return Error::FromErrno("nflog: waiting for config ack", errno);
  // reinterpret_cast: the ack is a netlink message in the received bytes.
  auto* answer = reinterpret_cast<nlmsghdr*>(reply.data());
  if (mnl_nlmsg_ok(answer, static_cast<int>(n)) && answer->nlmsg_type == NLMSG_ERROR) {
    auto* error = static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(answer));
    if (error->error != 0) {
      return Error::FromErrno(fmt::format("nflog: configuring group {}", group), -error->error);
    }
  }
  return {};
}

}  // namespace

std::optional<LoggedPacket> DecodeLoggedPacket(const uint8_t* data, size_t size) {
  if (size < 1) return std::nullopt;
  LoggedPacket packet;
  uint8_t protocol = 0;
  size_t l4_offset = 0;
  int version = data[0] >> 4;
  if (version == 4) {
    if (size < 20) return std::nullopt;
    size_t header = static_cast<size_t>(data[0] & 0x0f) * 4;
    if (header < 20) return std::nullopt;
    protocol = data[9];
    packet.destination = IpPrefix::Address(IpFamily::kV4, data + 16).AddressString();
    l4_offset = header;
    // Only the first fragment carries ports.
    uint16_t fragment = static_cast<uint16_t>((data[6] & 0x1f) << 8 | data[7]);
    if (fragment != 0) l4_offset = size;
  } else if (version == 6) {
    if (size < 40) return std::nullopt;
    protocol = data[6];
    packet.destination = IpPrefix::Address(IpFamily::kV6, data + 24).AddressString();
    l4_offset = 40;  // extension headers: reported without a port
  } else {
    return std::nullopt;
  }
  if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) {
    packet.protocol = protocol == IPPROTO_TCP ? Protocol::kTcp : Protocol::kUdp;
    if (l4_offset + 4 <= size) {
      packet.port = static_cast<uint16_t>(data[l4_offset + 2] << 8 | data[l4_offset + 3]);
    }
  }
  return packet;
}

Result<std::unique_ptr<NflogListener>> NflogListener::Start(uint16_t group, Handler handler) {
  MnlSocketPtr socket(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));
  if (!socket) return Error::FromErrno("nflog: opening a netfilter netlink socket", errno);
  if (mnl_socket_bind(socket.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    return Error::FromErrno("nflog: binding the netlink socket", errno);
  }
  timeval timeout{.tv_sec = 5, .tv_usec = 0};
  setsockopt(mnl_socket_get_fd(socket.get()), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (auto bound = SendConfig(socket.get(), group, NFULNL_CFG_CMD_BIND, false); !bound) {
    // nfnetlink_log answers EPERM (older kernels: EBUSY) when another
    // socket already holds the group (nfulnl_recv_config()).
    int err = bound.error().sys_errno();
    if (err == EPERM || err == EBUSY)
      return Error::Make(ErrorCode::kBusy,
                         fmt::format("nflog: group {} is bound by another socket", group));
    return std::move(bound).error();
  }
  TRY(SendConfig(socket.get(), group, NFULNL_CFG_CMD_NONE, true));
  // A large receive buffer: a burst of denied packets must not be lost.
  int size = 4 << 20;
  setsockopt(mnl_socket_get_fd(socket.get()), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Error::FromErrno("nflog: eventfd", errno);
  std::unique_ptr<NflogListener> listener(
      new NflogListener(std::move(socket), std::move(wake), std::move(handler)));
  listener->thread_ = std::thread([raw = listener.get()] { raw->Run(); });
  return listener;
}

NflogListener::~NflogListener() {
  uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
    // eventfd writes only fail on counter overflow; the thread still sees it readable.
  }
  if (thread_.joinable()) thread_.join();
}

void NflogListener::Run() {
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE * 4);
  int fd = mnl_socket_get_fd(socket_.get());
  for (;;) {
    pollfd fds[2] = {{.fd = fd, .events = POLLIN, .revents = 0},
                     {.fd = wake_.get(), .events = POLLIN, .revents = 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    ssize_t n = recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (n <= 0) continue;  // ENOBUFS after an overrun: keep going
    int len = static_cast<int>(n);
    // reinterpret_cast: netlink messages are laid out in the received bytes.
    for (auto* nlh = reinterpret_cast<nlmsghdr*>(buffer.data()); mnl_nlmsg_ok(nlh, len);
         nlh = mnl_nlmsg_next(nlh, &len)) {
      if ((nlh->nlmsg_type & 0xff) != NFULNL_MSG_PACKET) continue;
      const nlattr* prefix_attr = nullptr;
      const nlattr* payload_attr = nullptr;
      // libmnl's mnl_attr_for_each macro relies on C's implicit void*
      // conversion; the same walk spelled out for C++.
      auto* tail = static_cast<char*>(mnl_nlmsg_get_payload_tail(nlh));
      for (auto* attr = static_cast<nlattr*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
           mnl_attr_ok(attr, static_cast<int>(tail - reinterpret_cast<char*>(attr)));
           attr = mnl_attr_next(attr)) {
        uint16_t type = mnl_attr_get_type(attr);
        if (type == NFULA_PREFIX) prefix_attr = attr;
        if (type == NFULA_PAYLOAD) payload_attr = attr;
      }
      if (!prefix_attr || !payload_attr) continue;
      auto* prefix_data = static_cast<const char*>(mnl_attr_get_payload(prefix_attr));
      std::string_view prefix_text(prefix_data,
                                   strnlen(prefix_data, mnl_attr_get_payload_len(prefix_attr)));
      std::optional<LogPrefix> prefix = ParseLogPrefix(prefix_text);
      if (!prefix) continue;
      std::optional<LoggedPacket> packet =
          DecodeLoggedPacket(static_cast<const uint8_t*>(mnl_attr_get_payload(payload_attr)),
                             mnl_attr_get_payload_len(payload_attr));
      if (!packet) continue;
      packet->prefix = std::move(*prefix);
      handler_(*packet);
    }
  }
}

}  // namespace ralph::sandbox
