#include "tests/support/test_seed.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>

namespace ralph::testing {
namespace {

// RALPH_TEST_SEED, or `fallback` (a fresh seed when unset) without it.
uint32_t ChooseSeed(std::optional<uint32_t> fallback) {
  const char* text = std::getenv("RALPH_TEST_SEED");
  if (text == nullptr || *text == '\0') return fallback ? *fallback : std::random_device{}();
  errno = 0;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0' || text[0] == '-' || value > UINT32_MAX) {
    std::fprintf(stderr, "RALPH_TEST_SEED=%s is not a seed (a decimal number 0..4294967295)\n",
                 text);
    std::abort();
  }
  return static_cast<uint32_t>(value);
}

uint32_t Announce(uint32_t seed) {
  std::fprintf(stderr, "RALPH_TEST_SEED=%u (set it to replay this run)\n", seed);
  return seed;
}

}  // namespace

uint32_t TestSeed() {
  static const uint32_t seed = Announce(ChooseSeed(std::nullopt));
  return seed;
}

uint32_t TestSeedOr(uint32_t fallback) {
  static const uint32_t seed = Announce(ChooseSeed(fallback));
  return seed;
}

}  // namespace ralph::testing
