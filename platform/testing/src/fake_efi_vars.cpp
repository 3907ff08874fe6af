#include "platform/testing/fake_efi_vars.h"

#include <algorithm>

namespace ralph {
namespace {

Error FaultError(EfiFault fault, std::string_view name) {
  std::string what = "writing EFI variable " + std::string(name);
  switch (fault) {
    case EfiFault::kNoSpace:
      return Error::Make(ErrorCode::kNoSpace, what + ": NVRAM full (injected ENOSPC)");
    case EfiFault::kIo: return Error::Make(ErrorCode::kIo, what + ": injected EIO");
    case EfiFault::kTorn:
      return Error::Make(ErrorCode::kIo, what + ": write torn, partial data stored (injected)");
    case EfiFault::kReadOnly:
      return Error::Make(ErrorCode::kReadOnly, what + ": store is read-only (injected)");
  }
  return Error::Make(ErrorCode::kInternal, what + ": unknown fault");
}

}  // namespace

std::string_view EfiFaultName(EfiFault fault) {
  switch (fault) {
    case EfiFault::kNoSpace: return "ENOSPC";
    case EfiFault::kIo: return "EIO";
    case EfiFault::kTorn: return "torn";
    case EfiFault::kReadOnly: return "read-only";
  }
  return "unknown";
}

Result<EfiVariable> FakeEfiVarStore::Get(const EfiGuid& guid, std::string_view name) {
  if (reads_fail_) {
    return Error::Make(ErrorCode::kIo,
                       "reading EFI variable " + std::string(name) + ": injected EIO");
  }
  auto it = contents_.find(Key{guid, std::string(name)});
  if (it == contents_.end()) {
    return Error::Make(ErrorCode::kNotFound,
                       "EFI variable " + std::string(name) + "-" + guid.ToString() + " not found");
  }
  return it->second;
}

std::optional<EfiFault> FakeEfiVarStore::NextFault() {
  uint64_t index = write_calls_++;
  if (read_only_) return EfiFault::kReadOnly;
  auto it = faults_.find(index);
  if (it == faults_.end()) return std::nullopt;
  EfiFault fault = it->second;
  faults_.erase(it);
  return fault;
}

Result<void> FakeEfiVarStore::Set(const EfiGuid& guid, std::string_view name,
                                  std::span<const uint8_t> data, uint32_t attributes) {
  std::optional<EfiFault> fault = NextFault();
  if (fault && *fault != EfiFault::kTorn) return FaultError(*fault, name);
  EfiVariable variable;
  // A torn write keeps only a prefix, as a power cut in the middle of a
  // non-fault-tolerant flash write would.
  size_t kept = fault ? data.size() / 2 : data.size();
  variable.data.assign(data.begin(), data.begin() + static_cast<ptrdiff_t>(kept));
  variable.attributes = attributes;
  contents_[Key{guid, std::string(name)}] = std::move(variable);
  ++sets_;
  write_log_.push_back(std::string(name));
  if (hook_) hook_(*this);
  if (fault) return FaultError(*fault, name);
  return {};
}

Result<void> FakeEfiVarStore::Delete(const EfiGuid& guid, std::string_view name) {
  std::optional<EfiFault> fault = NextFault();
  if (fault && *fault != EfiFault::kTorn) return FaultError(*fault, name);
  bool erased = contents_.erase(Key{guid, std::string(name)}) > 0;
  if (erased) {
    ++deletes_;
    write_log_.push_back("-" + std::string(name));
    if (hook_) hook_(*this);
  }
  // A torn delete went through but reports failure: the caller cannot tell.
  if (fault) return FaultError(*fault, name);
  return {};
}

Result<std::vector<std::string>> FakeEfiVarStore::List(const EfiGuid& guid) {
  if (reads_fail_) return Error::Make(ErrorCode::kIo, "listing EFI variables: injected EIO");
  std::vector<std::string> names;
  for (const auto& [key, variable] : contents_) {
    if (key.first == guid) names.push_back(key.second);
  }
  std::sort(names.begin(), names.end());
  return names;
}

void FakeEfiVarStore::InjectFault(uint64_t write_index, EfiFault fault) {
  faults_[write_index] = fault;
}

void FakeEfiVarStore::Put(const EfiGuid& guid, std::string_view name, std::vector<uint8_t> data,
                          uint32_t attributes) {
  contents_[Key{guid, std::string(name)}] = EfiVariable{std::move(data), attributes};
}

void FakeEfiVarStore::Erase(const EfiGuid& guid, std::string_view name) {
  contents_.erase(Key{guid, std::string(name)});
}

std::optional<std::vector<uint8_t>> FakeEfiVarStore::Peek(const EfiGuid& guid,
                                                          std::string_view name) const {
  auto it = contents_.find(Key{guid, std::string(name)});
  if (it == contents_.end()) return std::nullopt;
  return it->second.data;
}

}  // namespace ralph
