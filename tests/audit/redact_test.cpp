// Redaction: secret keys and secret-looking values never reach the log.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "services/audit/redact.h"

namespace ralph::audit {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr std::string_view kPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----\n";

TEST(IsSecretKeyName, NamesThatHoldSecrets) {
  for (std::string_view key : {"token",
                               "api_key",
                               "apiKey",
                               "key",
                               "Authorization",
                               "set-cookie",
                               "Cookie",
                               "db_password",
                               "PASSWORD",
                               "accessToken",
                               "refresh_token",
                               "client_secret",
                               "passwd",
                               "ssh_passphrase",
                               "private_key",
                               "privateKey",
                               "credentials",
                               "X-Api-Key",
                               "aws_secret_access_key",
                               "authtoken"}) {
    EXPECT_TRUE(IsSecretKeyName(key)) << key;
  }
}

TEST(IsSecretKeyName, OrdinaryNamesAreKept) {
  for (std::string_view key : {"keyring", "max_tokens", "monkey", "version", "slot", "source",
                               "signer", "keyboard", "passed", "tokens_used", "author"}) {
    EXPECT_FALSE(IsSecretKeyName(key)) << key;
  }
}

TEST(RedactText, PemPrivateKeysAnyLabel) {
  std::string text = "key follows: " + std::string(kPem) + "done";
  std::string out = RedactText(text);
  EXPECT_EQ(out, "key follows: [REDACTED PRIVATE KEY]\ndone");
  std::string rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----";
  EXPECT_EQ(RedactText(rsa), "[REDACTED PRIVATE KEY]");
  std::string openssh =
      "x -----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY----- y";
  EXPECT_EQ(RedactText(openssh), "x [REDACTED PRIVATE KEY] y");
  // A cut-off key is still a secret: everything after BEGIN goes.
  EXPECT_EQ(RedactText("a -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE"), "a [REDACTED PRIVATE KEY]");
  // Certificates and public keys are not secrets.
  std::string cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
  EXPECT_EQ(RedactText(cert), cert);
}

TEST(RedactText, BearerTokens) {
  EXPECT_EQ(RedactText("Authorization: Bearer abc.DEF-123_x~+/="),
            "Authorization: Bearer [REDACTED]");
  EXPECT_EQ(RedactText("sent bearer\tq1w2e3r4 to host"), "sent bearer\t[REDACTED] to host");
  // Prose that happens to use the word loses the next word: redaction errs
  // on the side of secrecy. The word alone, or inside another word, is kept.
  EXPECT_EQ(RedactText("the bearer of news"), "the bearer [REDACTED] news");
  EXPECT_EQ(RedactText("bearer"), "bearer");
  EXPECT_EQ(RedactText("cobearer xyz"), "cobearer xyz");
}

TEST(RedactText, JsonWebTokens) {
  std::string jwt =
      "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_"
      "XgL0n3I9PlFUP0THsR8U";
  EXPECT_EQ(RedactText("token " + jwt + " end"), "token [REDACTED] end");
  EXPECT_EQ(RedactText("eyJ is just text"), "eyJ is just text");
}

TEST(RedactText, UrlPasswordsAndSecretQueryParameters) {
  EXPECT_EQ(RedactText("fetching https://ops:hunter2@updates.example/b.rbundle"),
            "fetching https://ops:[REDACTED]@updates.example/b.rbundle");
  EXPECT_EQ(RedactText("https://u.example/b.rbundle?version=2&access_token=s3cr3t&x=1#frag"),
            "https://u.example/b.rbundle?version=2&access_token=[REDACTED]&x=1#frag");
  EXPECT_EQ(RedactText("https://u.example/x?sig=1;api_key=zzz"),
            "https://u.example/x?sig=1;api_key=[REDACTED]");
  // A user name without a password, and ordinary URLs, are kept.
  EXPECT_EQ(RedactText("https://ops@host/x?keyring=/etc/k"), "https://ops@host/x?keyring=/etc/k");
  EXPECT_EQ(RedactText("no url here"), "no url here");
}

TEST(RedactText, HeaderLinesWithASecretName) {
  EXPECT_EQ(RedactText("Authorization: Basic dXNlcjpwYXNz"), "Authorization: Basic [REDACTED]");
  EXPECT_EQ(RedactText("X-Api-Key: abc def\nAccept: */*"), "X-Api-Key: [REDACTED]\nAccept: */*");
  EXPECT_EQ(RedactText("Cookie: session=1; theme=dark"), "Cookie: [REDACTED]");
  // Only at the start of a line, and only names of secrets.
  EXPECT_EQ(RedactText("Accept: text/plain"), "Accept: text/plain");
  EXPECT_EQ(RedactText("the missing key: foo"), "the missing key: foo");
}

TEST(RedactText, OptionsAndAssignmentsWithASecretName) {
  EXPECT_EQ(RedactText("--token=abc"), "--token=[REDACTED]");
  EXPECT_EQ(RedactText("-password=hunter2"), "-password=[REDACTED]");
  EXPECT_EQ(RedactText("GITHUB_TOKEN=ghp_1234"), "GITHUB_TOKEN=[REDACTED]");
  EXPECT_EQ(RedactText("env AWS_SECRET_ACCESS_KEY=wJalr make"),
            "env AWS_SECRET_ACCESS_KEY=[REDACTED] make");
  EXPECT_EQ(RedactText("curl --api-key abc https://x"), "curl --api-key [REDACTED] https://x");
  EXPECT_EQ(RedactText("run --password 'two words' now"), "run --password '[REDACTED]' now");
  EXPECT_EQ(RedactText("DB_PASSWORD=\"s p\" ./run"), "DB_PASSWORD=\"[REDACTED]\" ./run");
  EXPECT_EQ(RedactText("sh -c 'TOKEN=x; curl'"), "sh -c 'TOKEN=[REDACTED]; curl'");
  // The next word is another option: nothing to take.
  EXPECT_EQ(RedactText("--token --verbose"), "--token --verbose");
  // Names that are not secrets, and secret words inside other words.
  for (std::string_view kept : {"--max_tokens=5", "PATH=/usr/bin", "--keyring=/k", "a=b",
                                "monkey=1", "tokens_used=3 --output out"}) {
    EXPECT_EQ(RedactText(kept), kept);
  }
}

TEST(RedactArgv, TheArgumentAfterASecretOptionGoesWhole) {
  std::vector<std::string> argv = {"curl",
                                   "--api-key",
                                   "abc",
                                   "-H",
                                   "Authorization: Bearer eyJz.abc",
                                   "--token=t0k",
                                   "https://user:pw@host/x?access_token=q",
                                   "GITHUB_TOKEN=ghp_x",
                                   "--password",
                                   "--looks-like-an-option",
                                   "plain",
                                   "--output",
                                   "out.txt"};
  EXPECT_EQ(
      RedactArgv(argv),
      (std::vector<std::string>{
          "curl", "--api-key", "[REDACTED]", "-H", "Authorization: Bearer [REDACTED]",
          "--token=[REDACTED]", "https://user:[REDACTED]@host/x?access_token=[REDACTED]",
          "GITHUB_TOKEN=[REDACTED]", "--password", "[REDACTED]", "plain", "--output", "out.txt"}));
  // A secret option as the last argument has nothing after it.
  EXPECT_EQ(RedactArgv({"x", "--token"}), (std::vector<std::string>{"x", "--token"}));
  EXPECT_TRUE(RedactArgv({}).empty());
}

TEST(RedactJson, SecretMembersWhateverTheirTypeAndNesting) {
  json in = {
      {"version", "2.5.0"},
      {"api_key", "AKIA1234"},
      {"password", 1234},
      {"credentials", {{"user", "ops"}, {"pw", "x"}}},
      {"headers", {{"Authorization", "Basic dXNlcjpwYXNz"}, {"Accept", "*/*"}}},
      {"list", json::array({"Bearer zzzzzzzz", {{"token", "t"}}, 3})},
      {"cookie", nullptr},
      {"notes", std::string("pem: ") + std::string(kPem)},
  };
  json out = RedactJson(in);
  EXPECT_EQ(out["version"], "2.5.0");
  EXPECT_EQ(out["api_key"], "[REDACTED]");
  EXPECT_EQ(out["password"], "[REDACTED]");
  EXPECT_EQ(out["credentials"], "[REDACTED]");
  EXPECT_EQ(out["headers"]["Authorization"], "[REDACTED]");
  EXPECT_EQ(out["headers"]["Accept"], "*/*");
  EXPECT_EQ(out["list"][0], "Bearer [REDACTED]");
  EXPECT_EQ(out["list"][1]["token"], "[REDACTED]");
  EXPECT_EQ(out["list"][2], 3);
  EXPECT_TRUE(out["cookie"].is_null());
  EXPECT_EQ(out["notes"], "pem: [REDACTED PRIVATE KEY]\n");
  std::string dumped = out.dump();
  for (std::string_view secret : {"AKIA1234", "1234", "dXNlcjpwYXNz", "zzzzzzzz", "MIIEvQ"}) {
    EXPECT_THAT(dumped, Not(HasSubstr(std::string(secret)))) << secret;
  }
}

// The audit log stores details as they are when NeedsRedaction says so:
// it must see every secret RedactJson removes, wherever it is nested.
TEST(NeedsRedaction, SeesEverySecretRedactJsonRemoves) {
  const json plain = {{"caller", "uid:0"},
                      {"state", "running"},
                      {"argv", {"make", "-j2", "CC=gcc", "--verbose"}},
                      {"url", "https://example.com/a?b=c#d"},
                      {"header", "Accept: */*"},
                      {"n", 3},
                      {"cookie", nullptr},
                      {"nested", {{"path", "/var/lib/ralph"}, {"list", {1, 2.5, true}}}}};
  EXPECT_FALSE(NeedsRedaction(plain));
  EXPECT_EQ(RedactJson(plain), plain);
  const std::vector<json> secrets = {
      {{"api_key", "AKIA1234"}},
      {{"password", 1234}},
      {{"credentials", {{"user", "ops"}}}},
      {{"headers", {{"Authorization", "Basic dXNlcjpwYXNz"}}}},
      {{"note", "Authorization: Basic dXNlcjpwYXNz"}},
      {{"list", json::array({"Bearer zzzzzzzz"})}},
      {{"list", json::array({json::array({{{"token", "t"}}})})}},
      {{"url", "https://u:pw@example.com/"}},
      {{"url", "https://example.com/?access_token=abc"}},
      {{"jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"}},
      {{"cmd", "deploy --token=abc"}},
      {{"env", "GITHUB_TOKEN=abc"}},
      {{"cmd", "deploy --api-key abc"}},
      {{"notes", std::string(kPem)}},
  };
  for (const json& secret : secrets) {
    json value = plain;
    value["extra"] = secret;
    EXPECT_TRUE(NeedsRedaction(value)) << secret.dump();
    EXPECT_NE(RedactJson(value), value) << secret.dump();
  }
}

}  // namespace
}  // namespace ralph::audit
