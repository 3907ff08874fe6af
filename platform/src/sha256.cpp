#include "platform/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <vector>

#include <fmt/format.h>

#include "platform/hex.h"
#include "platform/unique_fd.h"

namespace ralph {

void Sha256::ContextDeleter::operator()(evp_md_ctx_st* context) const {
  EVP_MD_CTX_free(context);
}

namespace {

// EVP_sha256() is a legacy handle: OpenSSL 3 fetches the provider's
// implementation behind it at every EVP_DigestInit_ex (a name lookup under a
// lock), a third of the cost of hashing a short input such as an audit row.
// Fetched once here; never freed (it lives as long as the process).
const EVP_MD* Sha256Md() {
  static const EVP_MD* const md = [] {
    const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return fetched != nullptr ? fetched : EVP_sha256();
  }();
  return md;
}

}  // namespace

Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;
Sha256::~Sha256() = default;

Result<Sha256> Sha256::Create() {
  std::unique_ptr<evp_md_ctx_st, ContextDeleter> context(EVP_MD_CTX_new());
  if (!context) return Error::Make(ErrorCode::kInternal, "EVP_MD_CTX_new failed");
  if (EVP_DigestInit_ex(context.get(), Sha256Md(), nullptr) != 1) {
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
  if (EVP_DigestInit_ex(context_.get(), Sha256Md(), nullptr) != 1) {
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

Result<Sha256Digest> Sha256OfFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  Sha256 hasher = TRY(Sha256::Create());
  std::vector<uint8_t> buffer(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", path), errno);
    if (n == 0) break;
    TRY(hasher.Update(std::span<const uint8_t>(buffer.data(), static_cast<size_t>(n))));
  }
  return hasher.Finish();
}

std::string DigestToHex(std::span<const uint8_t> digest) {
  return HexEncode(digest);
}

Result<Sha256Digest> ParseSha256Hex(std::string_view hex) {
  Sha256Digest digest;
  TRY_CTX(HexDecodeInto(hex, digest), "SHA-256 digest");
  return digest;
}

}  // namespace ralph
