// Streaming SHA-256 for the OTA code (OpenSSL EVP; SHA-NI where the CPU has it).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "services/ota/manifest.h"

namespace ralph::ota {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void Update(std::span<const uint8_t> data);
  // Returns the digest and resets for a new message.
  Digest Finish();

  static Digest Of(std::span<const uint8_t> data);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ralph::ota
