// Doing: links, addresses and routes over rtnetlink (libmnl), no ip(8).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "netlink_handles.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/net/ip_prefix.h"

namespace ralph::sandbox {

// Every network namespace's loopback device (LOOPBACK_IFINDEX,
// include/net/net_namespace.h).
inline constexpr int kLoopbackIndex = 1;

// An rtnetlink socket bound to the network namespace of the thread that
// opened it (it stays there even if the thread later moves).
class Rtnl {
 public:
  static Result<Rtnl> Open();
  // A socket in the network namespace `netns_fd` (a job's), opened by the
  // calling thread, which joins that namespace only for the socket's
  // creation and then returns to its own: no thread is started, and no
  // thread of the service stays in a job's namespace (the socket stays
  // bound to the job's). Aborts the process if the thread cannot return,
  // rather than go on acting in the job's namespace.
  static Result<Rtnl> OpenIn(int netns_fd);

  // Requests sent in one message and answered together (rtnetlink handles
  // them in order, one ACK each): no round trip per request.
  class Batch {
   public:
    void SetUp(int index, const std::string& name);
    // No IPv6 link-local address (addr_gen_mode none): the link's addresses
    // are all set here, and without one the kernel runs no duplicate
    // address detection, router solicitation or MLD report for it when it
    // comes up. Before SetUp.
    void NoLinkLocal(int index, const std::string& name);
    // `address` with the on-link prefix length; IPv6 without DAD so it is
    // usable at once.
    void AddAddress(int index, const std::string& name, const IpPrefix& address,
                    uint8_t link_length);
    void AddDefaultRoute(int index, const std::string& name, const IpPrefix& gateway);

   private:
    friend class Rtnl;
    nlmsghdr* Next(std::string what);
    std::vector<char> buffer_ = std::vector<char>(8192);
    size_t used_ = 0;
    std::vector<std::string> names_;
  };
  // Sends the batch; the first request the kernel refused is the error
  // (named), the others still ran.
  Result<void> Send(Batch& batch);
  // The index of link `name` in this socket's network namespace.
  Result<int> LinkIndex(const std::string& name);

  // Creates a veth pair: `host_name` here, `peer_name` directly inside the
  // network namespace `peer_netns_fd`.
  Result<void> CreateVeth(const std::string& host_name, const std::string& peer_name,
                          int peer_netns_fd);
  // Deletes a link by name; a missing link is success.
  Result<void> DeleteLink(const std::string& name);

 private:
  explicit Rtnl(MnlSocketPtr socket) : socket_(std::move(socket)) {}
  // Sends `message` (a fresh sequence number, an ACK asked for) and reads
  // until the kernel's ACK or error for it; any other message answering it
  // (a GET's reply) goes to `on_reply` first.
  Result<void> Request(nlmsghdr* message, std::string_view what,
                       const std::function<void(const nlmsghdr*)>& on_reply = {});

  MnlSocketPtr socket_;
  uint32_t seq_ = 1;
};

// Opens /proc/<pid>/ns/net.
Result<UniqueFd> OpenNetns(pid_t pid);

// Writes `value` to a /proc/sys file of the calling thread's netns.
Result<void> WriteSysctl(const std::string& path, std::string_view value);

}  // namespace ralph::sandbox
