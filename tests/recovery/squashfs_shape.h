// A squashfs-shaped slot image for the recovery tests: what the probes read
// of a real one (the magic, bytes_used at offset 40) and content derived
// from a seed, padded with zeros to 4 KiB as mksquashfs pads its file.
#pragma once

#include <cstdint>
#include <vector>

#include "drivers/verity.h"

namespace ralph::recovery {

inline std::vector<uint8_t> SquashfsShapedImage(uint64_t used, uint8_t seed) {
  std::vector<uint8_t> image((used + 4095) / 4096 * 4096, 0);
  for (uint64_t i = 0; i < used; ++i) image[i] = static_cast<uint8_t>(i * 31 + seed);
  image[0] = 'h', image[1] = 's', image[2] = 'q', image[3] = 's';
  for (int i = 0; i < 8; ++i) image[40 + i] = static_cast<uint8_t>(used >> (8 * i));
  return image;
}

// The same followed by a dm-verity hash tree's worth of bytes (their content
// is not checked by the probes, only hashed with the image), as a slot holds
// an image written by ralph-mkimage or the OTA writer.
inline std::vector<uint8_t> SlotShapedImage(uint64_t used, uint8_t seed) {
  std::vector<uint8_t> image = SquashfsShapedImage(used, seed);
  uint64_t tree = VerityTreeBytes(image.size() / kVerityBlockSize);
  for (uint64_t i = 0; i < tree; ++i) image.push_back(static_cast<uint8_t>(i * 7 + seed + 1));
  return image;
}

}  // namespace ralph::recovery
