// Doing: receives the packets our nft rules log (log group N) over
// nfnetlink_log and decodes them into connection events.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "netlink_handles.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/net/job_network.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {

// One logged packet: the rule's prefix and the decoded destination.
struct LoggedPacket {
  LogPrefix prefix;
  std::string destination;  // address text
  uint16_t port = 0;        // TCP/UDP destination port, else 0
  Protocol protocol = Protocol::kAny;
};

// Decodes an IPv4/IPv6 packet (as NFLOG copies it: from the network header)
// into destination, port and protocol. Pure. nullopt for a truncated packet.
std::optional<LoggedPacket> DecodeLoggedPacket(const uint8_t* data, size_t size);

class NflogListener {
 public:
  using Handler = std::function<void(const LoggedPacket&)>;
  // Binds nfnetlink_log group `group` (in the caller's netns) and starts a
  // thread that calls `handler` for every packet whose prefix parses.
  // kBusy when another socket (in this netns) already holds the group.
  static Result<std::unique_ptr<NflogListener>> Start(uint16_t group, Handler handler);
  ~NflogListener();

 private:
  NflogListener(MnlSocketPtr socket, UniqueFd wake, Handler handler)
      : socket_(std::move(socket)), wake_(std::move(wake)), handler_(std::move(handler)) {}
  void Run();

  MnlSocketPtr socket_;
  UniqueFd wake_;  // eventfd: stops the thread
  Handler handler_;
  std::thread thread_;
};

}  // namespace ralph::sandbox
