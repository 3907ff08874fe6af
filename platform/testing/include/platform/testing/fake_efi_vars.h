// FakeEfiVarStore: an in-memory EfiVarStoreInterface for unit tests.
//
// Besides storing variables it can inject the failures a real NVRAM shows
// (ENOSPC when full, EIO, a write that tears and leaves partial data, a
// read-only store), counts writes, and calls a hook after every write that
// changed the store, so a test can snapshot the store at each point where
// power could be cut.
//
// A "write" is every Set or Delete call that reaches the store (also one that
// changes nothing); write indices below count those calls from 0.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "platform/efi_vars.h"

namespace ralph {

enum class EfiFault {
  kNoSpace,   // fails with kNoSpace, stores nothing
  kIo,        // fails with kIo, stores nothing
  kTorn,      // stores the first half of the data (a delete goes through),
              // then fails with kIo
  kReadOnly,  // fails with kReadOnly, stores nothing
};

std::string_view EfiFaultName(EfiFault fault);
inline constexpr EfiFault kAllEfiFaults[] = {EfiFault::kNoSpace, EfiFault::kIo, EfiFault::kTorn,
                                             EfiFault::kReadOnly};

class FakeEfiVarStore final : public EfiVarStoreInterface {
 public:
  using Key = std::pair<EfiGuid, std::string>;
  using Contents = std::map<Key, EfiVariable>;
  // Called after every Set/Delete that changed the contents (including a
  // torn write), with the store as it now is.
  using WriteHook = std::function<void(const FakeEfiVarStore&)>;

  FakeEfiVarStore() = default;
  explicit FakeEfiVarStore(Contents contents) : contents_(std::move(contents)) {}

  Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) override;
  Result<void> Set(const EfiGuid& guid, std::string_view name, std::span<const uint8_t> data,
                   uint32_t attributes) override;
  Result<void> Delete(const EfiGuid& guid, std::string_view name) override;
  Result<std::vector<std::string>> List(const EfiGuid& guid) override;

  // Fails the write with index `write_index` (counted over the store's
  // lifetime, see write_calls()) with `fault`. One fault per index.
  void InjectFault(uint64_t write_index, EfiFault fault);
  // Every later write fails with kReadOnly (true) or works again (false).
  void SetReadOnly(bool read_only) { read_only_ = read_only; }
  // Every later Get/List fails with kIo (true) or works again (false).
  void SetReadsFail(bool fail) { reads_fail_ = fail; }
  void ClearFaults() {
    faults_.clear();
    read_only_ = false;
    reads_fail_ = false;
  }
  void SetWriteHook(WriteHook hook) { hook_ = std::move(hook); }

  // Counters: Set/Delete calls made (failed ones included), and those that
  // changed the store.
  uint64_t write_calls() const { return write_calls_; }
  uint64_t sets() const { return sets_; }
  uint64_t deletes() const { return deletes_; }
  uint64_t changes() const { return sets_ + deletes_; }
  void ResetCounters() {
    sets_ = 0;
    deletes_ = 0;
    write_log_.clear();
  }
  // The names written (Set or Delete that changed the store) since the last
  // ResetCounters(), in order; "Boot0001", "-BootNext" for a delete.
  const std::vector<std::string>& write_log() const { return write_log_; }

  // The whole store, for snapshots and for building a new store from one.
  const Contents& contents() const { return contents_; }
  // Direct access for tests that plant bad data; bypasses faults and counters.
  void Put(const EfiGuid& guid, std::string_view name, std::vector<uint8_t> data,
           uint32_t attributes = kEfiVariableDefaultAttributes);
  void Erase(const EfiGuid& guid, std::string_view name);
  std::optional<std::vector<uint8_t>> Peek(const EfiGuid& guid, std::string_view name) const;

 private:
  // The fault for this write call, if any; advances the call counter.
  std::optional<EfiFault> NextFault();

  Contents contents_;
  std::map<uint64_t, EfiFault> faults_;
  bool read_only_ = false;
  bool reads_fail_ = false;
  WriteHook hook_;
  uint64_t write_calls_ = 0;
  uint64_t sets_ = 0;
  uint64_t deletes_ = 0;
  std::vector<std::string> write_log_;
};

}  // namespace ralph
