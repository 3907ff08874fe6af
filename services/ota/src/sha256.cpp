#include "services/ota/sha256.h"

#include <openssl/evp.h>

namespace ralph::ota {

struct Sha256::State {
  struct Deleter {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
  };
  std::unique_ptr<EVP_MD_CTX, Deleter> ctx{EVP_MD_CTX_new()};
};

// EVP_MD_CTX_new/EVP_DigestInit_ex fail only on allocation failure, which
// the rest of the process does not survive either (-fno-exceptions).
Sha256::Sha256() : state_(std::make_unique<State>()) {
  EVP_DigestInit_ex(state_->ctx.get(), EVP_sha256(), nullptr);
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Update(std::span<const uint8_t> data) {
  EVP_DigestUpdate(state_->ctx.get(), data.data(), data.size());
}

Digest Sha256::Finish() {
  Digest digest{};
  unsigned int length = 0;
  EVP_DigestFinal_ex(state_->ctx.get(), digest.data(), &length);
  EVP_DigestInit_ex(state_->ctx.get(), EVP_sha256(), nullptr);
  return digest;
}

Digest Sha256::Of(std::span<const uint8_t> data) {
  Sha256 h;
  h.Update(data);
  return h.Finish();
}

}  // namespace ralph::ota
