// Small helpers shared by the OTA tests.
#pragma once

#include "tests/support/temp_dir.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace ralph::ota::testing {

// A fresh temp directory (ralph-ota-XXXXXX), removed on destruction.
class TempDir : public ::ralph::testing::TempDir {
 public:
  TempDir() : ::ralph::testing::TempDir("ralph-ota") {}
};

inline std::vector<uint8_t> RandomBytes(size_t size, uint32_t seed) {
  std::vector<uint8_t> out(size);
  std::mt19937 rng(seed);
  for (size_t i = 0; i < size; i += 4) {
    uint32_t v = rng();
    for (size_t j = 0; j < 4 && i + j < size; ++j) out[i + j] = static_cast<uint8_t>(v >> (8 * j));
  }
  return out;
}

inline void WriteFile(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

inline std::vector<uint8_t> ReadFileBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

}  // namespace ralph::ota::testing
