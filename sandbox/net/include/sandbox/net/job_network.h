// A job's network: its own netns joined to the host by a veth pair, with
// default-deny egress enforced by an nftables table on the host side and a
// DNS forwarder that answers only allowlisted names.
//
// Contract between the sandbox spawner (sandbox/) and the network code
// (sandbox/net/): the spawner clone3()s the job with CLONE_NEWNET and keeps
// it waiting; it then calls NetworkService::CreateJob() (network_service.h;
// the spawner owns its NetworkService) with the child's pid, which
// creates the veth pair with one end straight in the child's netns,
// configures lo/eth0/addresses/default route inside it (through an
// rtnetlink socket opened in that netns), commits the job's nft table in
// one batch (or takes one committed ahead for an equal spec:
// NetworkServiceConfig::prepared_tables) and registers the job with the DNS
// forwarder. Only then does the child continue. Destroying
// the JobNetwork (or Teardown()) removes the veth, the nft table and the DNS
// registration; the netns itself goes away with the job's last process.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::sandbox {

enum class Protocol { kTcp, kUdp, kAny };

// One allowlist entry: a destination address or CIDR (IPv4 or IPv6) and a
// port range. port_min = port_max = 0 means any port.
struct EgressRule {
  std::string cidr;  // "203.0.113.7", "203.0.113.0/24", "2001:db8::/32"
  uint16_t port_min = 0;
  uint16_t port_max = 0;
  Protocol protocol = Protocol::kTcp;
};

struct NetworkSpec {
  // false: the job gets a netns with only loopback (no veth at all).
  bool enabled = true;
  std::vector<EgressRule> allow;
  // Names (exact, or "*.example.com" for subdomains) the DNS forwarder
  // answers; each answered address is opened for the record's TTL.
  std::vector<std::string> allowed_domains;
  // Ports opened for addresses learned through allowed_domains.
  std::vector<uint16_t> domain_ports = {443};
};

// Whether a job with `spec` may send anything past its host-side resolver:
// it has an address allowlist or allowed domains. A job that may not gets
// no conntrack matches and no NAT chain (rule_plan.h) — nothing it sends is
// ever accepted past the host, so there is no connection to track or
// translate — and so registers neither in the kernel (the first user of a
// hook point switches its static key, patching every call site with IPIs to
// all CPUs: the dearest part of a launcher's network).
inline bool JobHasEgress(const NetworkSpec& spec) {
  return spec.enabled && (!spec.allow.empty() || !spec.allowed_domains.empty());
}

enum class NetVerdict { kAllowed, kDenied };

struct NetEvent {
  std::string job_id;
  std::string destination;  // address, or the queried name for DNS events
  uint16_t port = 0;
  Protocol protocol = Protocol::kAny;
  NetVerdict verdict = NetVerdict::kDenied;
  std::string reason;  // "allowlist", "metadata", "rfc1918", "dns: name not allowed", ...
};

class NetEventSinkInterface {
 public:
  virtual ~NetEventSinkInterface() = default;
  // Called from the network service's threads; must be thread-safe.
  virtual void OnNetEvent(const NetEvent& event) = 0;
};

class JobNetwork {
 public:
  // Made by NetworkService::CreateJob().
  virtual ~JobNetwork() = default;

  // Removes everything NetworkService::CreateJob() made. Idempotent.
  virtual Result<void> Teardown() = 0;
  // For a job whose processes have all
  // been reaped: removes what Teardown() removes except the veth pair, which
  // the kernel deletes together with the job's network namespace (netns
  // cleanup unregisters its devices, and a veth takes its peer along:
  // net/core/dev.c default_device_exit_batch, drivers/net/veth.c
  // veth_dellink) instead of an RTM_DELLINK here, whose unregistration waits
  // for RCU barriers (tens of ms on a busy host). Until the kernel has done
  // so the host-side name stays taken; Create() skips such slots. Meant for a
  // launcher that exits right after its job, like bwrap leaving its netns to
  // the kernel. Idempotent; default: Teardown().
  virtual Result<void> TeardownWithNamespace() { return Teardown(); }
  // The address the job must use as its only resolver (/etc/resolv.conf).
  virtual std::string resolver_address() const = 0;

  // The job's own addresses and the host end of its veth; empty when the spec
  // disables networking.
  virtual std::string job_address_v4() const { return {}; }
  virtual std::string job_address_v6() const { return {}; }
  virtual std::string resolver_address_v6() const { return {}; }
  virtual std::string host_interface() const { return {}; }
};

}  // namespace ralph::sandbox
