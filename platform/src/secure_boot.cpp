#include "platform/secure_boot.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "platform/efivar_store.h"

namespace ralph {

// d719b2cb-3d3a-4596-a3bc-dad00e67656f in EFI_GUID memory order.
const EfiGuid kEfiImageSecurityDatabaseGuid{{0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3,
                                             0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f}};

namespace {

// EFI_CERT_TYPE_PKCS7_GUID 4aafd29d-68df-49ee-8aa9-347d375665a7.
constexpr uint8_t kCertTypePkcs7[16] = {0x9d, 0xd2, 0xaf, 0x4a, 0xdf, 0x68, 0xee, 0x49,
                                        0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7};
constexpr size_t kEfiTimeSize = 16;
// WIN_CERTIFICATE (dwLength, wRevision, wCertificateType) + CertType GUID.
constexpr size_t kWinCertificateUefiGuidSize = 4 + 2 + 2 + 16;
constexpr uint16_t kWinCertificateRevision = 0x0200;
constexpr uint16_t kWinCertTypeEfiGuid = 0x0EF1;
// EFI_SIGNATURE_LIST: SignatureType GUID, ListSize, HeaderSize, SignatureSize.
constexpr size_t kSignatureListHeaderSize = 16 + 4 + 4 + 4;
// EFI_SIGNATURE_DATA: the owner GUID before the signature data.
constexpr size_t kSignatureOwnerSize = 16;

uint32_t Le32(std::span<const uint8_t> data, size_t at) {
  return static_cast<uint32_t>(data[at]) | static_cast<uint32_t>(data[at + 1]) << 8 |
         static_cast<uint32_t>(data[at + 2]) << 16 | static_cast<uint32_t>(data[at + 3]) << 24;
}
uint16_t Le16(std::span<const uint8_t> data, size_t at) {
  return static_cast<uint16_t>(data[at] | data[at + 1] << 8);
}

Error Malformed(std::string_view name, std::string what) {
  return Error::Make(
      ErrorCode::kInvalidArgument,
      fmt::format("the signed {} list (efitools' sign-efi-sig-list output) {}", name, what));
}

// A one-byte boolean variable; nullopt when it does not exist.
Result<std::optional<bool>> ReadFlag(EfiVarStoreInterface& store, std::string_view name) {
  Result<EfiVariable> variable = store.Get(kEfiGlobalGuid, name);
  if (!variable) {
    if (variable.error().code() == ErrorCode::kNotFound) return std::optional<bool>();
    return variable.error();
  }
  if (variable->data.size() != 1 || variable->data[0] > 1) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{} holds {} bytes, not one byte 0 or 1",
                                   EfiVariableId(kEfiGlobalGuid, name), variable->data.size()));
  }
  return std::optional<bool>(variable->data[0] == 1);
}

}  // namespace

Result<SecureBootState> ReadSecureBootState(EfiVarStoreInterface& store) {
  SecureBootState state;
  std::optional<bool> secure_boot = TRY(ReadFlag(store, "SecureBoot"));
  std::optional<bool> setup_mode = TRY(ReadFlag(store, "SetupMode"));
  state.supported = secure_boot.has_value();
  state.enabled = secure_boot.value_or(false);
  state.setup_mode = setup_mode.value_or(false);
  return state;
}

std::string DescribeSecureBoot(const SecureBootState& state) {
  if (!state.supported) return "not supported by the firmware";
  if (state.enabled) return "on";
  if (state.setup_mode) return "off (setup mode: no keys enrolled)";
  return "off";
}

Result<void> CheckSignedKeyList(std::string_view name, std::span<const uint8_t> data) {
  if (data.size() < kEfiTimeSize + kWinCertificateUefiGuidSize) {
    return Malformed(
        name, fmt::format("is {} bytes, shorter than its authentication header", data.size()));
  }
  size_t cert = kEfiTimeSize;
  uint32_t cert_length = Le32(data, cert);
  if (Le16(data, cert + 4) != kWinCertificateRevision ||
      Le16(data, cert + 6) != kWinCertTypeEfiGuid ||
      !std::equal(std::begin(kCertTypePkcs7), std::end(kCertTypePkcs7), data.begin() + cert + 8)) {
    return Malformed(name, "has no PKCS#7 authentication header (not a signed variable update)");
  }
  if (cert_length <= kWinCertificateUefiGuidSize || cert_length > data.size() - cert) {
    return Malformed(name, fmt::format("has a signature of {} bytes in {} bytes after the "
                                       "timestamp",
                                       cert_length, data.size() - cert));
  }
  size_t at = cert + cert_length;
  if (at == data.size()) return Malformed(name, "holds no signature list (it would clear the key)");
  size_t entries = 0;
  while (at < data.size()) {
    if (data.size() - at < kSignatureListHeaderSize) {
      return Malformed(name, fmt::format("ends inside a signature list header at byte {}", at));
    }
    uint32_t list_size = Le32(data, at + 16);
    uint32_t header_size = Le32(data, at + 20);
    uint32_t entry_size = Le32(data, at + 24);
    if (list_size > data.size() - at ||
        list_size < kSignatureListHeaderSize + static_cast<uint64_t>(header_size) ||
        entry_size <= kSignatureOwnerSize ||
        (list_size - kSignatureListHeaderSize - header_size) % entry_size != 0 ||
        list_size == kSignatureListHeaderSize + header_size) {
      return Malformed(name, fmt::format("has a bad signature list at byte {} (size {}, header "
                                         "{}, entries of {} bytes, {} bytes left)",
                                         at, list_size, header_size, entry_size, data.size() - at));
    }
    entries += (list_size - kSignatureListHeaderSize - header_size) / entry_size;
    at += list_size;
  }
  if (name == "PK" && entries != 1) {
    return Malformed(name, fmt::format("holds {} keys; the platform key is one", entries));
  }
  return {};
}

Result<void> EnrollSecureBootKeys(EfiVarStoreInterface& store, const SecureBootKeyLists& lists) {
  struct Write {
    const EfiGuid& guid;
    std::string_view name;
    const std::vector<uint8_t>& data;
  };
  // db and KEK while setup mode still accepts them; PK last, since writing
  // it ends setup mode.
  const Write writes[] = {{kEfiImageSecurityDatabaseGuid, "db", lists.db},
                          {kEfiGlobalGuid, "KEK", lists.kek},
                          {kEfiGlobalGuid, "PK", lists.pk}};
  for (const Write& write : writes) TRY(CheckSignedKeyList(write.name, write.data));
  SecureBootState state = TRY_CTX(ReadSecureBootState(store), "reading the Secure Boot state");
  if (!state.supported) {
    return Error::Make(ErrorCode::kUnsupported,
                       "the firmware has no SecureBoot variable: it does not support Secure Boot");
  }
  if (!state.setup_mode) {
    return Error::Make(ErrorCode::kInvalidState,
                       fmt::format("the firmware is not in setup mode (Secure Boot {}): a "
                                   "platform key is enrolled already; clear the keys in the "
                                   "firmware's setup first",
                                   DescribeSecureBoot(state)));
  }
  for (const Write& write : writes) {
    TRY_CTX(store.Set(write.guid, write.name, write.data, kEfiVariableSecureBootKeyAttributes),
            fmt::format("enrolling {}", write.name));
  }
  return {};
}

}  // namespace ralph
