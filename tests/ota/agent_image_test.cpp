// Agent-image bundles: the manifest kind, the installer onto a store
// directory (the VAR layout of services/ota/agent_image.h), its refusals,
// rollback, and kills at each named hook point of an install and a rollback
// (a forked child SIGKILLed there; the run must have died exactly there, and
// afterwards the store's current image is whole and verified: the old one
// before the switch, the new one after it).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/sha256.h"
#include "services/ota/agent_image.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/installer.h"
#include "test_pki.h"
#include "test_util.h"

namespace ralph::ota {
namespace {

using testing::KeyPair;
using testing::TempDir;

class AgentImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = testing::MakeCa(dir_.path(), "ca");
    signer_ = testing::MakeSigner(dir_.path(), "signer", ca_);
    other_ca_ = testing::MakeCa(dir_.path(), "other-ca");
    stranger_ = testing::MakeSigner(dir_.path(), "stranger", other_ca_);
    options_.dir = dir_ / "var/agent-image";
    options_.arch = "x86_64";
    options_.now = [] { return int64_t{1796623310}; };
  }

  struct BundleSpec {
    Version version{1, 0, 0};
    uint32_t seed = 1;
    std::string arch = "x86_64";
    std::string product = "ralphos";
    BundleKind kind = BundleKind::kAgentImage;
    const KeyPair* signer = nullptr;
  };

  // An agent-image bundle (or a system bundle) of a random image; returns its
  // path. The image is 3 chunks and a bit.
  std::string Build(const std::string& name, const BundleSpec& spec) {
    std::string image = dir_ / (name + ".squashfs");
    testing::WriteFile(image, testing::RandomBytes(3 * 4096 + 100, spec.seed));
    CreateOptions o;
    const KeyPair& signer = spec.signer ? *spec.signer : signer_;
    o.cert_path = signer.cert_path;
    o.key_path = signer.key_path;
    o.version = spec.version;
    o.product = spec.product;
    o.arch = spec.arch;
    o.kind = spec.kind;
    if (spec.kind == BundleKind::kAgentImage) {
      o.agent_image_path = image;
    } else {
      o.rootfs_path = image;
      testing::WriteFile(dir_ / (name + ".efi"), testing::RandomBytes(5000, spec.seed + 100));
      o.uki_path = dir_ / (name + ".efi");
    }
    o.chunk_size = 4096;
    o.output_path = dir_ / (name + ".rbundle");
    auto m = CreateBundle(o);
    EXPECT_TRUE(m.has_value()) << m.error().ToString();
    return o.output_path;
  }
  std::string Build(const std::string& name, Version version, uint32_t seed) {
    return Build(name, BundleSpec{.version = version, .seed = seed});
  }

  Sha256Digest ImageDigest(const std::string& name) {
    return *Sha256OfFile(dir_ / (name + ".squashfs"));
  }

  Result<AgentImageInstallReport> Install(const std::string& bundle) {
    return InstallAgentImage(options_, bundle, ca_.cert_path);
  }

  // The files under images/, by name.
  std::set<std::string> Files() {
    std::set<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(options_.dir + "/images", ec)) {
      out.insert(e.path().filename().string());
    }
    return out;
  }
  std::string StateText() {
    auto text = ReadWholeFile(options_.dir + "/state.json");
    return text ? *text : std::string("(none)");
  }

  // The store is as `version`/`seed` left it: current is that image, verified.
  void ExpectCurrent(const std::string& name, Version version) {
    auto path = VerifiedCurrentImage(options_.dir);
    ASSERT_TRUE(path.has_value()) << path.error().ToString();
    EXPECT_EQ(*Sha256OfFile(*path), ImageDigest(name));
    auto state = ReadAgentImageState(options_.dir);
    ASSERT_TRUE(state.has_value()) << state.error().ToString();
    ASSERT_TRUE(state->current.has_value());
    EXPECT_EQ(state->current->version, version);
  }

  TempDir dir_;
  KeyPair ca_, signer_, other_ca_, stranger_;
  AgentImageStoreOptions options_;
};

TEST(AgentImageManifestTest, KindIsInTheSignedManifestAndSystemBundlesAreUnchanged) {
  Manifest m;
  m.kind = BundleKind::kAgentImage;
  m.version = Version{2026, 12, 7};
  m.product = "ralphos";
  m.arch = "x86_64";
  Payload image{.name = "agent-image",
                .type = PayloadType::kAgentImage,
                .offset = 8192,
                .size = 5000,
                .chunk_size = 4096};
  image.chunks.assign(2, Digest{});
  m.payloads = {image};
  auto xml = SerializeManifest(m);
  ASSERT_TRUE(xml.has_value()) << xml.error().ToString();
  EXPECT_NE(xml->find("<ralph-bundle format=\"1\" kind=\"agent-image\">"), std::string::npos);
  auto parsed = ParseManifest(*xml);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(parsed->kind, BundleKind::kAgentImage);
  ASSERT_NE(parsed->Find(PayloadType::kAgentImage), nullptr);

  // One spelling: a system bundle has no kind attribute.
  std::string system = *xml;
  system.replace(system.find(" kind=\"agent-image\""), 19, " kind=\"system\"");
  auto refused = ParseManifest(system);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("unknown kind 'system'"), std::string::npos)
      << refused.error().message();

  // A system manifest with an agent-image payload, and an agent-image
  // manifest with a UKI, are both refused by name.
  std::string no_kind = *xml;
  no_kind.replace(no_kind.find(" kind=\"agent-image\""), 19, "");
  auto mixed = ParseManifest(no_kind);
  ASSERT_FALSE(mixed.has_value());
  EXPECT_NE(mixed.error().message().find("a system bundle carries no agent-image payload"),
            std::string::npos)
      << mixed.error().message();
  Manifest with_uki = m;
  Payload uki{
      .name = "uki", .type = PayloadType::kUki, .offset = 16384, .size = 10, .chunk_size = 4096};
  uki.chunks.assign(1, Digest{});
  with_uki.payloads.push_back(uki);
  auto invalid = ValidateManifest(with_uki);
  ASSERT_FALSE(invalid.has_value());
  EXPECT_NE(invalid.error().message().find("exactly one agent-image payload and nothing else"),
            std::string::npos)
      << invalid.error().message();
}

TEST_F(AgentImageTest, InstallsKeepsThePreviousAndRollsBack) {
  std::string b1 = Build("v1", Version{1, 0, 0}, 1);
  std::string b2 = Build("v2", Version{2, 0, 0}, 2);
  std::string b3 = Build("v3", Version{3, 0, 0}, 3);

  // Nothing installed yet.
  auto none = VerifiedCurrentImage(options_.dir);
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code(), ErrorCode::kNotFound);

  auto r1 = Install(b1);
  ASSERT_TRUE(r1.has_value()) << r1.error().ToString();
  EXPECT_FALSE(r1->previous.has_value());
  EXPECT_EQ(r1->installed.sha256, ImageDigest("v1"));
  EXPECT_NE(r1->installed.signer.find("signer"), std::string::npos) << r1->installed.signer;
  ExpectCurrent("v1", Version{1, 0, 0});
  EXPECT_EQ(Files(), (std::set<std::string>{AgentImageFileName({1, 0, 0}, ImageDigest("v1"))}));

  auto r2 = Install(b2);
  ASSERT_TRUE(r2.has_value()) << r2.error().ToString();
  ASSERT_TRUE(r2->previous.has_value());
  EXPECT_EQ(r2->previous->version, (Version{1, 0, 0}));
  ExpectCurrent("v2", Version{2, 0, 0});

  // A third: the first leaves VAR, exactly one previous is kept.
  ASSERT_TRUE(Install(b3).has_value());
  ExpectCurrent("v3", Version{3, 0, 0});
  EXPECT_EQ(Files(), (std::set<std::string>{AgentImageFileName({3, 0, 0}, ImageDigest("v3")),
                                            AgentImageFileName({2, 0, 0}, ImageDigest("v2"))}));

  auto back = RollbackAgentImage(options_);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  ExpectCurrent("v2", Version{2, 0, 0});
  ASSERT_TRUE(back->previous.has_value());
  EXPECT_EQ(back->previous->version, (Version{3, 0, 0}));
  // A rollback of the rollback: v3 again.
  ASSERT_TRUE(RollbackAgentImage(options_).has_value());
  ExpectCurrent("v3", Version{3, 0, 0});

  // Installing the current image again changes nothing.
  auto again = Install(b3);
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_TRUE(again->reused);
  ExpectCurrent("v3", Version{3, 0, 0});
  // Installing the previous one reuses its verified file.
  auto previous = Install(b2);
  ASSERT_TRUE(previous.has_value()) << previous.error().ToString();
  EXPECT_TRUE(previous->reused);
  ExpectCurrent("v2", Version{2, 0, 0});
}

TEST_F(AgentImageTest, BadBundlesAreRefusedByNameAndChangeNothing) {
  ASSERT_TRUE(Install(Build("v1", Version{1, 0, 0}, 1)).has_value());
  std::string state_before = StateText();
  std::set<std::string> files_before = Files();
  auto expect_refused = [&](const std::string& bundle, ErrorCode code, const std::string& part) {
    auto r = Install(bundle);
    ASSERT_FALSE(r.has_value()) << bundle << " was installed";
    EXPECT_EQ(r.error().code(), code) << r.error().ToString();
    EXPECT_NE(r.error().ToString().find(part), std::string::npos) << r.error().ToString();
    EXPECT_EQ(StateText(), state_before);
    EXPECT_EQ(Files(), files_before);
    ExpectCurrent("v1", Version{1, 0, 0});
  };

  // Signed by someone the keyring does not trust.
  expect_refused(
      Build("stranger", BundleSpec{.version = {2, 0, 0}, .seed = 2, .signer = &stranger_}),
      ErrorCode::kVerificationFailed, "not trusted by keyring");
  // For another arch, another product.
  expect_refused(Build("arm", BundleSpec{.version = {2, 0, 0}, .seed = 3, .arch = "aarch64"}),
                 ErrorCode::kRefused, "is for ralphos/aarch64, this device is ralphos/x86_64");
  expect_refused(Build("other", BundleSpec{.version = {2, 0, 0}, .seed = 4, .product = "other"}),
                 ErrorCode::kRefused, "is for other/x86_64");
  // A system update is not an agent image.
  expect_refused(
      Build("system", BundleSpec{.version = {2, 0, 0}, .seed = 5, .kind = BundleKind::kSystem}),
      ErrorCode::kRefused, "is a system bundle, not an agent image");
  // The payload's last chunk changed after signing: found by the check pass,
  // before anything is written.
  std::string tampered = Build("tampered", Version{2, 0, 0}, 6);
  {
    auto bytes = testing::ReadFileBytes(tampered);
    bytes[bytes.size() - 10] ^= 0x40;
    testing::WriteFile(tampered, bytes);
  }
  expect_refused(tampered, ErrorCode::kVerificationFailed, "chunk 3");
  // The manifest changed after signing.
  std::string forged = Build("forged", Version{2, 0, 0}, 7);
  {
    auto bytes = testing::ReadFileBytes(forged);
    std::string text(bytes.begin(), bytes.end());
    size_t at = text.find("<version>2.0.0</version>");
    ASSERT_NE(at, std::string::npos);
    bytes[at + 9] = '9';
    testing::WriteFile(forged, bytes);
  }
  expect_refused(forged, ErrorCode::kVerificationFailed, "signature");
  // Not a bundle at all.
  testing::WriteFile(dir_ / "junk.rbundle", testing::RandomBytes(10000, 8));
  expect_refused(dir_ / "junk.rbundle", ErrorCode::kCorrupt, "not a RalphOS bundle");
}

TEST(AgentImageOsInstallerTest, AnAgentImageBundleIsNoSystemUpdate) {
  Manifest m;
  m.kind = BundleKind::kAgentImage;
  m.version = Version{1, 0, 0};
  m.product = "ralphos";
  m.arch = "x86_64";
  InstallFacts facts;
  facts.identity.arch = "x86_64";
  auto plan = PlanInstall(m, facts, DowngradeOverride::kRefuse);
  ASSERT_FALSE(plan.has_value());
  EXPECT_EQ(plan.error().code(), ErrorCode::kRefused);
  EXPECT_NE(plan.error().message().find("ralphctl agent-image install"), std::string::npos)
      << plan.error().message();
}

TEST_F(AgentImageTest, StateLeftOnVarIsCheckedBeforeUse) {
  ASSERT_TRUE(Install(Build("v1", Version{1, 0, 0}, 1)).has_value());
  ASSERT_TRUE(Install(Build("v2", Version{2, 0, 0}, 2)).has_value());
  std::string previous =
      options_.dir + "/images/" + AgentImageFileName({1, 0, 0}, ImageDigest("v1"));

  // The previous image changed on VAR: no rollback onto it, nothing changes.
  auto bytes = testing::ReadFileBytes(previous);
  bytes[5] ^= 1;
  testing::WriteFile(previous, bytes);
  std::string state_before = StateText();
  auto refused = RollbackAgentImage(options_);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(refused.error().ToString().find("does not match its recorded digest"),
            std::string::npos)
      << refused.error().ToString();
  EXPECT_EQ(StateText(), state_before);
  // Installing v1 again does not reuse the changed file: it is written anew.
  auto reinstall = Install(dir_ / "v1.rbundle");
  ASSERT_TRUE(reinstall.has_value()) << reinstall.error().ToString();
  EXPECT_FALSE(reinstall->reused);
  ExpectCurrent("v1", Version{1, 0, 0});

  // The current image changed on VAR: not used.
  bytes = testing::ReadFileBytes(options_.dir + "/images/" +
                                 AgentImageFileName({1, 0, 0}, ImageDigest("v1")));
  bytes.pop_back();
  testing::WriteFile(options_.dir + "/images/" + AgentImageFileName({1, 0, 0}, ImageDigest("v1")),
                     bytes);
  auto unusable = VerifiedCurrentImage(options_.dir);
  ASSERT_FALSE(unusable.has_value());
  EXPECT_EQ(unusable.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(unusable.error().message().find("its record says"), std::string::npos)
      << unusable.error().message();

  // A state.json naming a file that is not its version's and digest's.
  std::string text = StateText();
  size_t at = text.find("\"file\": \"agent-1.0.0-");
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, 21, "\"file\": \"../../etc/x-");
  ASSERT_TRUE(WriteWholeFile(options_.dir + "/state.json", text).has_value());
  auto corrupt = ReadAgentImageState(options_.dir);
  ASSERT_FALSE(corrupt.has_value());
  EXPECT_EQ(corrupt.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(corrupt.error().message().find("current.file"), std::string::npos)
      << corrupt.error().message();
}

// Runs `body` in a child that SIGKILLs itself at the `occurrence`-th call of
// hook `point`; returns the point the child reports dying at ("" when it
// finished or died elsewhere).
std::string RunKilledAt(const std::string& report, const std::string& point,
                        const std::function<void(AgentImageStoreOptions&)>& body,
                        AgentImageStoreOptions options) {
  ::unlink(report.c_str());
  pid_t pid = ::fork();
  if (pid == 0) {
    options.hook = [&](std::string_view at) {
      if (at != point) return;
      (void)WriteWholeFile(report, std::string(at));
      ::kill(::getpid(), SIGKILL);
    };
    body(options);
    ::_exit(0);
  }
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run at " << point << " was not killed (status " << status << ")";
  auto text = ReadWholeFile(report);
  return text ? *text : std::string();
}

TEST_F(AgentImageTest, AKilledInstallLeavesACurrentImageThatWorks) {
  const std::string kPoints[] = {"verified",        "image-written",  "image-renamed",
                                 "image-read-back", "state-switched", "pruned"};
  std::string b1 = Build("v1", Version{1, 0, 0}, 1);
  std::string b2 = Build("v2", Version{2, 0, 0}, 2);
  for (const std::string& point : kPoints) {
    SCOPED_TRACE("killed at " + point);
    std::filesystem::remove_all(options_.dir);
    ASSERT_TRUE(Install(b1).has_value());
    std::string died = RunKilledAt(
        dir_ / "report", point,
        [&](AgentImageStoreOptions& o) { (void)InstallAgentImage(o, b2, ca_.cert_path); },
        options_);
    ASSERT_EQ(died, point);
    // Before the switch the old image is current, from the switch on the new
    // one; either way whole and matching its digest.
    bool switched = point == "state-switched" || point == "pruned";
    if (switched) {
      ExpectCurrent("v2", Version{2, 0, 0});
    } else {
      ExpectCurrent("v1", Version{1, 0, 0});
    }
    // The next install sweeps what was left and completes.
    auto r = Install(b2);
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    ExpectCurrent("v2", Version{2, 0, 0});
    EXPECT_EQ(Files(), (std::set<std::string>{AgentImageFileName({2, 0, 0}, ImageDigest("v2")),
                                              AgentImageFileName({1, 0, 0}, ImageDigest("v1"))}));
    for (const auto& e : std::filesystem::directory_iterator(options_.dir)) {
      EXPECT_FALSE(e.path().filename().string().ends_with(".tmp")) << e.path();
    }
  }
}

TEST_F(AgentImageTest, AKilledRollbackLeavesOneOfTheTwoImagesCurrent) {
  for (const std::string point : {"rollback-verified", "rollback-switched"}) {
    SCOPED_TRACE("killed at " + point);
    std::filesystem::remove_all(options_.dir);
    ASSERT_TRUE(Install(Build("v1", Version{1, 0, 0}, 1)).has_value());
    ASSERT_TRUE(Install(Build("v2", Version{2, 0, 0}, 2)).has_value());
    std::string died = RunKilledAt(
        dir_ / "report", point, [](AgentImageStoreOptions& o) { (void)RollbackAgentImage(o); },
        options_);
    ASSERT_EQ(died, point);
    if (point == "rollback-switched") {
      ExpectCurrent("v1", Version{1, 0, 0});
    } else {
      ExpectCurrent("v2", Version{2, 0, 0});
    }
  }
}

}  // namespace
}  // namespace ralph::ota
