// UEFI variables behind a small interface, so that the slot manager runs
// against a fake or a directory in tests and against NVRAM on the appliance.
//
// EfiVarStoreInterface is what the slot manager reads and writes. Two
// implementations: LibefivarStore (platform/efivar_store.h), which goes
// through libefivar and so works against the real efivarfs and, with
// EFIVARFS_PATH=/some/dir/ set, against a plain directory; and
// FakeEfiVarStore (platform/testing/fake_efi_vars.h), in memory, which can
// inject failures.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"

namespace ralph {

struct EfiGuid {
  // The 16 bytes in EFI_GUID memory order (first three fields little-endian).
  std::array<uint8_t, 16> bytes{};

  // Parses "8be4df61-93ca-11d2-aa0d-00e098032b8c"; kInvalidArgument otherwise.
  static Result<EfiGuid> Parse(std::string_view text);
  // Lower-case canonical text form.
  std::string ToString() const;
  friend bool operator==(const EfiGuid&, const EfiGuid&) = default;
  friend auto operator<=>(const EfiGuid&, const EfiGuid&) = default;
};

// EFI_GLOBAL_VARIABLE: Boot####, BootOrder, BootNext, BootCurrent.
extern const EfiGuid kEfiGlobalGuid;
// RalphOS vendor GUID for RalphSlotState.
extern const EfiGuid kRalphVendorGuid;

// Variable attributes (UEFI spec 2.10, section 8.2).
inline constexpr uint32_t kEfiVariableNonVolatile = 0x1;
inline constexpr uint32_t kEfiVariableBootserviceAccess = 0x2;
inline constexpr uint32_t kEfiVariableRuntimeAccess = 0x4;
inline constexpr uint32_t kEfiVariableDefaultAttributes =
    kEfiVariableNonVolatile | kEfiVariableBootserviceAccess | kEfiVariableRuntimeAccess;

struct EfiVariable {
  std::vector<uint8_t> data;
  uint32_t attributes = kEfiVariableDefaultAttributes;
};

class EfiVarStoreInterface {
 public:
  virtual ~EfiVarStoreInterface() = default;

  // kNotFound when the variable does not exist.
  virtual Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) = 0;
  // Creates or replaces the variable. kNoSpace when NVRAM is full, kReadOnly
  // when the store cannot be written, kIo otherwise.
  virtual Result<void> Set(const EfiGuid& guid, std::string_view name,
                           std::span<const uint8_t> data, uint32_t attributes) = 0;
  // Deletes the variable; deleting an absent one succeeds.
  virtual Result<void> Delete(const EfiGuid& guid, std::string_view name) = 0;
  // Names of all variables with this GUID, sorted.
  virtual Result<std::vector<std::string>> List(const EfiGuid& guid) = 0;
};

}  // namespace ralph
