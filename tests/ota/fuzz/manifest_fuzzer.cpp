// libFuzzer target: the bundle manifest parser. Any input must either parse
// into a manifest that passes validation and re-serialises to a manifest that
// parses to the same thing, or be refused with kCorrupt; never crash, leak or
// hit undefined behaviour.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "services/ota/bundle/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view xml(reinterpret_cast<const char*>(data), size);
  auto manifest = ralph::ota::ParseManifest(xml);
  if (!manifest) {
    if (manifest.error().code() != ralph::ErrorCode::kCorrupt) std::abort();
    return 0;
  }
  auto again = ralph::ota::SerializeManifest(*manifest);
  if (!again) std::abort();
  auto reparsed = ralph::ota::ParseManifest(*again);
  if (!reparsed || reparsed->version != manifest->version ||
      reparsed->payloads.size() != manifest->payloads.size()) {
    std::abort();
  }
  return 0;
}
