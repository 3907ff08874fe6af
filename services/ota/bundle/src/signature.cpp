#include "services/ota/bundle/signature.h"

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include <fmt/format.h>

#include "openssl_util.h"

namespace ralph::ota {

struct Keyring::Impl {
  X509StorePtr store;
};

Keyring::Keyring(std::unique_ptr<Impl> impl, std::string path, size_t count)
    : impl_(std::move(impl)), path_(std::move(path)), certificate_count_(count) {}
Keyring::~Keyring() = default;
Keyring::Keyring(Keyring&&) noexcept = default;
Keyring& Keyring::operator=(Keyring&&) noexcept = default;

struct SignatureAccess {
  static X509_STORE* Store(const Keyring& k) { return k.impl_->store.get(); }
};

namespace {

Error Verification(std::string message) {
  return Error::Make(ErrorCode::kVerificationFailed, std::move(message));
}

BioPtr MemoryBio(std::span<const uint8_t> data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

Result<BioPtr> OpenFileBio(const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "rb"));
  if (!bio) {
    ERR_clear_error();
    return Error::FromErrno(fmt::format("open {}", path), errno);
  }
  return bio;
}

// Reads every PEM certificate of a file. kCorrupt when one does not parse.
Result<std::vector<X509Ptr>> ReadCertificates(const std::string& path) {
  BioPtr bio = TRY(OpenFileBio(path));
  std::vector<X509Ptr> certs;
  while (true) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) {
      unsigned long e = ERR_peek_last_error();
      if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();  // end of file
        break;
      }
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("{}: not a PEM certificate: {}", path, TakeOpensslErrors()));
    }
    certs.push_back(std::move(cert));
  }
  return certs;
}

std::string NameToString(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(length));
}

SignerInfo DescribeSigner(X509* cert) {
  SignerInfo info;
  info.subject = NameToString(X509_get_subject_name(cert));
  info.issuer = NameToString(X509_get_issuer_name(cert));
  BioPtr bio(BIO_new(BIO_s_mem()));
  ASN1_TIME_print(bio.get(), X509_get0_notAfter(cert));
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  info.not_after.assign(data, static_cast<size_t>(length));
  if (BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)) {
    if (char* hex = BN_bn2hex(bn)) {
      info.serial = hex;
      OPENSSL_free(hex);
    }
    BN_free(bn);
  }
  return info;
}

Result<CmsPtr> ParseCms(std::span<const uint8_t> signature) {
  if (signature.empty()) return Error::Make(ErrorCode::kCorrupt, "signature is empty");
  BioPtr bio = MemoryBio(signature);
  CmsPtr cms(d2i_CMS_bio(bio.get(), nullptr));
  if (!cms) {
    return Error::Make(ErrorCode::kCorrupt, fmt::format("signature is not a DER CMS structure: {}",
                                                        TakeOpensslErrors()));
  }
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed) {
    return Error::Make(ErrorCode::kCorrupt, "signature is a CMS structure but not SignedData");
  }
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(cms.get());
  int count = infos ? sk_CMS_SignerInfo_num(infos) : 0;
  if (count != 1) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("signature has {} signers, exactly one is accepted", count));
  }
  return cms;
}

// The certificate of the single signer among the certificates the CMS carries.
Result<X509Ptr> FindSignerCertificate(CMS_ContentInfo* cms) {
  CMS_SignerInfo* si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
  X509StackPtr certs(CMS_get1_certs(cms));
  for (int i = 0; certs && i < sk_X509_num(certs.get()); ++i) {
    X509* c = sk_X509_value(certs.get(), i);
    if (CMS_SignerInfo_cert_cmp(si, c) == 0) {
      X509_up_ref(c);
      return X509Ptr(c);
    }
  }
  return Error::Make(ErrorCode::kVerificationFailed,
                     "signature does not carry its signer's certificate");
}

}  // namespace

Result<Keyring> Keyring::Load(const std::string& path, const std::string& crl_path) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("keyring {} does not exist", path));
  }
  std::vector<std::string> files;
  if (std::filesystem::is_directory(status)) {
    for (auto it = std::filesystem::directory_iterator(path, ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      std::string ext = it->path().extension().string();
      if (ext == ".pem" || ext == ".crt") files.push_back(it->path().string());
    }
    if (ec) return Error::FromErrno(fmt::format("reading keyring directory {}", path), ec.value());
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  auto impl = std::make_unique<Impl>();
  impl->store.reset(X509_STORE_new());
  size_t count = 0;
  for (const std::string& file : files) {
    std::vector<X509Ptr> certs = TRY_CTX(ReadCertificates(file), "loading keyring");
    for (X509Ptr& cert : certs) {
      if (X509_STORE_add_cert(impl->store.get(), cert.get()) != 1) {
        // A duplicate certificate is harmless; anything else is not.
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
          return Error::Make(ErrorCode::kCorrupt,
                             fmt::format("loading keyring {}: {}", file, TakeOpensslErrors()));
        }
        ERR_clear_error();
      }
      ++count;
    }
  }
  if (count == 0) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("keyring {} holds no certificate", path));
  }
  // PARTIAL_CHAIN: a keyring may list the signing certificate itself rather
  // than its CA (as RAUC allows with its keyring option).
  unsigned long flags = X509_V_FLAG_PARTIAL_CHAIN;
  if (!crl_path.empty()) {
    BioPtr bio = TRY_CTX(OpenFileBio(crl_path), "loading CRL");
    size_t crls = 0;
    while (X509CrlPtr crl{PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)}) {
      X509_STORE_add_crl(impl->store.get(), crl.get());
      ++crls;
    }
    ERR_clear_error();
    if (crls == 0) {
      return Error::Make(ErrorCode::kCorrupt, fmt::format("CRL file {} holds no CRL", crl_path));
    }
    flags |= X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
  }
  X509_STORE_set_flags(impl->store.get(), flags);
  return Keyring(std::move(impl), path, count);
}

Result<std::vector<uint8_t>> SignDetached(std::span<const uint8_t> data,
                                          const std::string& cert_path, const std::string& key_path,
                                          const std::string& extra_certs_path,
                                          std::optional<int64_t> signing_time) {
  std::vector<X509Ptr> certs = TRY_CTX(ReadCertificates(cert_path), "loading signer certificate");
  if (certs.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} holds no certificate", cert_path));
  }
  BioPtr key_bio = TRY_CTX(OpenFileBio(key_path), "loading signing key");
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{}: not a PEM private key: {}", key_path, TakeOpensslErrors()));
  }
  if (X509_check_private_key(certs[0].get(), key.get()) != 1) {
    ERR_clear_error();
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("key {} does not belong to certificate {}", key_path, cert_path));
  }
  X509StackPtr extra(sk_X509_new_null());
  for (size_t i = 1; i < certs.size(); ++i) {
    sk_X509_push(extra.get(), certs[i].release());
  }
  if (!extra_certs_path.empty()) {
    for (X509Ptr& c : TRY_CTX(ReadCertificates(extra_certs_path), "loading extra certificates")) {
      sk_X509_push(extra.get(), c.release());
    }
  }
  BioPtr in = MemoryBio(data);
  constexpr unsigned kFlags = CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP;
  CmsPtr cms;
  if (!signing_time) {
    cms.reset(CMS_sign(certs[0].get(), key.get(), extra.get(), in.get(), kFlags));
    if (!cms) {
      return Error::Make(ErrorCode::kInternal, fmt::format("CMS_sign: {}", TakeOpensslErrors()));
    }
  } else {
    // A signingTime attribute set before CMS_final is kept: OpenSSL adds the
    // clock's only when the attribute is absent (CMS_SignerInfo_sign,
    // crypto/cms/cms_sd.c).
    cms.reset(CMS_sign(nullptr, nullptr, extra.get(), nullptr, kFlags | CMS_PARTIAL));
    CMS_SignerInfo* si =
        cms ? CMS_add1_signer(cms.get(), certs[0].get(), key.get(), nullptr, kFlags) : nullptr;
    std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> when(
        ASN1_TIME_set(nullptr, static_cast<time_t>(*signing_time)), &ASN1_TIME_free);
    if (!si || !when ||
        CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, when->type, when.get(), -1) != 1 ||
        CMS_final(cms.get(), in.get(), nullptr, kFlags) != 1) {
      return Error::Make(ErrorCode::kInternal,
                         fmt::format("CMS signing with a fixed time: {}", TakeOpensslErrors()));
    }
  }
  BioPtr out(BIO_new(BIO_s_mem()));
  if (i2d_CMS_bio(out.get(), cms.get()) != 1) {
    return Error::Make(ErrorCode::kInternal, fmt::format("i2d_CMS_bio: {}", TakeOpensslErrors()));
  }
  char* bytes = nullptr;
  long length = BIO_get_mem_data(out.get(), &bytes);
  return std::vector<uint8_t>(bytes, bytes + length);
}

Result<SignerInfo> ReadSigner(std::span<const uint8_t> signature) {
  CmsPtr cms = TRY(ParseCms(signature));
  X509Ptr signer = TRY(FindSignerCertificate(cms.get()));
  return DescribeSigner(signer.get());
}

Result<SignerInfo> VerifyDetached(std::span<const uint8_t> data, std::span<const uint8_t> signature,
                                  const Keyring& keyring) {
  ERR_clear_error();
  CmsPtr cms = TRY(ParseCms(signature));
  X509Ptr signer = TRY(FindSignerCertificate(cms.get()));
  SignerInfo info = DescribeSigner(signer.get());

  // 1. The signature itself: does it sign exactly these bytes? The chain is
  // checked separately below so that its failure reason can be reported.
  BioPtr content = MemoryBio(data);
  if (CMS_verify(cms.get(), nullptr, nullptr, content.get(), nullptr,
                 CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
    return Verification(fmt::format("signature by '{}' does not match the manifest: {}",
                                    info.subject, TakeOpensslErrors()));
  }

  // 2. Trust: the signer chains to the keyring, is valid now, not revoked.
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  X509StackPtr untrusted(CMS_get1_certs(cms.get()));
  if (X509_STORE_CTX_init(ctx.get(), SignatureAccess::Store(keyring), signer.get(),
                          untrusted.get()) != 1) {
    return Error::Make(ErrorCode::kInternal,
                       fmt::format("X509_STORE_CTX_init: {}", TakeOpensslErrors()));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Verification(fmt::format("signer '{}' is not trusted by keyring {}: {}", info.subject,
                                    keyring.path(), X509_verify_cert_error_string(err)));
  }

  // 3. Key usage: a release key must be meant for signing code.
  uint32_t ext_flags = X509_get_extension_flags(signer.get());
  if ((ext_flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(signer.get()) & KU_DIGITAL_SIGNATURE)) {
    return Verification(
        fmt::format("signer '{}' key usage does not allow digitalSignature", info.subject));
  }
  if (!(ext_flags & EXFLAG_XKUSAGE) ||
      !(X509_get_extended_key_usage(signer.get()) & XKU_CODE_SIGN)) {
    return Verification(
        fmt::format("signer '{}' lacks the codeSigning extended key usage", info.subject));
  }
  return info;
}

}  // namespace ralph::ota
