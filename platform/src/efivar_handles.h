// Scoped handles and conversions for libefivar/libefiboot (freed on every
// error path).
// Private to platform/: no other layer sees libefivar's headers.
#pragma once

// efivar 37's headers have no extern "C" guards of their own.
extern "C" {
#include <efivar/efivar.h>
}

#include <cstdlib>
#include <cstring>
#include <memory>

#include "platform/efi_vars.h"

namespace ralph::efivar {

// libefivar hands out malloc()ed buffers (efi_get_variable's data,
// efi_guid_to_str's text) that the caller must free().
struct FreeDeleter {
  void operator()(void* pointer) const { std::free(pointer); }
};
template <typename T>
using MallocPtr = std::unique_ptr<T, FreeDeleter>;

// efi_guid_t is the EFI_GUID memory layout (a, b, c little-endian on the
// little-endian targets we build for; d and e as bytes), as is EfiGuid::bytes.
static_assert(sizeof(efi_guid_t) == 16);

inline efi_guid_t ToEfivar(const EfiGuid& guid) {
  efi_guid_t out;
  std::memcpy(&out, guid.bytes.data(), sizeof(out));
  return out;
}

inline EfiGuid FromEfivar(const efi_guid_t& guid) {
  EfiGuid out;
  std::memcpy(out.bytes.data(), &guid, sizeof(guid));
  return out;
}

// libefivar pushes onto a process-global error stack on every failure and
// never pops it; clear it after each failed call so it does not grow.
inline void ClearErrorStack() {
  efi_error_clear();
}

}  // namespace ralph::efivar
