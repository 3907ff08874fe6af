// Per-job addressing from an IPv4 pool and an IPv6 ULA pool.
//
// Slot n gets the n-th /30 of the IPv4 pool (host end .1, job .2) and the
// n-th /64 of the IPv6 pool (host end ::1, job ::2). A slot is unique among
// live jobs and returns to the pool on Release(). Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "platform/result.h"
#include "sandbox/net/ip_prefix.h"

namespace ralph::sandbox {

struct JobAddresses {
  uint32_t slot = 0;
  IpPrefix host_v4;  // single addresses
  IpPrefix job_v4;
  IpPrefix host_v6;
  IpPrefix job_v6;
  static constexpr uint8_t kV4LinkLength = 30;
  static constexpr uint8_t kV6LinkLength = 64;
};

class AddressPool {
 public:
  // kInvalidArgument when a pool is of the wrong family, is smaller than one
  // /30 (/64), or the IPv6 pool is not inside fc00::/7 (ULA).
  static Result<std::unique_ptr<AddressPool>> Create(const IpPrefix& v4_pool,
                                                     const IpPrefix& v6_pool);

  // kNoSpace when every slot is in use.
  Result<JobAddresses> Allocate();
  // Returns a slot; releasing a free slot is a no-op.
  void Release(uint32_t slot);

  size_t capacity() const { return used_.size(); }
  size_t in_use() const;

 private:
  AddressPool(const IpPrefix& v4_pool, const IpPrefix& v6_pool, size_t slots)
      : v4_pool_(v4_pool), v6_pool_(v6_pool), used_(slots, false) {}

  IpPrefix v4_pool_;
  IpPrefix v6_pool_;
  mutable std::mutex mutex_;
  std::vector<bool> used_;
};

}  // namespace ralph::sandbox
