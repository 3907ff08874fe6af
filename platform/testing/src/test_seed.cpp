#include "platform/testing/test_seed.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace ralph::testing {
namespace {

uint32_t ChooseSeed() {
  const char* text = std::getenv("RALPH_TEST_SEED");
  if (text == nullptr || *text == '\0') return std::random_device{}();
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

}  // namespace

uint32_t TestSeed() {
  static const uint32_t seed = [] {
    uint32_t chosen = ChooseSeed();
    std::fprintf(stderr, "RALPH_TEST_SEED=%u (set it to replay this run)\n", chosen);
    return chosen;
  }();
  return seed;
}

}  // namespace ralph::testing
