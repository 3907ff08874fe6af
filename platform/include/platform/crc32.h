// CRC-32 (IEEE 802.3, the zlib/PNG/GPT polynomial), computed by zlib.
#pragma once

#include <cstdint>
#include <span>

namespace ralph {

// CRC of `data`, continuing from `seed` (0 for a fresh CRC).
uint32_t Crc32(std::span<const uint8_t> data, uint32_t seed = 0);

}  // namespace ralph
