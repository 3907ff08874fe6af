// The ralph-bundle host tool: create, then info with and without a keyring.
#include <gtest/gtest.h>

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
