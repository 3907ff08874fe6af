// The sandbox service's network side: the job address pool, the NFLOG
// listener that turns logged packets into NetEvents, the DNS forwarder, and
// the service-wide forwarding table. The sandbox service (or whatever spawns
// jobs) owns one and hands it to nobody else: there is no process-wide
// instance.
//
// Several services may share one network namespace (two `ralph-sandbox run`
// at once, ralphd next to a test run): each claims an instance number n in
// 0..kMaxInstances-1 for as long as it lives (an abstract unix socket
// "ralph-sandbox-net.<ifname_prefix>.<n>", which is per netns and released
// by the kernel when the process dies), and everything it makes in the
// netns is derived from n — host veths "<ifname_prefix><letter n><slot>",
// job tables "ralph_<that veth>", its service table
// "ralph_service_<ifname_prefix><letter n>", and the n-th 1/kMaxInstances of
// both address pools. Its NFLOG group is the first one of
// [nflog_group, nflog_group + nflog_group_count) that no other socket in the
// netns has bound.
//
// Job and service tables are created owned by the service's netlink socket
// (NFT_TABLE_F_OWNER, Linux >= 5.12) when the kernel supports it (probed at
// Start(); not a launcher's, ServiceTables::kWarm, whose tables all stay
// unowned): the kernel then deletes them when the service's process dies,
// however it dies, so a killed service blocks no later job. Tables without
// the flag (older kernels, older versions of this code, a service configured
// with TableOwnership::kNever) that a dead instance left behind are swept by
// the next Start() in the netns, and a stale unowned table in the way of a
// new job is replaced in the job's own transaction.
//
// Start() changes the calling thread's network namespace only as configured:
// with enable_forwarding it sets net.ipv4.ip_forward and
// net.ipv6.conf.all.forwarding to 1 and commits its service table, which
// lets the kernel forward only to and from the job veths.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "platform/log.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "sandbox/net/address_pool.h"
#include "sandbox/net/job_network.h"

namespace ralph::sandbox {

// Whether the service's nft tables belong to its netlink socket.
enum class TableOwnership {
  kIfSupported,  // owned when the kernel has NFT_TABLE_F_OWNER (probed)
  kNever,        // never owned: what a pre-5.12 kernel gives (for tests)
};

// What JobNetwork::Teardown() does with a job's veth pair and nft table.
enum class LinkRemoval {
  // Both are gone when Teardown() returns. Deleting a veth waits out RCU
  // barriers in the kernel (netdev_run_todo: rcu_barrier), tens of ms.
  kInline,
  // Teardown() removes the job's event and DNS registrations and returns;
  // the service's reaper thread then sees the veth pair go (the kernel
  // deletes it with the job's network namespace once the job's processes
  // are gone; after 2 s, or when the service stops, the reaper deletes it
  // itself), then deletes the job's table (which keeps dropping whatever
  // the dying link still carries), and only then returns the address slot.
  // WaitForRemovals() blocks until every removal queued so far is done, and
  // the service's destructor does all that are left.
  kBackground,
};

// Where a service keeps its forwarding policy and its hold on the kernel's
// netfilter hooks (see rule_plan.h, PlanWarmTable).
enum class ServiceTables {
  // Its own table "ralph_service_<instance prefix>", owned by its socket and
  // removed when it stops. For a long-running service (ralphd), which holds
  // the hooks for its whole life anyway.
  kPerService,
  // The warm tables "ralph-warm-<ifname_prefix>" (forwarding policy, forward
  // and input hooks) and, once a job may send past the host,
  // "ralph-warm-ct-<ifname_prefix>" (conntrack, NAT): made unowned by the
  // first service that needs them, shared by every service of the prefix in
  // the netns, and left in place when it stops — at most these two tables
  // per prefix and netns. For `ralph-sandbox run`: without them every run
  // is the first user of those hook points on a host where nothing else
  // holds them, and the kernel patches its code at the start and back at the
  // exit (static keys; ~70% of a launcher's CPU). They hold no part of a
  // job's confinement, which is all in the job's own table. That table is
  // unowned and stays after the job, inert (no link of its name exists):
  // the next job of its slot takes it only when the rules the kernel
  // reports are its own plan's (read back and compared) and its plan looks
  // up no DNS set, and replaces it in its own transaction otherwise. No
  // transaction means no wait at exit (releasing an nft socket flushes
  // pending nf_tables destruction: an RCU grace period).
  // RemoveWarmTables() (what `ralph-sandbox drain` runs) removes them all.
  kWarm,
};

struct NetworkServiceConfig {
  // Shared by up to kMaxInstances services in one netns (each gets 1/16th):
  // the default /16 gives each service 1024 jobs.
  std::string pool_v4 = "10.254.0.0/16";        // /30 per job; /26 or wider
  std::string pool_v6 = "fd52:616c:7068::/48";  // /64 per job, must be ULA; /60 or wider
  // Where allowlisted queries go: "198.51.100.53", "198.51.100.53:5353",
  // "2001:db8::53", "[2001:db8::53]:53". Empty: the first nameserver of
  // /etc/resolv.conf.
  std::string upstream_dns;
  // Whether the jobs' connections are reported (NetEvent to the sink given
  // to CreateJob): the job tables log them to NFLOG and a listener reads
  // them. false, for a caller that reports none (the launcher passes no
  // sink): no listener, and the tables carry no log statements; they drop
  // and accept exactly the same packets.
  bool report_events = true;
  // The NFLOG groups this service may bind: the first free one is used;
  // kBusy naming the range when all are taken.
  uint16_t nflog_group = 7770;
  uint16_t nflog_group_count = 64;
  // Host-side veths are "<prefix><instance letter><slot>"; 1..8 bytes of
  // [a-z0-9_].
  std::string ifname_prefix = "rj";
  bool enable_forwarding = true;
  uint32_t dns_min_ttl = 1;     // seconds an answered address stays open, at least
  uint32_t dns_max_ttl = 3600;  // and at most
  // Connection events per job and second; beyond it they are counted and
  // reported as one "rate-limited: N events suppressed" event (a job that
  // floods blocked destinations must not flood the audit log).
  uint32_t max_events_per_second = 200;
  TableOwnership table_ownership = TableOwnership::kIfSupported;
  LinkRemoval link_removal = LinkRemoval::kInline;
  // For a launcher that exits right after its job: when the last live job
  // is torn down with JobNetwork::TeardownWithNamespace(), the service table
  // is deleted in the same nft transaction as the job's table. The kernel
  // then waits out the RCU grace period of the unregistered hooks while the
  // launcher finishes its own teardown, instead of in its exit (releasing
  // the nft socket flushes pending table destruction: a grace period). The next
  // CreateJob() commits the service table again. No effect with kWarm
  // (there is no table of the service's own to release).
  bool release_when_idle = false;
  ServiceTables service_tables = ServiceTables::kPerService;
  // Job tables committed ahead, 0..NetworkService::kMaxPreparedTables. After
  // each job's start a background thread commits up to this many tables,
  // for the spec that job had, on free address slots (each one holds its
  // slot); the next job with an equal spec (NetworkSpecKey) takes one and
  // its start only makes and configures its veth — the table's commit
  // (1-2 ms, mostly the kernel validating every rule reachable from a base
  // chain) is off its path. A job with another spec has its table made at
  // its start as before and the prepared ones are dropped. They are removed
  // when the service stops; owned by its socket (or swept like any job table
  // of the instance), they go with a killed service too. 0: none.
  uint32_t prepared_tables = 0;
  // Whether Start() registers conntrack and NAT (the service table's
  // stateful part) at once, so that no job's commit has to. false: the first
  // job that may send past the host (JobHasEgress) adds it, replacing the
  // service table in one transaction; a launcher whose job may reach nothing
  // then never registers them.
  bool expect_egress = true;
  // Optional. Told, from Start() and CreateJob(), which table clean-up path
  // is in use (kDebug when tables are owned, kWarning when the kernel lacks
  // the flag) and of every stale table removed (kInfo); from the service's
  // own threads (so it must be thread-safe), of a background removal or
  // table preparation that failed (kWarning). The library does not log by
  // itself; binaries forward this to their log.
  std::function<void(LogLevel level, const std::string& message)> log;
};

class ConnectionEvents;
class DnsForwarder;
class JobNetworkImpl;
class JobTables;
class LinkReaper;
class NflogListener;
class NftSocket;
class TablePreparer;
struct JobAddressing;
struct NftTablePlan;

class NetworkService {
 public:
  static constexpr unsigned kMaxInstancesLog2 = 4;
  static constexpr unsigned kMaxInstances = 1u << kMaxInstancesLog2;
  static constexpr uint32_t kMaxPreparedTables = 8;

  // kInvalidArgument names a bad config field; kBusy when all kMaxInstances
  // instances or all NFLOG groups of the range are taken in this netns;
  // other errors name the step. Removes the links that a previous holder of
  // the same instance left behind when it died, and the unowned tables of
  // this instance and of every instance of ifname_prefix that no live
  // service holds (claimed while they are removed).
  static Result<std::unique_ptr<NetworkService>> Start(const NetworkServiceConfig& config);
  // Removes the warm tables (ServiceTables::kWarm) of `ifname_prefix` from
  // the calling thread's netns, and the unowned tables of every instance
  // that no live service holds, and returns their names; missing ones are
  // not an error. Safe while a service of the prefix runs: a job's own table
  // holds whatever it needs, only the next job registers the hooks again.
  static Result<std::vector<std::string>> RemoveWarmTables(std::string_view ifname_prefix);
  // Jobs must be torn down first. Removes the service table
  // (ServiceTables::kPerService; warm tables stay).
  ~NetworkService();

  // Sets up the network for a job whose netns is that of `child_pid` (the
  // contract is in job_network.h). `events` receives the job's connection
  // and DNS events until its Teardown(). kInvalidArgument names a malformed
  // rule; kIo/kUnsupported name the netlink step that failed; kNoSpace when
  // this instance's address pool is exhausted. A table of the job's name is
  // replaced when it is stale (unowned: its maker, a holder of this
  // instance, is gone); kAlreadyExists when a live socket owns it. Nothing
  // is left behind on failure.
  Result<std::unique_ptr<JobNetwork>> CreateJob(const std::string& job_id, pid_t child_pid,
                                                const NetworkSpec& spec,
                                                NetEventSinkInterface* events);

  // Makes sure the next CreateJob with an equal spec (NetworkSpecKey; an
  // enabled one) finds its table committed, so that its start only makes
  // and configures the veth: commits the table now, on the calling thread,
  // unless one is prepared already (by an earlier call, or in the
  // background with prepared_tables). Tables prepared for another spec are
  // dropped.
  Result<void> PrepareJob(const NetworkSpec& spec);

  // Address slots in use: live jobs, torn-down ones whose background
  // removal is not done yet, and prepared tables.
  size_t live_jobs() const { return pool_->in_use(); }
  // Blocks until the background preparation (prepared_tables) has nothing
  // left to do; returns how many tables are prepared. For tests.
  size_t WaitForPreparedTables();
  // Blocks until every background removal (LinkRemoval::kBackground) queued
  // before the call is done. The first error a removal met since the last
  // call, if any (the slot of a failed removal stays taken).
  Result<void> WaitForRemovals();
  // What Start() claimed.
  unsigned instance() const { return instance_; }
  uint16_t nflog_group() const { return nflog_group_; }
  // "<ifname_prefix><instance letter>": every host veth of this service
  // starts with it.
  const std::string& interface_prefix() const { return interface_prefix_; }
  // Whether this service's tables are owned by its netlink socket (the
  // kernel removes them when the process dies).
  bool tables_owned() const;

  // Connection events held back by the per-job rate limit so far
  // (max_events_per_second), over all jobs.
  uint64_t suppressed_events() const;

 private:
  friend class JobNetworkImpl;
  NetworkService(const NetworkServiceConfig& config, UniqueFd claim, unsigned instance,
                 std::unique_ptr<AddressPool> pool);
  void Log(LogLevel level, const std::string& message) const;
  // The DNS forwarder, started for the first job with an allowlist (jobs
  // without one never pay for its thread and sockets).
  Result<DnsForwarder*> Dns();
  // The job's table for `spec`: PlanJobTable, without logging when the
  // service reports no events.
  Result<NftTablePlan> PlanJob(const JobAddressing& addressing, const NetworkSpec& spec) const;
  // A free address slot whose host link does not exist.
  Result<JobAddresses> AllocateFreeSlot();
  // Commits a table for `spec` on a free slot (TablePreparer's Prepare).
  Result<JobAddresses> PrepareTable(const NetworkSpec& spec);
  // Deletes prepared tables nobody took and returns their slots.
  void DropPreparedTables(std::vector<JobAddresses> tables);

  const NetworkServiceConfig config_;
  // Declared before what the instance makes, so released after it.
  UniqueFd claim_;
  const unsigned instance_;
  const std::string interface_prefix_;
  uint16_t nflog_group_ = 0;
  std::unique_ptr<AddressPool> pool_;
  // Every change to this service's tables goes through it: when owned, no
  // other socket may make one. Closed last: the kernel then deletes whatever
  // owned table is left.
  std::unique_ptr<NftSocket> nft_;
  std::unique_ptr<JobTables> tables_;
  std::unique_ptr<ConnectionEvents> events_;
  std::unique_ptr<NflogListener> nflog_;
  // The upstream resolver (checked by Start) for the forwarder.
  sockaddr_storage upstream_{};
  socklen_t upstream_len_ = 0;
  std::mutex dns_mutex_;
  std::unique_ptr<DnsForwarder> dns_;  // guarded by dns_mutex_ until made
  std::unique_ptr<TablePreparer> preparer_;
  std::unique_ptr<LinkReaper> reaper_;
};

}  // namespace ralph::sandbox
