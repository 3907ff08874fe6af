// UEFI Secure Boot over an EfiVarStoreInterface: the firmware's state (the
// SecureBoot and SetupMode variables) and the enrollment of an owner's
// keys (PK, KEK, db) on a machine in setup mode (docs/secure-boot.md).
//
// The signed lists are made on a build host with efitools
// (cert-to-efi-sig-list, sign-efi-sig-list): each is an
// EFI_VARIABLE_AUTHENTICATION_2 header (a timestamp and a PKCS#7 signature
// by the level above) followed by EFI_SIGNATURE_LISTs. The firmware checks
// the signatures; this code checks the framing, so that a truncated or
// wrong file is refused by name before any variable is written.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "platform/efi_vars.h"
#include "platform/result.h"

namespace ralph {

// EFI_IMAGE_SECURITY_DATABASE_GUID: db, dbx.
extern const EfiGuid kEfiImageSecurityDatabaseGuid;
// EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS: PK, KEK and db are
// written with it (and the authentication header in the data).
inline constexpr uint32_t kEfiVariableTimeBasedAuthenticatedWriteAccess = 0x20;
inline constexpr uint32_t kEfiVariableSecureBootKeyAttributes =
    kEfiVariableDefaultAttributes | kEfiVariableTimeBasedAuthenticatedWriteAccess;

struct SecureBootState {
  bool supported = false;   // the firmware has a SecureBoot variable
  bool enabled = false;     // SecureBoot is 1: the firmware verifies images
  bool setup_mode = false;  // SetupMode is 1: no PK, keys can be enrolled
};

// Reads SecureBoot and SetupMode (EFI global variables). A firmware without
// them (no Secure Boot support) is `supported == false`, not an error;
// a variable that is not one byte of 0 or 1 is kCorrupt, naming it.
Result<SecureBootState> ReadSecureBootState(EfiVarStoreInterface& store);

// "on", "off (setup mode: no keys enrolled)", "off", "not supported by the
// firmware".
std::string DescribeSecureBoot(const SecureBootState& state);

// The three signed lists, as sign-efi-sig-list writes them.
struct SecureBootKeyLists {
  std::vector<uint8_t> pk;   // signed by the PK itself
  std::vector<uint8_t> kek;  // signed by the PK
  std::vector<uint8_t> db;   // signed by a KEK
};

// Checks the framing of one signed list: the authentication header (a
// WIN_CERTIFICATE_UEFI_GUID of type PKCS#7 that fits), then one or more
// EFI_SIGNATURE_LISTs that fill the rest exactly, each of whole entries.
// kInvalidArgument naming `name` and what is wrong.
Result<void> CheckSignedKeyList(std::string_view name, std::span<const uint8_t> data);

// Enrolls the owner's keys: refuses unless the firmware is in setup mode
// (kInvalidState: a PK is enrolled already), checks all three lists before
// writing any, then writes db, KEK and PK, in that order: the PK write
// ends setup mode, after which only signed updates are accepted. Secure Boot
// is enforced from the next boot on.
Result<void> EnrollSecureBootKeys(EfiVarStoreInterface& store, const SecureBootKeyLists& lists);

}  // namespace ralph
