#include "platform/crc32.h"

#include <zlib.h>

namespace ralph {

uint32_t Crc32(std::span<const uint8_t> data, uint32_t seed) {
  // zlib's crc32 takes a uInt length; feed it in bounded pieces.
  uLong crc = seed;
  const uint8_t* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    uInt n = left > (1u << 30) ? (1u << 30) : static_cast<uInt>(left);
    crc = crc32(crc, p, n);
    p += n;
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace ralph
