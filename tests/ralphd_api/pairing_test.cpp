// The pairing string, the proof and the registry, with exporters given as
// bytes (the TLS binding itself is exercised in api_server_test).
#include "services/ralphd/api/pairing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fake_audit_sink.h"
#include "tests/support/temp_dir.h"

namespace ralph::ralphd::api {
namespace {

using std::chrono::system_clock;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<X509, decltype(&X509_free)> ParseCert(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return {cert, &X509_free};
}

TEST(PairingStringTest, FormatsTheDocumentedLayout) {
  PairingString offer;
  offer.address = "[fe80::1]:8443";
  offer.spki_sha256.fill(0xab);
  offer.id = "0123456789abcdef";
  offer.secret.fill(0x5a);
  offer.expires_unix = 1700000000;
  std::string ab, five_a;
  for (int i = 0; i < 32; ++i) ab += "ab";
  for (int i = 0; i < 16; ++i) five_a += "5a";
  EXPECT_EQ(offer.Format(), "ralphos-pair:v1?addr=[fe80::1]:8443&spki=" + ab +
                                "&id=0123456789abcdef&secret=" + five_a + "&exp=1700000000");
}

TEST(PairingStringTest, RoundTrips) {
  PairingString offer;
  offer.address = "192.168.1.20:8443";
  offer.spki_sha256.fill(0x01);
  offer.id = "0123456789abcdef";
  offer.secret.fill(0xfe);
  offer.expires_unix = 1700000600;
  auto parsed = PairingString::Parse(offer.Format());
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(parsed->address, offer.address);
  EXPECT_EQ(parsed->spki_sha256, offer.spki_sha256);
  EXPECT_EQ(parsed->id, offer.id);
  EXPECT_EQ(parsed->secret, offer.secret);
  EXPECT_EQ(parsed->expires_unix, offer.expires_unix);
}

TEST(PairingStringTest, ParseNamesTheBadField) {
  std::string spki(64, 'a'), secret(32, 'b');
  auto error = [&](const std::string& text) {
    auto parsed = PairingString::Parse(text);
    return parsed ? std::string("parsed") : parsed.error().message();
  };
  std::string good =
      "ralphos-pair:v1?addr=h:1&spki=" + spki + "&id=0123456789abcdef&secret=" + secret + "&exp=5";
  EXPECT_EQ(error(good), "parsed");
  EXPECT_THAT(error("ralphos-pair:v2?addr=h:1"), HasSubstr("starts with"));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    return text.replace(text.find(from), from.size(), to);
  };
  EXPECT_THAT(error(with("addr=h:1", "addr=h:0")), HasSubstr("port"));
  EXPECT_THAT(error(with("addr=h:1", "addr=h/x:1")), HasSubstr("addr"));
  EXPECT_THAT(error(with(spki, "abc")), HasSubstr("spki"));
  EXPECT_THAT(error("ralphos-pair:v1?addr=h:1&id=0123456789abcdef"), HasSubstr("spki"));
  EXPECT_THAT(error("ralphos-pair:v1?addr=h:1&spki=" + spki +
                    "&id=0123456789abcdef&secret=" + std::string(31, 'b') + "z&exp=5"),
              HasSubstr("secret"));
  EXPECT_THAT(error(good.substr(0, good.size() - 6)), HasSubstr("ends before field exp"));
  EXPECT_THAT(error(good + "&more=1"), HasSubstr("after exp"));
  EXPECT_THAT(error(good.substr(0, good.size() - 1) + "-5"), HasSubstr("exp"));
}

TEST(PairRequestTest, ParsesStrictly) {
  std::string proof(64, '0');
  auto error = [&](const std::string& text) {
    auto parsed = ParsePairRequest(text);
    return parsed ? std::string("parsed") : parsed.error().message();
  };
  std::string ok =
      R"({"id":"0123456789abcdef","name":"my laptop","csr":"x","proof":")" + proof + R"("})";
  EXPECT_EQ(error(ok), "parsed");
  EXPECT_THAT(error("{"), HasSubstr("not valid JSON"));
  EXPECT_THAT(error("[]"), HasSubstr("object"));
  EXPECT_THAT(error(ok.substr(0, ok.size() - 1) + R"(,"extra":1})"),
              HasSubstr("\"extra\" is unknown"));
  EXPECT_THAT(error(R"({"id":"0123456789abcdef","name":"n","csr":"x"})"),
              HasSubstr("\"proof\" is missing"));
  EXPECT_THAT(error(R"({"id":"0123456789abcdef","name":5,"csr":"x","proof":")" + proof + R"("})"),
              HasSubstr("\"name\" must be a string, not number"));
  EXPECT_THAT(
      error(R"({"id":"0123456789abcdef","name":"a/b","csr":"x","proof":")" + proof + R"("})"),
      HasSubstr("\"name\" has character '/'"));
  EXPECT_THAT(error(R"({"id":"0123","name":"n","csr":"x","proof":")" + proof + R"("})"),
              HasSubstr("\"id\""));
  EXPECT_THAT(error(R"({"id":"0123456789abcdef","name":"n","csr":"x","proof":"00"})"),
              HasSubstr("\"proof\""));
}

TEST(QrTest, RendersASquareOfHalfBlocks) {
  auto qr = RenderQrForTerminal("ralphos-pair:v1?addr=10.0.0.1:8443");
  ASSERT_TRUE(qr) << qr.error().ToString();
  EXPECT_THAT(*qr, HasSubstr("\u2588"));
  EXPECT_GT(std::count(qr->begin(), qr->end(), '\n'), 10);
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IdentityOptions identity_options;
    identity_options.clock = [this] { return now_; };
    auto identity = DeviceIdentity::LoadOrCreate(temp_.path() + "/identity", identity_options);
    ASSERT_TRUE(identity) << identity.error().ToString();
    identity_ = std::move(*identity);
    Reopen();
  }
  void Reopen() {
    registry_.reset();
    auto registry = PairingRegistry::Open(temp_.path() + "/pairings.db", *identity_, audit_);
    ASSERT_TRUE(registry) << registry.error().ToString();
    registry_ = std::move(*registry);
  }
  // A request for `offer` as an honest client on the session with `exporter`.
  PairRequest Request(const PairingString& offer, std::span<const uint8_t> exporter) {
    auto made = MakeClientKeyAndCsr("test");
    EXPECT_TRUE(made);
    PairRequest request;
    request.id = offer.id;
    request.name = "test client";
    request.csr_pem = made->csr_pem;
    request.proof =
        ComputePairingProof(offer.secret, offer.id, exporter, *CsrSpkiSha256(made->csr_pem));
    return request;
  }

  ralph::testing::TempDir temp_{"ralphd-pairing"};
  system_clock::time_point now_ = system_clock::now();
  audit::testing::FakeAuditSink audit_;
  std::unique_ptr<DeviceIdentity> identity_;
  std::unique_ptr<PairingRegistry> registry_;
  std::array<uint8_t, 32> session_a_{1, 2, 3};
  std::array<uint8_t, 32> session_b_{4, 5, 6};
};

TEST_F(RegistryTest, PairsOnceAndAuthorizesTheIssuedCertificate) {
  auto offer = registry_->CreateOffer("127.0.0.1:8443");
  ASSERT_TRUE(offer) << offer.error().ToString();
  EXPECT_EQ(offer->spki_sha256, identity_->spki_sha256());
  EXPECT_EQ(
      offer->expires_unix,
      std::chrono::duration_cast<std::chrono::seconds>(now_.time_since_epoch()).count() + 600);
  PairRequest request = Request(*offer, session_a_);
  auto paired = registry_->Pair(request, session_a_, "127.0.0.1");
  ASSERT_TRUE(paired) << paired.error().ToString();
  auto cert = ParseCert(paired->certificate_pem);
  ASSERT_TRUE(cert);
  auto client = registry_->Authorize(cert.get());
  ASSERT_TRUE(client) << client.error().ToString();
  EXPECT_EQ(client->name, "test client");
  EXPECT_EQ(client->id, paired->client.id);

  auto again = registry_->Pair(request, session_a_, "127.0.0.1");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(again.error().message(), HasSubstr("already used"));
  EXPECT_THAT(audit_.Types(), ElementsAre("pairing.offer", "pairing.paired", "pairing.refused"));
}

TEST_F(RegistryTest, AWrongSecretOrAnotherSessionsProofIsRefusedAndBurnsTheOffer) {
  auto offer = registry_->CreateOffer("127.0.0.1:8443");
  ASSERT_TRUE(offer);
  PairingString wrong = *offer;
  wrong.secret[0] ^= 1;
  auto bad_secret = registry_->Pair(Request(wrong, session_a_), session_a_, "x");
  ASSERT_FALSE(bad_secret);
  EXPECT_EQ(bad_secret.error().code(), ErrorCode::kVerificationFailed);
  // A proof captured on session A, replayed on session B.
  auto replayed = registry_->Pair(Request(*offer, session_a_), session_b_, "x");
  ASSERT_FALSE(replayed);
  EXPECT_EQ(replayed.error().code(), ErrorCode::kVerificationFailed);
  // A proof for one key sent with another key's CSR.
  PairRequest swapped = Request(*offer, session_a_);
  swapped.csr_pem = MakeClientKeyAndCsr("other")->csr_pem;
  auto third = registry_->Pair(swapped, session_a_, "x");
  ASSERT_FALSE(third);
  EXPECT_THAT(third.error().message(), HasSubstr("withdrawn"));
  // Burnt: even the right proof is refused now.
  auto right = registry_->Pair(Request(*offer, session_a_), session_a_, "x");
  ASSERT_FALSE(right);
  EXPECT_EQ(right.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(right.error().message(), HasSubstr("withdrawn after 3 wrong proofs"));
}

TEST_F(RegistryTest, AnExpiredOfferIsRefused) {
  auto offer = registry_->CreateOffer("127.0.0.1:8443");
  ASSERT_TRUE(offer);
  now_ += std::chrono::seconds(601);
  auto paired = registry_->Pair(Request(*offer, session_a_), session_a_, "x");
  ASSERT_FALSE(paired);
  EXPECT_EQ(paired.error().code(), ErrorCode::kInvalidState);
  EXPECT_THAT(paired.error().message(), HasSubstr("expired"));
}

TEST_F(RegistryTest, AttemptsAreRateLimited) {
  for (int i = 0; i < 10; ++i) {
    PairRequest request;
    request.id = "0000000000000000";
    auto result = registry_->Pair(request, session_a_, "x");
    ASSERT_FALSE(result);
    EXPECT_EQ(result.error().code(), ErrorCode::kNotFound) << i;
  }
  auto offer = registry_->CreateOffer("127.0.0.1:8443");
  ASSERT_TRUE(offer);
  auto limited = registry_->Pair(Request(*offer, session_a_), session_a_, "x");
  ASSERT_FALSE(limited);
  EXPECT_EQ(limited.error().code(), ErrorCode::kBusy);
  now_ += std::chrono::seconds(61);
  auto later = registry_->Pair(Request(*offer, session_a_), session_a_, "x");
  EXPECT_TRUE(later) << later.error().ToString();
}

TEST_F(RegistryTest, RevocationAndExpiryAreEnforcedAndSurviveReopening) {
  auto offer = registry_->CreateOffer("127.0.0.1:8443");
  auto paired = registry_->Pair(Request(*offer, session_a_), session_a_, "x");
  ASSERT_TRUE(paired) << paired.error().ToString();
  auto cert = ParseCert(paired->certificate_pem);
  ASSERT_TRUE(registry_->Revoke(paired->client.id, "test"));
  auto twice = registry_->Revoke(paired->client.id, "test");
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().code(), ErrorCode::kInvalidState);
  Reopen();
  auto list = registry_->List();
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_NE((*list)[0].revoked_unix, 0);
  auto refused = registry_->Authorize(cert.get());
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message(), HasSubstr("revoked"));
  auto rechecked = registry_->Recheck(paired->client.id);
  ASSERT_FALSE(rechecked);
  EXPECT_EQ(rechecked.error().code(), ErrorCode::kPermissionDenied);
  EXPECT_THAT(rechecked.error().message(), HasSubstr("revoked"));
  EXPECT_THAT(registry_->Recheck("00ff").error().message(), HasSubstr("not paired"));

  auto second = registry_->CreateOffer("127.0.0.1:8443");
  auto fresh = registry_->Pair(Request(*second, session_b_), session_b_, "x");
  ASSERT_TRUE(fresh) << fresh.error().ToString();
  auto fresh_cert = ParseCert(fresh->certificate_pem);
  EXPECT_TRUE(registry_->Authorize(fresh_cert.get()));
  EXPECT_TRUE(registry_->Recheck(fresh->client.id));
  now_ += std::chrono::hours(24 * 366);
  auto expired = registry_->Authorize(fresh_cert.get());
  ASSERT_FALSE(expired);
  EXPECT_THAT(expired.error().message(), HasSubstr("expired"));
  EXPECT_THAT(registry_->Recheck(fresh->client.id).error().message(), HasSubstr("expired"));
  EXPECT_THAT(registry_->Authorize(nullptr).error().message(), HasSubstr("pair first"));
}

TEST_F(RegistryTest, APairingThatCannotBeAuditedDoesNotHappen) {
  auto offer = registry_->CreateOffer("127.0.0.1:8443");
  ASSERT_TRUE(offer);
  audit_.Fail();
  auto paired = registry_->Pair(Request(*offer, session_a_), session_a_, "x");
  ASSERT_FALSE(paired);
  EXPECT_EQ(paired.error().code(), ErrorCode::kReadOnly);
  EXPECT_TRUE(registry_->List()->empty());
  audit_.Succeed();
  EXPECT_TRUE(registry_->Pair(Request(*offer, session_a_), session_a_, "x"));
}

TEST_F(RegistryTest, AFileThatIsNotARegistryIsRefused) {
  registry_.reset();
  std::string path = temp_.path() + "/other.db";
  ASSERT_EQ(std::system(("sqlite3 " + path + " 'CREATE TABLE t(x)'").c_str()), 0);
  auto opened = PairingRegistry::Open(path, *identity_, audit_);
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error().code(), ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace ralph::ralphd::api
