// Fuzzes the VM control protocol's decoders (sandbox/vm/protocol.h) with
// what a hostile guest (or host) could send: the input is a byte stream
// split into frames; every frame must decode or be refused with an error,
// never crash, hang or read out of bounds, and what decodes must encode
// again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "sandbox/vm/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace vm = ralph::sandbox::vm;
  vm::FrameDecoder decoder;
  // In two pieces, as reads deliver them.
  std::string_view input(reinterpret_cast<const char*>(data), size);
  decoder.Feed(input.substr(0, size / 2));
  for (int piece = 0; piece < 2; ++piece) {
    for (;;) {
      auto frame = decoder.Next();
      if (!frame || !*frame) break;
      if (auto guest = vm::DecodeGuestMessage(**frame); guest) {
        if (!vm::EncodeGuestMessage(*guest)) std::abort();
      }
      if (auto host = vm::DecodeHostMessage(**frame); host) {
        if (!vm::EncodeHostMessage(*host)) std::abort();
      }
    }
    if (piece == 0) decoder.Feed(input.substr(size / 2));
  }
  return 0;
}
