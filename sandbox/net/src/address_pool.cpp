#include "sandbox/net/address_pool.h"

#include <algorithm>
#include <memory>

#include <fmt/format.h>

namespace ralph::sandbox {
namespace {

// Sets the bits of `value` into `prefix` right below bit position `end_bit`
// (counted from the most significant bit), `width` bits wide.
void PutBits(IpPrefix& prefix, unsigned end_bit, unsigned width, uint64_t value) {
  for (unsigned i = 0; i < width; ++i) {
    unsigned bit = end_bit - 1 - i;
    if ((value >> i) & 1) prefix.bytes[bit / 8] |= static_cast<uint8_t>(0x80 >> (bit % 8));
  }
}

constexpr size_t kMaxSlots = 65536;  // ifnames are "rj<slot>"; keeps them short

}  // namespace

Result<std::unique_ptr<AddressPool>> AddressPool::Create(const IpPrefix& v4_pool,
                                                         const IpPrefix& v6_pool) {
  if (v4_pool.family != IpFamily::kV4 || v4_pool.length > JobAddresses::kV4LinkLength) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("IPv4 job pool {}: must be an IPv4 prefix of /30 or wider",
                                   v4_pool.ToString()));
  }
  auto ula = IpPrefix::Parse("fc00::/7");
  if (v6_pool.family != IpFamily::kV6 || v6_pool.length > JobAddresses::kV6LinkLength ||
      !ula->Contains(v6_pool)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("IPv6 job pool {}: must be a ULA (fc00::/7) prefix of /64 "
                                   "or wider",
                                   v6_pool.ToString()));
  }
  unsigned v4_bits = JobAddresses::kV4LinkLength - v4_pool.length;
  unsigned v6_bits = JobAddresses::kV6LinkLength - v6_pool.length;
  unsigned bits = std::min({v4_bits, v6_bits, 16u});
  size_t slots = std::min(kMaxSlots, size_t{1} << bits);
  return std::unique_ptr<AddressPool>(new AddressPool(v4_pool, v6_pool, slots));
}

Result<JobAddresses> AddressPool::Allocate() {
  std::lock_guard lock(mutex_);
  auto free_slot = std::find(used_.begin(), used_.end(), false);
  if (free_slot == used_.end()) {
    return Error::Make(ErrorCode::kNoSpace,
                       fmt::format("job address pool {} + {}: all {} slots in use",
                                   v4_pool_.ToString(), v6_pool_.ToString(), used_.size()));
  }
  *free_slot = true;
  uint32_t slot = static_cast<uint32_t>(free_slot - used_.begin());

  JobAddresses addresses;
  addresses.slot = slot;
  IpPrefix v4 = v4_pool_;
  v4.length = 32;
  PutBits(v4, JobAddresses::kV4LinkLength, JobAddresses::kV4LinkLength - v4_pool_.length, slot);
  addresses.host_v4 = v4;
  addresses.host_v4.bytes[3] |= 1;
  addresses.job_v4 = v4;
  addresses.job_v4.bytes[3] |= 2;

  IpPrefix v6 = v6_pool_;
  v6.length = 128;
  PutBits(v6, JobAddresses::kV6LinkLength, JobAddresses::kV6LinkLength - v6_pool_.length, slot);
  addresses.host_v6 = v6;
  addresses.host_v6.bytes[15] = 1;
  addresses.job_v6 = v6;
  addresses.job_v6.bytes[15] = 2;
  return addresses;
}

void AddressPool::Release(uint32_t slot) {
  std::lock_guard lock(mutex_);
  if (slot < used_.size()) used_[slot] = false;
}

size_t AddressPool::in_use() const {
  std::lock_guard lock(mutex_);
  return static_cast<size_t>(std::count(used_.begin(), used_.end(), true));
}

}  // namespace ralph::sandbox
