// `ralphctl secure-boot` as the provisioning step runs it, on a directory
// store (--efivars) with the signed lists scripts/secure-boot-lists.sh makes
// from openssl keys: status in each firmware state, enroll in setup mode,
// refusals (not in setup mode, a missing list) that write nothing, and the
// command line's errors (exit 2).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/run_program.h"
#include "tests/support/temp_dir.h"

namespace ralph {
namespace {

constexpr const char* kGlobal = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

class RalphctlSecureBootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* build = std::getenv("RALPH_BINARY_DIR");
    const char* source = std::getenv("RALPH_SOURCE_DIR");
    ASSERT_TRUE(build && source) << "run through ctest (RALPH_BINARY_DIR, RALPH_SOURCE_DIR)";
    ralphctl_ = std::string(build) + "/bin/ralphctl";
    efivars_ = dir_ / "efivars";
    std::filesystem::create_directory(efivars_);
    for (const char* name : {"pk", "kek", "db"}) {
      auto made = testing::RunProgram(
          {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
           "-subj", std::string("/CN=test ") + name, "-keyout", dir_ / (std::string(name) + ".key"),
           "-out", dir_ / (std::string(name) + ".crt")});
      ASSERT_EQ(made.exit, 0) << made.output;
    }
    auto lists = testing::RunProgram({std::string(source) + "/scripts/secure-boot-lists.sh",
                                      dir_ / "lists", dir_ / "pk.crt", dir_ / "pk.key",
                                      dir_ / "kek.crt", dir_ / "kek.key", dir_ / "db.crt"});
    ASSERT_EQ(lists.exit, 0) << lists.output;
  }

  void SetFlags(uint8_t secure_boot, uint8_t setup_mode) {
    for (auto [name, value] : {std::pair{"SecureBoot", secure_boot}, {"SetupMode", setup_mode}}) {
      std::ofstream out(efivars_ + "/" + name + "-" + kGlobal, std::ios::binary);
      const char bytes[] = {0x06, 0, 0, 0, static_cast<char>(value)};
      out.write(bytes, sizeof bytes);
    }
  }

  testing::ProgramStreams Ralphctl(std::vector<std::string> args) {
    args.insert(args.begin(), ralphctl_);
    args.insert(args.end(), {"--efivars", efivars_});
    return testing::RunProgramStreams(args, {"EFIVARFS_PATH"});
  }

  bool Enrolled() {
    return std::filesystem::exists(efivars_ + "/PK-" + kGlobal) ||
           std::filesystem::exists(efivars_ + "/KEK-" + kGlobal) ||
           std::filesystem::exists(efivars_ + "/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f");
  }

  testing::TempDir dir_;
  std::string ralphctl_;
  std::string efivars_;
};

TEST_F(RalphctlSecureBootTest, StatusThenEnrollInSetupMode) {
  auto status = Ralphctl({"secure-boot", "status"});
  EXPECT_EQ(status.exit, 0) << status.err;
  EXPECT_EQ(status.out, "secure boot: not supported by the firmware\n");

  SetFlags(0, 1);
  status = Ralphctl({"secure-boot", "status", "--json"});
  EXPECT_EQ(status.exit, 0) << status.err;
  EXPECT_NE(status.out.find("\"setup_mode\": true"), std::string::npos) << status.out;

  auto missing = Ralphctl({"secure-boot", "enroll", "--keys", dir_ / "nowhere"});
  EXPECT_EQ(missing.exit, 1);
  EXPECT_NE(missing.err.find("the signed PK list: open " + (dir_ / "nowhere") + "/PK.auth"),
            std::string::npos)
      << missing.err;
  EXPECT_FALSE(Enrolled());

  auto enrolled = Ralphctl({"secure-boot", "enroll", "--keys", dir_ / "lists"});
  EXPECT_EQ(enrolled.exit, 0) << enrolled.err;
  EXPECT_NE(enrolled.out.find("enrolled db, KEK and PK"), std::string::npos) << enrolled.out;
  EXPECT_TRUE(std::filesystem::exists(efivars_ + "/PK-" + kGlobal));
}

TEST_F(RalphctlSecureBootTest, EnrollRefusedOutsideSetupMode) {
  SetFlags(1, 0);
  auto status = Ralphctl({"secure-boot", "status"});
  EXPECT_EQ(status.out, "secure boot: on\n");
  auto refused = Ralphctl({"secure-boot", "enroll", "--keys", dir_ / "lists"});
  EXPECT_EQ(refused.exit, 1);
  EXPECT_NE(refused.err.find("not in setup mode (Secure Boot on)"), std::string::npos)
      << refused.err;
  EXPECT_FALSE(Enrolled());
}

TEST_F(RalphctlSecureBootTest, BadCommandLinesExitTwo) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"secure-boot"}, "missing subcommand"},
      {{"secure-boot", "erase"}, "unknown subcommand \"erase\""},
      {{"secure-boot", "status", "--keys", "x"}, "--keys goes with enroll only"},
      {{"secure-boot", "enroll", "--json"}, "--json goes with status only"},
      {{"secure-boot", "status", "extra"}, "unexpected argument \"extra\""},
  };
  for (const Case& c : cases) {
    auto run = Ralphctl(c.args);
    EXPECT_EQ(run.exit, 2) << c.message;
    EXPECT_NE(run.err.find(c.message), std::string::npos) << run.err;
  }
  EXPECT_FALSE(Enrolled());
}

}  // namespace
}  // namespace ralph
