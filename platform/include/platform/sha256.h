// Streaming SHA-256 (FIPS 180-4), computed by OpenSSL's EVP interface, which
// stays behind this header. Used for image digests (drivers' block writer
// verification, OTA payloads and chunks, the slot state's image digest).
//
//   auto hasher = TRY(Sha256::Create());
//   TRY(hasher.Update(chunk1));
//   TRY(hasher.Update(chunk2));
//   Sha256Digest digest = TRY(hasher.Finish());
//   std::string hex = DigestToHex(digest);   // 64 lower-case hex digits
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "platform/result.h"

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace ralph {

inline constexpr size_t kSha256Size = 32;
using Sha256Digest = std::array<uint8_t, kSha256Size>;

class Sha256 {
 public:
  // kInternal when OpenSSL cannot allocate or initialise a context.
  static Result<Sha256> Create();

  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  ~Sha256();

  // Feeds more bytes. kInvalidState after Finish().
  Result<void> Update(std::span<const uint8_t> data);
  // The digest of everything fed so far; the hasher cannot be used after it
  // (kInvalidState), except through Reset().
  Result<Sha256Digest> Finish();
  // Starts a new digest with the same object.
  Result<void> Reset();

  // One-shot digest.
  static Result<Sha256Digest> Of(std::span<const uint8_t> data);

 private:
  struct ContextDeleter {
    void operator()(evp_md_ctx_st* context) const;
  };
  explicit Sha256(std::unique_ptr<evp_md_ctx_st, ContextDeleter> context)
      : context_(std::move(context)) {}

  std::unique_ptr<evp_md_ctx_st, ContextDeleter> context_;
  bool finished_ = false;
};

// Lower-case hex, two digits a byte (HexEncode, platform/hex.h).
// The digest of a whole file, read in 1 MiB pieces. kNotFound / kIo with the
// path when it cannot be opened or read.
Result<Sha256Digest> Sha256OfFile(const std::string& path);

std::string DigestToHex(std::span<const uint8_t> digest);
// Parses 64 hex digits (either case, HexDecode); kInvalidArgument naming
// what was wrong.
Result<Sha256Digest> ParseSha256Hex(std::string_view hex);

}  // namespace ralph
