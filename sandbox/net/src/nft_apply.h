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
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "netlink_handles.h"
#include "platform/result.h"
#include "sandbox/net/ip_prefix.h"
#include "sandbox/net/rule_plan.h"

namespace ralph::sandbox {

// Whether a table being created is owned by the creating socket.
enum class TableOwner { kThisSocket, kNone };

// What ApplyTablePlan does about a table of the same name.
enum class ExistingTable {
  kFail,  // kAlreadyExists
  // Deletes it and creates the new one in the same transaction. Only for a
  // table the caller has proven stale: the kernel refuses (EPERM, nothing
  // changes) when another socket owns it.
  kReplace,
};

class NftSocket {
 public:
  // Opens and binds a NETLINK_NETFILTER socket (close-on-exec) in the
  // calling thread's netns. kIo names the failing step.
  static Result<std::unique_ptr<NftSocket>> Open();

  // Whether the kernel accepts NFT_TABLE_F_OWNER: commits the creation and
  // deletion of table `probe_table` (owned) in one transaction, which leaves
  // nothing behind. false when the kernel rejects the flag (EOPNOTSUPP, or
  // EINVAL before 5.12's flag mask); other failures are errors.
  Result<bool> ProbeTableOwner(std::string_view probe_table);

  // Creates the table with all its sets, chains and rules in one
  // transaction: either all of it exists afterwards or none of it.
  // kAlreadyExists when a table of that name exists (kFail), kPermission
  // when another socket owns it; other errors name the object the kernel
  // refused ("chain egress rule 12: ...").
  Result<void> ApplyTablePlan(const NftTablePlan& plan, TableOwner owner,
                              ExistingTable existing = ExistingTable::kFail);

  // Deletes an inet table and everything in it. A missing table is success;
  // a table another socket owns is an error (EPERM).
  Result<void> DeleteTable(std::string_view table);
  // Deletes the inet tables in one transaction (missing ones are skipped).
  Result<void> DeleteTables(const std::vector<std::string>& tables);

  // Adds `address` to the named set with a timeout (element expires after it).
  Result<void> AddSetElement(std::string_view table, std::string_view set, const IpPrefix& address,
                             uint64_t timeout_ms);

  // The inet tables of this netns, with their owner flag.
  Result<std::vector<NftTableInfo>> ListTables();

  // The port id the kernel bound this socket to (the owner of its tables).
  uint32_t portid() const;

 private:
  NftSocket(MnlSocketPtr socket, uint32_t seq) : socket_(std::move(socket)), seq_(seq) {}
  class Batch;
  // Sends the batch and waits for the kernel's answer to each message.
  Result<void> Commit(Batch& batch);

  // One transaction at a time: the replies of concurrent ones would mix.
  std::mutex mutex_;
  MnlSocketPtr socket_;
  uint32_t seq_;  // guarded by mutex_
};

}  // namespace ralph::sandbox
