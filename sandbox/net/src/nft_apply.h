// Doing: nftables plans committed as libnftnl batches over one libmnl
// netlink socket.
//
// Table ownership (NFT_TABLE_F_OWNER, Linux >= 5.12, net/netfilter/
// nf_tables_api.c): a table created with the flag belongs to the netlink
// socket (port id) that created it. Only that socket may change or delete it
// (others get EPERM; listing is open to all), and the kernel deletes it when
// the socket is released (nft_rcv_nl_event on NETLINK_URELEASE) — also when
// the process holding it is killed. So everything that touches an owned
// table goes through the NftSocket that made it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "netlink_handles.h"
#include "nft_tables.h"
#include "platform/result.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {

class NftSocket final : public NftTables {
 public:
  // Opens and binds a NETLINK_NETFILTER socket (close-on-exec) in the
  // calling thread's netns. kIo names the failing step.
  static Result<std::unique_ptr<NftSocket>> Open();

  // NftTables, each operation one netlink transaction of this socket.
  Result<bool> ProbeTableOwner(std::string_view probe_table) override;
  Result<void> ApplyTablePlan(const NftTablePlan& plan, TableOwner owner,
                              ExistingTable existing) override;
  Result<void> DeleteTables(const std::vector<std::string>& tables) override;
  Result<void> AddSetElement(std::string_view table, std::string_view set, const IpPrefix& address,
                             uint64_t timeout_ms) override;
  Result<std::vector<NftTableInfo>> ListTables() override;
  // Reads the table back (a dump each of tables, its chains, rules and
  // sets) and compares it with the objects ApplyTablePlan builds for `plan`.
  Result<bool> TableMatches(const NftTablePlan& plan) override;

  // The port id the kernel bound this socket to (the owner of its tables).
  uint32_t portid() const;

 private:
  NftSocket(MnlSocketPtr socket, uint32_t seq) : socket_(std::move(socket)), seq_(seq) {}
  class Batch;
  // Sends the batch and waits for the kernel's answer to each message.
  Result<void> Commit(Batch& batch);
  // Sends a dump request of `type` (`fill` adds its filter attributes) and
  // hands every object of the answer to `each`. mutex_ held.
  Result<void> Dump(uint16_t type, const std::function<void(nlmsghdr*)>& fill,
                    const std::function<void(const nlmsghdr*)>& each);

  // One transaction at a time: the replies of concurrent ones would mix.
  std::mutex mutex_;
  MnlSocketPtr socket_;
  uint32_t seq_;  // guarded by mutex_
};

}  // namespace ralph::sandbox
