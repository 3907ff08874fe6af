// The ralph-bundle host tool: create, then info with and without a keyring.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "test_pki.h"
#include "test_util.h"
#include "tests/support/loop_device.h"  // RunCommand
#include "tests/support/run_program.h"

namespace ralph::ota {
namespace {

TEST(RalphBundleCliTest, CreatesAndReportsVerdicts) {
  const char* binary_dir = std::getenv("RALPH_BINARY_DIR");
  ASSERT_NE(binary_dir, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
  std::string tool = std::string(binary_dir) + "/bin/ralph-bundle";
  testing::TempDir dir;
  testing::KeyPair ca = testing::MakeCa(dir.path(), "ca");
  testing::KeyPair signer = testing::MakeSigner(dir.path(), "signer", ca);
  testing::KeyPair other = testing::MakeCa(dir.path(), "other");
  testing::WriteFile(dir / "rootfs.img", testing::RandomBytes(300000, 1));
  testing::WriteFile(dir / "uki.efi", testing::RandomBytes(5000, 2));
  std::string bundle = dir / "x.rbundle";
  auto created = ralph::testing::RunCommand({tool,           "create",
                                             "--cert",       signer.cert_path,
                                             "--key",        signer.key_path,
                                             "--version",    "1.4.2",
                                             "--product",    "ralphos",
                                             "--arch",       "aarch64",
                                             "--rootfs",     dir / "rootfs.img",
                                             "--uki",        dir / "uki.efi",
                                             "--chunk-size", "65536",
                                             "-o",           bundle});
  ASSERT_TRUE(created.has_value()) << created.error().ToString();

  auto valid = ralph::testing::RunCommand({tool, "info", bundle, "--keyring", ca.cert_path});
  ASSERT_TRUE(valid.has_value()) << valid.error().ToString();
  EXPECT_NE(valid->find("version:    1.4.2"), std::string::npos) << *valid;
  EXPECT_NE(valid->find("compatible: ralphos / aarch64"), std::string::npos) << *valid;
  EXPECT_NE(valid->find("chunks 5 x 65536"), std::string::npos) << *valid;
  EXPECT_NE(valid->find("signer:     CN=RalphOS test signer"), std::string::npos) << *valid;
  EXPECT_NE(valid->find("verdict:    VALID"), std::string::npos) << *valid;

  auto untrusted = ralph::testing::RunCommand({tool, "info", bundle, "--keyring", other.cert_path});
  ASSERT_FALSE(untrusted.has_value());
  EXPECT_NE(untrusted.error().message().find("INVALID: verifying bundle signature: "
                                             "signer 'CN=RalphOS test signer,O=RalphOS tests' is "
                                             "not trusted"),
            std::string::npos)
      << untrusted.error().message();

  auto unverified = ralph::testing::RunCommand({tool, "info", bundle});
  ASSERT_FALSE(unverified.has_value());  // exit 2: not verified
  EXPECT_NE(unverified.error().message().find("NOT VERIFIED"), std::string::npos);

  // An agent-image bundle: its kind and its one payload in `info`.
  std::string agent = dir / "agent.rbundle";
  auto agent_created = ralph::testing::RunCommand(
      {tool, "create", "--kind", "agent-image", "--cert", signer.cert_path, "--key",
       signer.key_path, "--version", "2026.12.7", "--product", "ralphos", "--arch", "x86_64",
       "--agent-image", dir / "rootfs.img", "-o", agent});
  ASSERT_TRUE(agent_created.has_value()) << agent_created.error().ToString();
  auto agent_info = ralph::testing::RunCommand({tool, "info", agent, "--keyring", ca.cert_path});
  ASSERT_TRUE(agent_info.has_value()) << agent_info.error().ToString();
  EXPECT_NE(agent_info->find("kind:       agent-image"), std::string::npos) << *agent_info;
  EXPECT_NE(agent_info->find("payload agent-image agent-image"), std::string::npos) << *agent_info;
  EXPECT_NE(valid->find("kind:       system"), std::string::npos) << *valid;

  auto bad_version = ralph::testing::RunCommand(
      {tool, "create", "--cert", signer.cert_path, "--key", signer.key_path, "--version", "1.x",
       "--product", "ralphos", "--arch", "x86_64", "--rootfs", dir / "rootfs.img", "--uki",
       dir / "uki.efi", "-o", dir / "y.rbundle"});
  ASSERT_FALSE(bad_version.has_value());
  EXPECT_NE(
      bad_version.error().message().find("--version: version \"1.x\" is not MAJOR.MINOR.PATCH"),
      std::string::npos)
      << bad_version.error().message();
}

// --secure-boot-cert: a system bundle is made only when its UKI carries a
// Secure Boot signature that verifies against that db certificate; a UKI
// unsigned, or signed by another key, is refused with nothing written.
TEST(RalphBundleCliTest, SecureBootCertRefusesAUkiItDidNotSign) {
  const char* binary_dir = std::getenv("RALPH_BINARY_DIR");
  ASSERT_NE(binary_dir, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
  std::string tool = std::string(binary_dir) + "/bin/ralph-bundle";
  // A real PE image to sign: the systemd stub every UKI is made from.
  const std::string stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
  ASSERT_EQ(::access(stub.c_str(), R_OK), 0) << stub << " is missing (systemd-boot-efi)";
  testing::TempDir dir;
  testing::KeyPair ca = testing::MakeCa(dir.path(), "ca");
  testing::KeyPair signer = testing::MakeSigner(dir.path(), "signer", ca);
  testing::WriteFile(dir / "rootfs.img", testing::RandomBytes(100000, 3));
  for (std::string name : {"db", "other"}) {
    auto made = ralph::testing::RunCommand({"openssl", "req", "-x509", "-newkey", "rsa:2048",
                                            "-nodes", "-sha256", "-days", "30", "-subj",
                                            "/CN=test " + name, "-keyout", dir / (name + ".key"),
                                            "-out", dir / (name + ".crt")});
    ASSERT_TRUE(made.has_value()) << made.error().ToString();
  }
  auto signed_uki =
      ralph::testing::RunCommand({"sbsign", "--key", dir / "db.key", "--cert", dir / "db.crt",
                                  "--output", dir / "signed.efi", stub});
  ASSERT_TRUE(signed_uki.has_value()) << signed_uki.error().ToString();
  auto create = [&](const std::string& uki, const std::string& cert, const std::string& out) {
    return ralph::testing::RunCommand({tool,
                                       "create",
                                       "--cert",
                                       signer.cert_path,
                                       "--key",
                                       signer.key_path,
                                       "--version",
                                       "1.0.0",
                                       "--product",
                                       "ralphos",
                                       "--arch",
                                       "x86_64",
                                       "--rootfs",
                                       dir / "rootfs.img",
                                       "--uki",
                                       uki,
                                       "--secure-boot-cert",
                                       cert,
                                       "-o",
                                       out});
  };
  auto good = create(dir / "signed.efi", dir / "db.crt", dir / "good.rbundle");
  ASSERT_TRUE(good.has_value()) << good.error().ToString();
  EXPECT_EQ(::access((dir / "good.rbundle").c_str(), R_OK), 0);

  const std::pair<std::string, std::string> refused[] = {{dir / "signed.efi", dir / "other.crt"},
                                                         {stub, dir / "db.crt"}};
  for (const auto& [uki, cert] : refused) {
    std::string out = dir / "refused.rbundle";
    auto bad = create(uki, cert, out);
    ASSERT_FALSE(bad.has_value()) << uki << " with " << cert;
    EXPECT_NE(
        bad.error().message().find("is not signed for Secure Boot by --secure-boot-cert " + cert),
        std::string::npos)
        << bad.error().message();
    EXPECT_NE(::access(out.c_str(), F_OK), 0) << out << " was written";
  }
}

// A bad command line exits 2 naming what was wrong; --help prints the usage.
TEST(RalphBundleCliTest, UsageErrorsExitTwo) {
  const char* binary_dir = std::getenv("RALPH_BINARY_DIR");
  ASSERT_NE(binary_dir, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
  std::string tool = std::string(binary_dir) + "/bin/ralph-bundle";
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"create", "--bogus"}, "ralph-bundle create: unknown option --bogus"},
      {{"create", "--cert"}, "ralph-bundle create: option --cert needs a value"},
      {{"create", "--cert", "c"}, "ralph-bundle create: missing --key"},
      {{"info"}, "ralph-bundle info: which bundle? (one BUNDLE)"},
      {{"info", "a", "--crl"}, "ralph-bundle info: option --crl needs a value"},
      {{}, "ralph-bundle: missing command (create or info)"},
      {{"create", "--kind", "bogus"}, "--kind bogus: unknown kind (system or agent-image)"},
      {{"create", "--kind", "agent-image", "--cert", "c", "--key", "k", "--version", "1.0.0",
        "--product", "p", "--arch", "x86_64", "-o", "o"},
       "ralph-bundle create: missing --agent-image"},
      {{"create", "--kind", "agent-image", "--cert", "c", "--key", "k", "--version", "1.0.0",
        "--product", "p", "--arch", "x86_64", "-o", "o", "--agent-image", "a", "--uki", "u"},
       "ralph-bundle create: --uki does not go with --kind agent-image"},
      {{"create", "--cert", "c", "--key", "k", "--version", "1.0.0", "--product", "p", "--arch",
        "x86_64", "-o", "o", "--rootfs", "r", "--uki", "u", "--agent-image", "a"},
       "ralph-bundle create: --agent-image needs --kind agent-image"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {tool};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    ralph::testing::ProgramStreams run = ralph::testing::RunProgramStreams(argv);
    EXPECT_EQ(run.exit, 2) << c.message << "\n" << run.err;
    EXPECT_NE(run.err.find(c.message), std::string::npos) << run.err;
  }
  ralph::testing::ProgramStreams help = ralph::testing::RunProgramStreams({tool, "info", "--help"});
  EXPECT_EQ(help.exit, 0) << help.err;
  EXPECT_NE(help.out.find("usage:\n  ralph-bundle create"), std::string::npos) << help.out;
}

}  // namespace
}  // namespace ralph::ota
