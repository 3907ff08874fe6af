// Doing: links, addresses and routes over rtnetlink (libmnl), no ip(8).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "netlink_handles.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/net/ip_prefix.h"

namespace ralph::sandbox {

// An rtnetlink socket bound to the network namespace of the thread that
// opened it (it stays there even if the thread later moves).
class Rtnl {
 public:
  static Result<Rtnl> Open();

  // Creates a veth pair: `host_name` here, `peer_name` directly inside the
  // network namespace `peer_netns_fd`.
  Result<void> CreateVeth(const std::string& host_name, const std::string& peer_name,
                          int peer_netns_fd);
  // Deletes a link by name; a missing link is success.
  Result<void> DeleteLink(const std::string& name);
  Result<void> SetUp(const std::string& name);
  // Adds `address` with the on-link prefix length; IPv6 without DAD so it is
  // usable at once.
  Result<void> AddAddress(const std::string& name, const IpPrefix& address, uint8_t link_length);
  Result<void> AddDefaultRoute(const std::string& name, const IpPrefix& gateway);

 private:
  explicit Rtnl(MnlSocketPtr socket) : socket_(std::move(socket)) {}
  Result<void> Request(nlmsghdr* message, std::string_view what);

  MnlSocketPtr socket_;
  uint32_t seq_ = 1;
};

// The ifindex of `name` in the calling thread's network namespace.
Result<int> InterfaceIndex(const std::string& name);

// Runs `work` on a short-lived helper thread that has joined the network
// namespace `netns_fd` with setns(); the calling thread never changes
// namespace. Returns work's result.
Result<void> RunInNetns(int netns_fd, const std::function<Result<void>()>& work);

// Opens /proc/<pid>/ns/net.
Result<UniqueFd> OpenNetns(pid_t pid);

// Writes `value` to a /proc/sys file of the calling thread's netns.
Result<void> WriteSysctl(const std::string& path, std::string_view value);

}  // namespace ralph::sandbox
