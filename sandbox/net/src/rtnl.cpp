#include "rtnl.h"

// glibc's netinet/in.h must precede the kernel uapi headers below.
#include <netinet/in.h>  // NOLINT(build/include_order)

#include <fcntl.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <fmt/format.h>

namespace ralph::sandbox {

Result<Rtnl> Rtnl::Open() {
  MnlSocketPtr socket(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC));
  if (!socket) return Error::FromErrno("opening an rtnetlink socket", errno);
  if (mnl_socket_bind(socket.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    return Error::FromErrno("binding the rtnetlink socket", errno);
  }
  timeval timeout{.tv_sec = 5, .tv_usec = 0};
  setsockopt(mnl_socket_get_fd(socket.get()), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return Rtnl(std::move(socket));
}

Result<Rtnl> Rtnl::OpenIn(int netns_fd) {
  UniqueFd own(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!own) return Error::FromErrno("opening /proc/thread-self/ns/net", errno);
  if (setns(netns_fd, CLONE_NEWNET) != 0) {
    return Error::FromErrno("setns into the job's network namespace", errno);
  }
  auto rtnl = Open();
  if (setns(own.get(), CLONE_NEWNET) != 0) {
    // Going on would make this thread's later sockets in the job's
    // namespace: a broken invariant, not an error to hand up.
    std::fprintf(stderr, "ralph sandbox/net: cannot return from a job's network namespace: %s\n",
                 std::strerror(errno));
    std::abort();
  }
  return rtnl;
}

nlmsghdr* Rtnl::Batch::Next(std::string what) {
  if (buffer_.size() - used_ < 1024) buffer_.resize(buffer_.size() * 2);
  names_.push_back(std::move(what));
  return mnl_nlmsg_put_header(buffer_.data() + used_);
}

namespace {

void PutSetUp(nlmsghdr* nlh, int index) {
  nlh->nlmsg_type = RTM_NEWLINK;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  ifm->ifi_index = index;
  ifm->ifi_flags = IFF_UP;
  ifm->ifi_change = IFF_UP;
}

void PutNoLinkLocal(nlmsghdr* nlh, int index) {
  nlh->nlmsg_type = RTM_NEWLINK;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  ifm->ifi_index = index;
  nlattr* spec = mnl_attr_nest_start(nlh, IFLA_AF_SPEC);
  nlattr* inet6 = mnl_attr_nest_start(nlh, AF_INET6);
  mnl_attr_put_u8(nlh, IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE);
  mnl_attr_nest_end(nlh, inet6);
  mnl_attr_nest_end(nlh, spec);
}

void PutAddress(nlmsghdr* nlh, int index, const IpPrefix& address, uint8_t link_length) {
  nlh->nlmsg_type = RTM_NEWADDR;
  nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
  bool v4 = address.family == IpFamily::kV4;
  ifa->ifa_family = v4 ? AF_INET : AF_INET6;
  ifa->ifa_prefixlen = link_length;
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = static_cast<uint32_t>(index);
  // IFA_F_NODAD: the /64 is ours alone, duplicate detection would only delay
  // the address by a second or more (RFC 4862 5.4).
  if (!v4) ifa->ifa_flags = IFA_F_NODAD;
  auto size = static_cast<uint16_t>(address.address_size());
  mnl_attr_put(nlh, IFA_LOCAL, size, address.bytes.data());
  mnl_attr_put(nlh, IFA_ADDRESS, size, address.bytes.data());
}

void PutDefaultRoute(nlmsghdr* nlh, int index, const IpPrefix& gateway) {
  nlh->nlmsg_type = RTM_NEWROUTE;
  nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = gateway.family == IpFamily::kV4 ? AF_INET : AF_INET6;
  rtm->rtm_dst_len = 0;
  rtm->rtm_table = RT_TABLE_MAIN;
  rtm->rtm_protocol = RTPROT_STATIC;
  rtm->rtm_scope = RT_SCOPE_UNIVERSE;
  rtm->rtm_type = RTN_UNICAST;
  mnl_attr_put(nlh, RTA_GATEWAY, static_cast<uint16_t>(gateway.address_size()),
               gateway.bytes.data());
  mnl_attr_put_u32(nlh, RTA_OIF, static_cast<uint32_t>(index));
}

}  // namespace

void Rtnl::Batch::SetUp(int index, const std::string& name) {
  nlmsghdr* nlh = Next(fmt::format("setting link {} up", name));
  PutSetUp(nlh, index);
  used_ += NLMSG_ALIGN(nlh->nlmsg_len);
}

void Rtnl::Batch::NoLinkLocal(int index, const std::string& name) {
  nlmsghdr* nlh = Next(fmt::format("turning off the IPv6 link-local address of {}", name));
  PutNoLinkLocal(nlh, index);
  used_ += NLMSG_ALIGN(nlh->nlmsg_len);
}

void Rtnl::Batch::AddAddress(int index, const std::string& name, const IpPrefix& address,
                             uint8_t link_length) {
  nlmsghdr* nlh =
      Next(fmt::format("adding address {}/{} to {}", address.AddressString(), link_length, name));
  PutAddress(nlh, index, address, link_length);
  used_ += NLMSG_ALIGN(nlh->nlmsg_len);
}

void Rtnl::Batch::AddDefaultRoute(int index, const std::string& name, const IpPrefix& gateway) {
  nlmsghdr* nlh =
      Next(fmt::format("adding default route via {} dev {}", gateway.AddressString(), name));
  PutDefaultRoute(nlh, index, gateway);
  used_ += NLMSG_ALIGN(nlh->nlmsg_len);
}

Result<void> Rtnl::Send(Batch& batch) {
  uint32_t first_seq = seq_;
  size_t offset = 0;
  for (size_t i = 0; i < batch.names_.size(); ++i) {
    // reinterpret_cast: the messages are laid out back to back in the buffer.
    auto* nlh = reinterpret_cast<nlmsghdr*>(batch.buffer_.data() + offset);
    nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    nlh->nlmsg_seq = seq_++;
    offset += NLMSG_ALIGN(nlh->nlmsg_len);
  }
  if (batch.names_.empty()) return {};
  if (mnl_socket_sendto(socket_.get(), batch.buffer_.data(), batch.used_) < 0) {
    return Error::FromErrno(fmt::format("{}: sending", batch.names_.front()), errno);
  }
  std::optional<Error> first;
  size_t answered = 0;
  std::vector<char> reply(MNL_SOCKET_BUFFER_SIZE);
  while (answered < batch.names_.size()) {
    ssize_t n = mnl_socket_recvfrom(socket_.get(), reply.data(), reply.size());
    if (n < 0) {
      return Error::FromErrno(fmt::format("{}: waiting for the answer", batch.names_[answered]),
                              errno);
    }
    int len = static_cast<int>(n);
    // reinterpret_cast: netlink messages are laid out in the received bytes.
    for (auto* nlh = reinterpret_cast<nlmsghdr*>(reply.data()); mnl_nlmsg_ok(nlh, len);
         nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_type != NLMSG_ERROR || nlh->nlmsg_seq < first_seq ||
          nlh->nlmsg_seq - first_seq >= batch.names_.size()) {
        continue;
      }
      ++answered;
      auto* error = static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
      if (error->error != 0 && !first) {
        first = Error::FromErrno(batch.names_[nlh->nlmsg_seq - first_seq], -error->error);
      }
    }
  }
  if (first) return std::move(*first);
  return {};
}

Result<int> Rtnl::LinkIndex(const std::string& name) {
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buffer.data());
  nlh->nlmsg_type = RTM_GETLINK;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  // Only the header and the name: no statistics in the answer.
  mnl_attr_put_u32(nlh, IFLA_EXT_MASK, 0);
  std::string what = fmt::format("looking up link {}", name);
  int index = -1;
  TRY(Request(nlh, what, [&](const nlmsghdr* reply) {
    if (reply->nlmsg_type == RTM_NEWLINK)
      index = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(reply))->ifi_index;
  }));
  if (index < 0) return Error::Make(ErrorCode::kInternal, what + ": no link in the answer");
  return index;
}

Result<void> Rtnl::Request(nlmsghdr* message, std::string_view what,
                           const std::function<void(const nlmsghdr*)>& on_reply) {
  message->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  message->nlmsg_seq = seq_++;
  if (mnl_socket_sendto(socket_.get(), message, message->nlmsg_len) < 0) {
    return Error::FromErrno(fmt::format("{}: sending", what), errno);
  }
  std::vector<char> reply(MNL_SOCKET_BUFFER_SIZE);
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(socket_.get(), reply.data(), reply.size());
    if (n < 0) return Error::FromErrno(fmt::format("{}: waiting for the answer", what), errno);
    int len = static_cast<int>(n);
    // reinterpret_cast: netlink messages are laid out in the received bytes.
    for (auto* nlh = reinterpret_cast<nlmsghdr*>(reply.data()); mnl_nlmsg_ok(nlh, len);
         nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_seq != message->nlmsg_seq) continue;
      if (nlh->nlmsg_type != NLMSG_ERROR) {
        if (on_reply) on_reply(nlh);
        continue;
      }
      auto* error = static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
      if (error->error != 0) return Error::FromErrno(what, -error->error);
      return {};
    }
  }
}

Result<void> Rtnl::CreateVeth(const std::string& host_name, const std::string& peer_name,
                              int peer_netns_fd) {
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buffer.data());
  nlh->nlmsg_type = RTM_NEWLINK;
  nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, host_name.c_str());
  // One queue each way, on both ends. Without these attributes veth makes
  // one per possible CPU and then, once registered, trims the real count to
  // one (veth_init_queues -> netif_set_real_num_tx_queues), which waits for
  // an RCU grace period (synchronize_net) per end: measured 4-5 ms per pair
  // here, the largest part of a veth's creation.
  mnl_attr_put_u32(nlh, IFLA_NUM_TX_QUEUES, 1);
  mnl_attr_put_u32(nlh, IFLA_NUM_RX_QUEUES, 1);
  nlattr* linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  nlattr* peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
  // VETH_INFO_PEER carries a struct ifinfomsg followed by the peer's attributes.
  auto* peer_ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  peer_ifm->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, peer_name.c_str());
  mnl_attr_put_u32(nlh, IFLA_NUM_TX_QUEUES, 1);
  mnl_attr_put_u32(nlh, IFLA_NUM_RX_QUEUES, 1);
  mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, static_cast<uint32_t>(peer_netns_fd));
  mnl_attr_nest_end(nlh, peer);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, linkinfo);
  return Request(nlh, fmt::format("creating veth {} <-> {} (job netns)", host_name, peer_name));
}

Result<void> Rtnl::DeleteLink(const std::string& name) {
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buffer.data());
  nlh->nlmsg_type = RTM_DELLINK;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  auto result = Request(nlh, fmt::format("deleting link {}", name));
  if (!result && (result.error().sys_errno() == ENODEV || result.error().sys_errno() == ENOENT)) {
    return {};
  }
  return result;
}

Result<UniqueFd> OpenNetns(pid_t pid) {
  std::string path = fmt::format("/proc/{}/ns/net", pid);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("opening {}", path), errno);
  return fd;
}

Result<void> WriteSysctl(const std::string& path, std::string_view value) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("opening {}", path), errno);
  if (write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size())) {
    return Error::FromErrno(fmt::format("writing {} to {}", value, path), errno);
  }
  return {};
}

}  // namespace ralph::sandbox
