// Secure Boot state and key enrollment (platform/secure_boot.h) through
// LibefivarStore against a directory store (EFIVARFS_PATH), with signed
// lists that efitools makes from openssl certificates, as the provisioning
// step does (docs/secure-boot.md "Provisioning").
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "platform/efivar_store.h"
#include "platform/secure_boot.h"
#include "platform/testing/efivar_directory.h"
#include "tests/support/loop_device.h"  // RunCommand
#include "tests/support/temp_dir.h"

namespace ralph {
namespace {

using ralph::testing::EfivarDirectoryPath;
using ralph::testing::ReadRawFile;
using ralph::testing::WriteRawFile;

constexpr const char* kGlobal = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
constexpr const char* kSecurityDb = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";

// A firmware variable as efivarfs shows it: boot-service and runtime access.
void SetFirmwareFlag(const std::string& name, uint8_t value) {
  WriteRawFile(EfivarDirectoryPath() + name + "-" + kGlobal, {0x06, 0, 0, 0, value});
}

class SecureBootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const auto& entry : std::filesystem::directory_iterator(EfivarDirectoryPath())) {
      std::filesystem::remove(entry.path());
    }
    auto store = LibefivarStore::Open();
    ASSERT_TRUE(store) << store.error().ToString();
    store_ = std::move(*store);
  }

  // PK, KEK, db certificates and their signed lists, as
  // docs/secure-boot.md makes them (db holds `db_certs` certificates).
  void MakeLists(int db_certs = 1, int pk_certs = 1) {
    auto key = [&](const std::string& name) {
      auto made =
          testing::RunCommand({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                               "-sha256", "-days", "30", "-subj", "/CN=test " + name, "-keyout",
                               dir_ / (name + ".key"), "-out", dir_ / (name + ".crt")});
      ASSERT_TRUE(made) << made.error().ToString();
    };
    auto esl = [&](const std::string& cert, const std::string& out) {
      auto made = testing::RunCommand(
          {"cert-to-efi-sig-list", "-g", "11111111-2222-3333-4444-555555555555", cert, out});
      ASSERT_TRUE(made) << made.error().ToString();
    };
    auto concat = [&](const std::string& name, int count) {
      std::vector<uint8_t> all;
      for (int i = 0; i < count; ++i) {
        std::vector<uint8_t> one = ReadRawFile(dir_ / (name + std::to_string(i) + ".esl"));
        all.insert(all.end(), one.begin(), one.end());
      }
      WriteRawFile(dir_ / (name + ".esl"), all);
    };
    auto sign = [&](const std::string& var, const std::string& signer) {
      auto made = testing::RunCommand({"sign-efi-sig-list", "-k", dir_ / (signer + ".key"), "-c",
                                       dir_ / (signer + ".crt"), var, dir_ / (var + ".esl"),
                                       dir_ / (var + ".auth")});
      ASSERT_TRUE(made) << made.error().ToString();
    };
    for (const char* name : {"PK", "KEK"}) ASSERT_NO_FATAL_FAILURE(key(name));
    for (int i = 0; i < pk_certs; ++i) {
      ASSERT_NO_FATAL_FAILURE(esl(dir_ / "PK.crt", dir_ / ("PK" + std::to_string(i) + ".esl")));
    }
    concat("PK", pk_certs);
    ASSERT_NO_FATAL_FAILURE(esl(dir_ / "KEK.crt", dir_ / "KEK.esl"));
    for (int i = 0; i < db_certs; ++i) {
      std::string name = "db" + std::to_string(i);
      ASSERT_NO_FATAL_FAILURE(key(name));
      ASSERT_NO_FATAL_FAILURE(esl(dir_ / (name + ".crt"), dir_ / (name + ".esl")));
    }
    concat("db", db_certs);
    ASSERT_NO_FATAL_FAILURE(sign("PK", "PK"));
    ASSERT_NO_FATAL_FAILURE(sign("KEK", "PK"));
    ASSERT_NO_FATAL_FAILURE(sign("db", "KEK"));
    lists_.pk = ReadRawFile(dir_ / "PK.auth");
    lists_.kek = ReadRawFile(dir_ / "KEK.auth");
    lists_.db = ReadRawFile(dir_ / "db.auth");
  }

  bool Exists(const std::string& name, const char* guid) {
    return std::filesystem::exists(EfivarDirectoryPath() + name + "-" + guid);
  }

  testing::TempDir dir_;
  std::unique_ptr<LibefivarStore> store_;
  SecureBootKeyLists lists_;
};

TEST_F(SecureBootTest, StateComesFromSecureBootAndSetupMode) {
  auto none = ReadSecureBootState(*store_);
  ASSERT_TRUE(none) << none.error().ToString();
  EXPECT_FALSE(none->supported);
  EXPECT_EQ(DescribeSecureBoot(*none), "not supported by the firmware");

  SetFirmwareFlag("SecureBoot", 0);
  SetFirmwareFlag("SetupMode", 1);
  auto setup = ReadSecureBootState(*store_);
  ASSERT_TRUE(setup) << setup.error().ToString();
  EXPECT_TRUE(setup->supported && setup->setup_mode && !setup->enabled);
  EXPECT_EQ(DescribeSecureBoot(*setup), "off (setup mode: no keys enrolled)");

  SetFirmwareFlag("SecureBoot", 1);
  SetFirmwareFlag("SetupMode", 0);
  auto on = ReadSecureBootState(*store_);
  ASSERT_TRUE(on) << on.error().ToString();
  EXPECT_EQ(DescribeSecureBoot(*on), "on");

  WriteRawFile(EfivarDirectoryPath() + "SecureBoot-" + kGlobal, {0x06, 0, 0, 0, 7});
  auto bad = ReadSecureBootState(*store_);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(bad.error().message().find(std::string("SecureBoot-") + kGlobal), std::string::npos)
      << bad.error().message();
}

TEST_F(SecureBootTest, EnrollsDbKekAndPkInSetupMode) {
  ASSERT_NO_FATAL_FAILURE(MakeLists(/*db_certs=*/2));
  SetFirmwareFlag("SecureBoot", 0);
  SetFirmwareFlag("SetupMode", 1);
  auto enrolled = EnrollSecureBootKeys(*store_, lists_);
  ASSERT_TRUE(enrolled) << enrolled.error().ToString();
  // Each variable holds the signed list whole (the firmware checks and
  // strips the header), written with time-based authenticated access.
  struct Expect {
    std::string name;
    const char* guid;
    const std::vector<uint8_t>& data;
  };
  for (const Expect& e : {Expect{"PK", kGlobal, lists_.pk}, Expect{"KEK", kGlobal, lists_.kek},
                          Expect{"db", kSecurityDb, lists_.db}}) {
    std::vector<uint8_t> file = ReadRawFile(EfivarDirectoryPath() + e.name + "-" + e.guid);
    ASSERT_EQ(file.size(), e.data.size() + 4) << e.name;
    EXPECT_EQ(file[0], 0x27) << e.name << ": attributes NV|BS|RT|time-based authenticated";
    EXPECT_TRUE(std::equal(e.data.begin(), e.data.end(), file.begin() + 4)) << e.name;
  }
}

TEST_F(SecureBootTest, RefusesOutsideSetupModeAndWritesNothing) {
  ASSERT_NO_FATAL_FAILURE(MakeLists());
  SetFirmwareFlag("SecureBoot", 1);
  SetFirmwareFlag("SetupMode", 0);
  auto refused = EnrollSecureBootKeys(*store_, lists_);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidState);
  EXPECT_NE(refused.error().message().find("not in setup mode (Secure Boot on)"), std::string::npos)
      << refused.error().message();
  // A firmware without Secure Boot at all.
  std::filesystem::remove(EfivarDirectoryPath() + "SecureBoot-" + kGlobal);
  std::filesystem::remove(EfivarDirectoryPath() + "SetupMode-" + kGlobal);
  auto unsupported = EnrollSecureBootKeys(*store_, lists_);
  ASSERT_FALSE(unsupported);
  EXPECT_EQ(unsupported.error().code(), ErrorCode::kUnsupported);
  for (const char* name : {"PK", "KEK"}) EXPECT_FALSE(Exists(name, kGlobal)) << name;
  EXPECT_FALSE(Exists("db", kSecurityDb));
}

TEST_F(SecureBootTest, MalformedListsAreRefusedByNameBeforeAnyWrite) {
  ASSERT_NO_FATAL_FAILURE(MakeLists());
  SetFirmwareFlag("SecureBoot", 0);
  SetFirmwareFlag("SetupMode", 1);
  struct Case {
    std::string what;
    SecureBootKeyLists lists;
    std::string message;
  };
  std::vector<Case> cases;
  {
    SecureBootKeyLists l = lists_;
    l.pk.resize(l.pk.size() - 1);  // one byte short: the last entry is cut
    cases.push_back({"PK truncated", l, "signed PK list"});
  }
  {
    SecureBootKeyLists l = lists_;
    l.db.resize(20);
    cases.push_back({"db header only", l,
                     "signed db list (efitools' sign-efi-sig-list output) "
                     "is 20 bytes, shorter than its authentication header"});
  }
  {
    SecureBootKeyLists l = lists_;
    l.kek = ReadRawFile(dir_ / "KEK.esl");  // the unsigned list
    cases.push_back({"KEK unsigned", l,
                     "signed KEK list (efitools' sign-efi-sig-list output) has "
                     "no PKCS#7 authentication header"});
  }
  {
    // The authentication header alone: a write that would clear db.
    SecureBootKeyLists l = lists_;
    std::vector<uint8_t> esl = ReadRawFile(dir_ / "db.esl");
    l.db.resize(l.db.size() - esl.size());
    cases.push_back({"db empty", l, "holds no signature list"});
  }
  for (const Case& c : cases) {
    auto refused = EnrollSecureBootKeys(*store_, c.lists);
    ASSERT_FALSE(refused) << c.what;
    EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument) << c.what;
    EXPECT_NE(refused.error().message().find(c.message), std::string::npos)
        << c.what << ": " << refused.error().message();
    for (const char* name : {"PK", "KEK"}) EXPECT_FALSE(Exists(name, kGlobal)) << c.what;
    EXPECT_FALSE(Exists("db", kSecurityDb)) << c.what;
  }
}

TEST_F(SecureBootTest, APlatformKeyListOfTwoKeysIsRefused) {
  ASSERT_NO_FATAL_FAILURE(MakeLists(/*db_certs=*/1, /*pk_certs=*/2));
  SetFirmwareFlag("SecureBoot", 0);
  SetFirmwareFlag("SetupMode", 1);
  auto refused = EnrollSecureBootKeys(*store_, lists_);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("holds 2 keys; the platform key is one"),
            std::string::npos)
      << refused.error().message();
  EXPECT_FALSE(Exists("db", kSecurityDb));
}

}  // namespace
}  // namespace ralph

int main(int argc, char** argv) {
  return ralph::testing::RunWithEfivarDirectory(argv, "ralph-secure-boot-test", [&] {
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
  });
}
