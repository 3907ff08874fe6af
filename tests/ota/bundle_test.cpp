// Unit tests: manifest parser, CMS signatures, bundle container checks.
#include <gtest/gtest.h>

#include <string>

#include "platform/sha256.h"
#include "services/ota/bundle/bundle.h"
#include "test_pki.h"
#include "test_util.h"

namespace ralph::ota {
namespace {

using testing::CertOptions;
using testing::KeyPair;
using testing::TempDir;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Manifest SampleManifest() {
  Manifest m;
  m.version = Version{1, 4, 0};
  m.product = "ralphos";
  m.arch = "x86_64";
  Payload rootfs{.name = "rootfs",
                 .type = PayloadType::kSystemImage,
                 .offset = 8192,
                 .size = 10000,
                 .chunk_size = 4096};
  rootfs.chunks.assign(3, Digest{});
  rootfs.chunks[1][0] = 1;
  Payload uki{
      .name = "uki", .type = PayloadType::kUki, .offset = 20480, .size = 100, .chunk_size = 4096};
  uki.chunks.assign(1, Digest{});
  m.payloads = {rootfs, uki};
  return m;
}

std::string SampleXml() {
  return *SerializeManifest(SampleManifest());
}

// Replaces the first occurrence of `from` in `xml`.
std::string Replace(std::string xml, const std::string& from, const std::string& to) {
  size_t at = xml.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) xml.replace(at, from.size(), to);
  return xml;
}

void ExpectCorrupt(const std::string& xml, const std::string& message_part) {
  auto result = ParseManifest(xml);
  ASSERT_FALSE(result.has_value()) << "accepted: " << xml;
  EXPECT_EQ(result.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(result.error().message().find(message_part), std::string::npos)
      << result.error().message();
}

TEST(ManifestTest, RoundTrips) {
  std::string xml = SampleXml();
  auto parsed = ParseManifest(xml);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(parsed->version, (Version{1, 4, 0}));
  EXPECT_EQ(parsed->product, "ralphos");
  ASSERT_EQ(parsed->payloads.size(), 2u);
  EXPECT_EQ(parsed->payloads[0].chunks.size(), 3u);
  EXPECT_EQ(parsed->payloads[0].chunks[1][0], 1);
  EXPECT_EQ(parsed->payloads[0].ChunkLength(2), 10000u - 8192u);
  EXPECT_EQ(*SerializeManifest(*parsed), xml);
}

TEST(ManifestTest, RejectsGarbageAndUnknownParts) {
  ExpectCorrupt("", "not well-formed XML");
  ExpectCorrupt("\x01\x02garbage", "not well-formed XML");
  ExpectCorrupt("<ralph-bundle format=\"1\">", "not well-formed XML");
  ExpectCorrupt("<other/>", "root element is <other>");
  ExpectCorrupt(Replace(SampleXml(), "<version>", "<extra/><version>"), "unknown element <extra>");
  ExpectCorrupt(Replace(SampleXml(), "arch=\"x86_64\"", "arch=\"x86_64\" board=\"pi\""),
                "<compatible>: unknown attribute 'board'");
  ExpectCorrupt(Replace(SampleXml(), "<chunk sha256", "<chunk index=\"0\" sha256"),
                "unknown attribute 'index'");
  ExpectCorrupt(Replace(SampleXml(), "format=\"1\"", "format=\"2\""), "format 2 is not supported");
  ExpectCorrupt(Replace(SampleXml(), "<version>1.4.0", "<version>1.4"), "not MAJOR.MINOR.PATCH");
  ExpectCorrupt(Replace(SampleXml(), "size=\"10000\"", "size=\"-5\""), "not a decimal number");
  ExpectCorrupt(Replace(SampleXml(), "size=\"10000\"", "size=\"010000\""), "not a decimal number");
  ExpectCorrupt(Replace(SampleXml(), "size=\"10000\"", "size=\"20000\""), "needs 5");
  ExpectCorrupt(Replace(SampleXml(), "chunk-size=\"4096\"", "chunk-size=\"5000\""),
                "not a power of two");
  ExpectCorrupt(Replace(SampleXml(), "offset=\"8192\"", "offset=\"8193\""), "not aligned");
  ExpectCorrupt(Replace(SampleXml(), "offset=\"20480\"", "offset=\"12288\""), "overlaps");
  ExpectCorrupt(Replace(SampleXml(), "type=\"uki\"", "type=\"system-image\""),
                "exactly one system-image");
  ExpectCorrupt(Replace(SampleXml(), "name=\"uki\"", "name=\"rootfs\""), "duplicate name");
  ExpectCorrupt(Replace(SampleXml(), "arch=\"x86_64\"", "arch=\"mips\""), "unknown arch 'mips'");
  ExpectCorrupt(Replace(SampleXml(), "<compatible", "hello<compatible"), "unexpected text");
  // Digests parse as every hex in the tree does (platform/hex.h): either
  // case, but only hex digits.
  ExpectCorrupt(Replace(SampleXml(), "sha256=\"0000", "sha256=\"xBCD"),
                "'x' at position 0 is not a hex digit");
  ExpectCorrupt(Replace(SampleXml(), "</ralph-bundle>", "</ralph-bundle><x/>"),
                "outside the root element");
  // 18446744073709551615 + offset overflows.
  ExpectCorrupt(Replace(SampleXml(), "size=\"100\"", "size=\"18446744073709551615\""), "chunks");
}

TEST(ManifestTest, VersionOrderIsNumericOrder) {
  auto a = *Version::Parse("1.10.0");
  auto b = *Version::Parse("1.9.4294967295");
  EXPECT_GT(a, b);
  EXPECT_EQ(a.ToString(), "1.10.0");
  EXPECT_FALSE(Version::Parse("1.2.4294967296").has_value());
  EXPECT_FALSE(Version::Parse("01.2.3").has_value());
  EXPECT_FALSE(Version::Parse("1.2.3.4").has_value());
}

class SignatureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = testing::MakeCa(dir_.path(), "ca");
    signer_ = testing::MakeSigner(dir_.path(), "signer", ca_);
    std::filesystem::create_directory(dir_ / "keyring");
    std::filesystem::copy_file(ca_.cert_path, dir_ / "keyring/ca.pem");
  }
  Keyring LoadKeyring(const std::string& crl = "") {
    auto k = Keyring::Load(dir_ / "keyring", crl);
    EXPECT_TRUE(k.has_value()) << k.error().ToString();
    return std::move(*k);
  }
  void ExpectRefused(const std::string& data, const std::vector<uint8_t>& sig,
                     const Keyring& keyring, const std::string& message_part) {
    auto result = VerifyDetached(Bytes(data), sig, keyring);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code(), ErrorCode::kVerificationFailed);
    EXPECT_NE(result.error().message().find(message_part), std::string::npos)
        << result.error().message();
  }
  TempDir dir_;
  KeyPair ca_, signer_;
};

TEST_F(SignatureTest, SignsAndVerifies) {
  std::string data = "<manifest/>";
  auto sig = SignDetached(Bytes(data), signer_.cert_path, signer_.key_path);
  ASSERT_TRUE(sig.has_value()) << sig.error().ToString();
  Keyring keyring = LoadKeyring();
  auto info = VerifyDetached(Bytes(data), *sig, keyring);
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_NE(info->subject.find("CN=RalphOS test signer"), std::string::npos) << info->subject;
}

TEST_F(SignatureTest, RefusesTamperedData) {
  std::string data = "<manifest version=\"1\"/>";
  auto sig = *SignDetached(Bytes(data), signer_.cert_path, signer_.key_path);
  ExpectRefused("<manifest version=\"2\"/>", sig, LoadKeyring(), "does not match the manifest");
}

TEST_F(SignatureTest, RefusesSignerOutsideKeyring) {
  KeyPair other_ca = testing::MakeCa(dir_.path(), "other-ca");
  CertOptions o;
  o.common_name = "intruder";
  KeyPair intruder = testing::MakeSigner(dir_.path(), "intruder", other_ca, o);
  std::string data = "<m/>";
  auto sig = *SignDetached(Bytes(data), intruder.cert_path, intruder.key_path);
  ExpectRefused(data, sig, LoadKeyring(), "signer 'CN=intruder,O=RalphOS tests' is not trusted");
}

TEST_F(SignatureTest, RefusesExpiredSigner) {
  CertOptions o;
  o.not_before_days = -30;
  o.not_after_days = -1;
  KeyPair expired = testing::MakeSigner(dir_.path(), "expired", ca_, o);
  std::string data = "<m/>";
  auto sig = *SignDetached(Bytes(data), expired.cert_path, expired.key_path);
  ExpectRefused(data, sig, LoadKeyring(), "certificate has expired");
}

TEST_F(SignatureTest, RefusesSignerWithoutCodeSigningUsage) {
  CertOptions no_eku;
  no_eku.code_signing_eku = false;
  KeyPair mail = testing::MakeSigner(dir_.path(), "mail", ca_, no_eku);
  std::string data = "<m/>";
  ExpectRefused(data, *SignDetached(Bytes(data), mail.cert_path, mail.key_path), LoadKeyring(),
                "lacks the codeSigning extended key usage");
  CertOptions no_ku;
  no_ku.digital_signature_ku = false;
  KeyPair enc = testing::MakeSigner(dir_.path(), "enc", ca_, no_ku);
  ExpectRefused(data, *SignDetached(Bytes(data), enc.cert_path, enc.key_path), LoadKeyring(),
                "does not allow digitalSignature");
}

TEST_F(SignatureTest, RefusesRevokedSignerWithCrl) {
  std::string crl = testing::MakeCrl(dir_.path(), "ca", ca_, signer_.cert_path);
  std::string data = "<m/>";
  auto sig = *SignDetached(Bytes(data), signer_.cert_path, signer_.key_path);
  ExpectRefused(data, sig, LoadKeyring(crl), "certificate revoked");
  // Another signer of the same CA is still fine.
  KeyPair good = testing::MakeSigner(dir_.path(), "good", ca_);
  auto ok = VerifyDetached(Bytes(data), *SignDetached(Bytes(data), good.cert_path, good.key_path),
                           LoadKeyring(crl));
  EXPECT_TRUE(ok.has_value()) << ok.error().ToString();
}

TEST_F(SignatureTest, RejectsGarbageSignatureAndBadKeyring) {
  std::vector<uint8_t> garbage = {0x30, 0x03, 0x02, 0x01, 0x00};
  auto r = VerifyDetached(Bytes("x"), garbage, LoadKeyring());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  auto missing = Keyring::Load(dir_ / "nope");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  std::filesystem::create_directory(dir_ / "empty");
  auto empty = Keyring::Load(dir_ / "empty");
  ASSERT_FALSE(empty.has_value());
  EXPECT_NE(empty.error().message().find("holds no certificate"), std::string::npos);
  auto mismatch = SignDetached(Bytes("x"), signer_.cert_path, ca_.key_path);
  ASSERT_FALSE(mismatch.has_value());
  EXPECT_NE(mismatch.error().message().find("does not belong to certificate"), std::string::npos);
}

class BundleFileTest : public SignatureTest {
 protected:
  std::string Build(const std::string& name, Version version = {1, 0, 0}) {
    testing::WriteFile(dir_ / "rootfs.img", testing::RandomBytes(3 * 4096 + 17, 1));
    testing::WriteFile(dir_ / "uki.efi", testing::RandomBytes(5000, 2));
    CreateOptions o;
    o.cert_path = signer_.cert_path;
    o.key_path = signer_.key_path;
    o.version = version;
    o.product = "ralphos";
    o.arch = "x86_64";
    o.rootfs_path = dir_ / "rootfs.img";
    o.uki_path = dir_ / "uki.efi";
    o.chunk_size = 4096;
    o.output_path = dir_ / name;
    auto m = CreateBundle(o);
    EXPECT_TRUE(m.has_value()) << m.error().ToString();
    return o.output_path;
  }
  Result<OpenedBundle> Open(const std::string& path) {
    auto source = FileSource::Open(path);
    if (!source) return source.error();
    return OpenBundle(**source, LoadKeyring());
  }
};

TEST_F(BundleFileTest, CreatesAndOpens) {
  std::string path = Build("good.rbundle");
  auto bundle = Open(path);
  ASSERT_TRUE(bundle.has_value()) << bundle.error().ToString();
  const Payload* rootfs = bundle->manifest.Find(PayloadType::kSystemImage);
  ASSERT_NE(rootfs, nullptr);
  EXPECT_EQ(rootfs->size, 3u * 4096 + 17);
  EXPECT_EQ(rootfs->offset % kPayloadAlignment, 0u);
  auto file = testing::ReadFileBytes(path);
  auto image = testing::ReadFileBytes(dir_ / "rootfs.img");
  EXPECT_TRUE(std::equal(image.begin(), image.end(), file.begin() + rootfs->offset));
  EXPECT_EQ(*Sha256::Of(image), rootfs->sha256);
}

TEST_F(BundleFileTest, RefusesManifestTamperedAfterSigning) {
  std::string path = Build("t.rbundle");
  auto file = testing::ReadFileBytes(path);
  std::string text(file.begin(), file.end());
  size_t at = text.find("<version>1.0.0");
  ASSERT_NE(at, std::string::npos);
  file[at + 9] = '9';  // 9.0.0: same length, different bytes
  testing::WriteFile(path, file);
  auto r = Open(path);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kVerificationFailed);
  EXPECT_NE(r.error().message().find("verifying bundle signature: signature by"), std::string::npos)
      << r.error().message();
}

TEST_F(BundleFileTest, RefusesTruncatedAndPaddedFiles) {
  std::string path = Build("t.rbundle");
  auto file = testing::ReadFileBytes(path);
  for (size_t cut : {size_t{10}, size_t{100}, file.size() / 2, file.size() - 1}) {
    testing::WriteFile(path, std::vector<uint8_t>(file.begin(), file.begin() + cut));
    auto r = Open(path);
    ASSERT_FALSE(r.has_value()) << cut;
    EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << r.error().ToString();
    EXPECT_NE(r.error().message().find("truncated"), std::string::npos) << r.error().message();
  }
  auto longer = file;
  longer.push_back(0);
  testing::WriteFile(path, longer);
  auto r = Open(path);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("trailing data"), std::string::npos) << r.error().message();
}

TEST_F(BundleFileTest, RefusesBadHeader) {
  std::string path = Build("t.rbundle");
  auto file = testing::ReadFileBytes(path);
  auto bad_magic = file;
  bad_magic[0] = 'X';
  testing::WriteFile(path, bad_magic);
  EXPECT_NE(Open(path).error().message().find("bad magic"), std::string::npos);
  auto bad_reserved = file;
  bad_reserved[40] = 1;
  testing::WriteFile(path, bad_reserved);
  EXPECT_NE(Open(path).error().message().find("reserved byte 40"), std::string::npos);
  auto huge_manifest = file;
  huge_manifest[16 + 6] = 0x7f;
  testing::WriteFile(path, huge_manifest);
  EXPECT_NE(Open(path).error().message().find("manifest length"), std::string::npos);
}

TEST_F(BundleFileTest, SignatureFromAnotherBundleIsRefused) {
  std::string a = Build("a.rbundle", {1, 0, 0});
  auto bundle_a = testing::ReadFileBytes(a);
  std::string b = Build("b.rbundle", {2, 0, 0});
  auto bundle_b = testing::ReadFileBytes(b);
  auto header_a = *DecodeBundleHeader(bundle_a, bundle_a.size());
  auto header_b = *DecodeBundleHeader(bundle_b, bundle_b.size());
  ASSERT_EQ(header_a.manifest_length, header_b.manifest_length);
  // b's manifest with a's signature (the same length for ECDSA only by luck,
  // so splice lengths consistently: rebuild the file from parts).
  std::vector<uint8_t> spliced(bundle_b.begin(), bundle_b.begin() + header_b.signature_offset());
  spliced.insert(spliced.end(), bundle_a.begin() + header_a.signature_offset(),
                 bundle_a.begin() + header_a.signature_end());
  BundleHeader h = header_b;
  h.signature_length = header_a.signature_length;
  auto encoded = EncodeBundleHeader(h);
  std::copy(encoded.begin(), encoded.end(), spliced.begin());
  testing::WriteFile(b, spliced);
  auto source = *FileSource::Open(b);
  // Payload bounds may not fit the spliced file, but the signature is checked first.
  auto r = OpenBundle(*source, LoadKeyring());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kVerificationFailed) << r.error().ToString();
  EXPECT_NE(r.error().message().find("does not match the manifest"), std::string::npos);
}

}  // namespace
}  // namespace ralph::ota
