// unique_ptr aliases for the OpenSSL handles the bundle code uses (freed on
// every error path), and OpenSSL error-queue formatting. Private to
// services/ota/bundle.
#pragma once

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <memory>
#include <string>

namespace ralph::ota {

template <typename T, void (*F)(T*)>
struct OpensslDeleter {
  void operator()(T* p) const { F(p); }
};

inline void FreeBio(BIO* b) {
  BIO_free_all(b);
}
inline void FreeX509Stack(STACK_OF(X509) * s) {
  sk_X509_pop_free(s, X509_free);
}
// CMS_get0_signers returns a stack whose certificates the CMS owns.
inline void FreeX509StackShallow(STACK_OF(X509) * s) {
  sk_X509_free(s);
}

using BioPtr = std::unique_ptr<BIO, OpensslDeleter<BIO, FreeBio>>;
using X509Ptr = std::unique_ptr<X509, OpensslDeleter<X509, X509_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpensslDeleter<X509_STORE, X509_STORE_free>>;
using X509StoreCtxPtr =
    std::unique_ptr<X509_STORE_CTX, OpensslDeleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
using X509CrlPtr = std::unique_ptr<X509_CRL, OpensslDeleter<X509_CRL, X509_CRL_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpensslDeleter<EVP_PKEY, EVP_PKEY_free>>;
using CmsPtr =
    std::unique_ptr<CMS_ContentInfo, OpensslDeleter<CMS_ContentInfo, CMS_ContentInfo_free>>;
using X509StackPtr = std::unique_ptr<STACK_OF(X509), OpensslDeleter<STACK_OF(X509), FreeX509Stack>>;
using X509StackShallowPtr =
    std::unique_ptr<STACK_OF(X509), OpensslDeleter<STACK_OF(X509), FreeX509StackShallow>>;

// Drains the thread's OpenSSL error queue into "reason; reason" (the last
// error first is what users need, but all are kept), or "no OpenSSL error".
inline std::string TakeOpensslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof(buffer));
    if (!out.empty()) out += "; ";
    out += buffer;
  }
  return out.empty() ? "no OpenSSL error" : out;
}

}  // namespace ralph::ota
