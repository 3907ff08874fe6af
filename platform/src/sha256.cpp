#include "platform/sha256.h"

#include <openssl/evp.h>

#include <fmt/format.h>

namespace ralph {

void Sha256::ContextDeleter::operator()(evp_md_ctx_st* context) const {
  EVP_MD_CTX_free(context);
}

Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;
Sha256::~Sha256() = default;

Result<Sha256> Sha256::Create() {
  std::unique_ptr<evp_md_ctx_st, ContextDeleter> context(EVP_MD_CTX_new());
  if (!context) return Error::Make(ErrorCode::kInternal, "EVP_MD_CTX_new failed");
  if (EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
    return Error::Make(ErrorCode::kInternal, "EVP_DigestInit_ex(SHA-256) failed");
  }
  return Sha256(std::move(context));
}

Result<void> Sha256::Update(std::span<const uint8_t> data) {
  if (!context_ || finished_) {
    return Error::Make(ErrorCode::kInvalidState, "SHA-256 update after Finish()");
  }
  if (data.empty()) return {};
  if (EVP_DigestUpdate(context_.get(), data.data(), data.size()) != 1) {
    return Error::Make(ErrorCode::kInternal, "EVP_DigestUpdate failed");
  }
  return {};
}

Result<Sha256Digest> Sha256::Finish() {
  if (!context_ || finished_) {
    return Error::Make(ErrorCode::kInvalidState, "SHA-256 Finish() called twice");
  }
  Sha256Digest digest;
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(context_.get(), digest.data(), &size) != 1 || size != digest.size()) {
    return Error::Make(ErrorCode::kInternal, "EVP_DigestFinal_ex failed");
  }
  finished_ = true;
  return digest;
}

Result<void> Sha256::Reset() {
  if (!context_) return Error::Make(ErrorCode::kInvalidState, "SHA-256 hasher was moved from");
  if (EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr) != 1) {
    return Error::Make(ErrorCode::kInternal, "EVP_DigestInit_ex(SHA-256) failed");
  }
  finished_ = false;
  return {};
}

Result<Sha256Digest> Sha256::Of(std::span<const uint8_t> data) {
  Sha256 hasher = TRY(Create());
  TRY(hasher.Update(data));
  return hasher.Finish();
}

std::string DigestToHex(std::span<const uint8_t> digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(digest.size() * 2);
  for (uint8_t b : digest) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

Result<Sha256Digest> ParseSha256Hex(std::string_view hex) {
  if (hex.size() != kSha256Size * 2) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("SHA-256 digest must be 64 hex digits, got {} characters", hex.size()));
  }
  auto value = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Sha256Digest digest;
  for (size_t i = 0; i < digest.size(); ++i) {
    int high = value(hex[2 * i]);
    int low = value(hex[2 * i + 1]);
    if (high < 0 || low < 0) {
      size_t bad = high < 0 ? 2 * i : 2 * i + 1;
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("SHA-256 digest: '{}' at position {} is not a hex digit", hex[bad], bad));
    }
    digest[i] = static_cast<uint8_t>(high << 4 | low);
  }
  return digest;
}

}  // namespace ralph
