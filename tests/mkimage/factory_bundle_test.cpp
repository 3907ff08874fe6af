// The factory bundle on RECOVERY: ralph-mkimage signs the factory version's
// system image and UKI in the services/ota bundle format; the bundle taken
// out of a built image's RECOVERY filesystem verifies with
// `ralph-bundle info --keyring <release CA>`, carries exactly slot A's system
// image, is refused against another CA, and is byte-identical when the image
// is built again later (an RSA signer, signingTime = SOURCE_DATE_EPOCH).
// The slots carry the OTA keyring and the update servers' CA.
//
// Builds real images (kernel cache in $HOME/.cache/ralphos, mksquashfs,
// openssl for a throw-away PKI).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "drivers/disk.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "tests/support/run_program.h"
#include "tools/mkimage/builder.h"

namespace ralph::mkimage {
namespace {

using ::ralph::testing::ProgramRun;
using ::ralph::testing::RunProgram;

// "factory bundle sha256: <hex>" -> hex.
std::string ReportValue(const std::string& output, const std::string& key) {
  size_t at = output.find(key + ": ");
  if (at == std::string::npos) return "";
  at += key.size() + 2;
  return output.substr(at, output.find('\n', at) - at);
}

class FactoryBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(bin, nullptr);
    bin_dir_ = std::string(bin) + "/bin";
    dir_ = fmt::format("{}/mkimage-factory-{}", std::filesystem::temp_directory_path().string(),
                       ::getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    ASSERT_EQ(RunProgram({"openssl", "version"}).exit, 0) << "openssl is missing (Debian openssl)";
    MakeCa("release-ca");
    MakeCa("other-ca");
    ASSERT_TRUE(WriteWholeFile(dir_ + "/signer.ext",
                               "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                               "extendedKeyUsage=codeSigning\n"));
    Check({"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=factory signer",
           "-keyout", dir_ + "/signer.key", "-out", dir_ + "/signer.csr"});
    Check({"openssl", "x509", "-req", "-days", "30", "-in", dir_ + "/signer.csr", "-CA",
           dir_ + "/release-ca.crt", "-CAkey", dir_ + "/release-ca.key", "-CAcreateserial",
           "-extfile", dir_ + "/signer.ext", "-out", dir_ + "/signer.crt"});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void MakeCa(const std::string& name) {
    Check({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
           "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
           "keyUsage=critical,keyCertSign", "-keyout", dir_ + "/" + name + ".key", "-out",
           dir_ + "/" + name + ".crt"});
  }
  void Check(const std::vector<std::string>& argv) {
    ProgramRun run = RunProgram(argv);
    ASSERT_EQ(run.exit, 0) << fmt::format("{}", fmt::join(argv, " ")) << ":\n" << run.output;
  }

  ProgramRun Mkimage(const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> argv = {bin_dir_ + "/ralph-mkimage",
                                     "--out",
                                     dir_ + "/" + name + ".img",
                                     "--work",
                                     dir_ + "/work-" + name,
                                     "--bin-dir",
                                     bin_dir_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunProgram(argv);
  }

  // Copies the RECOVERY partition out and unpacks one file of it.
  std::string ExtractFromRecovery(const std::string& image, const std::string& path) {
    return ExtractFrom(image, "RECOVERY", path);
  }
  // The same for any squashfs partition; each label unpacks to its own tree.
  std::string ExtractFrom(const std::string& image, const std::string& label,
                          const std::string& path) {
    auto layout = ProbeDisk(image);
    EXPECT_TRUE(layout) << layout.error().ToString();
    if (!layout) return "";
    const PartitionInfo* recovery = layout->Find(label);
    EXPECT_NE(recovery, nullptr);
    if (!recovery) return "";
    std::string part = image + "." + label;
    ProgramRun dd = RunProgram({"dd", "if=" + image, "of=" + part, "bs=1M",
                                fmt::format("skip={}", recovery->offset_bytes() / (1024 * 1024)),
                                fmt::format("count={}", recovery->size_bytes() / (1024 * 1024))});
    EXPECT_EQ(dd.exit, 0) << dd.output;
    std::string out = image + ".unpacked-" + label;
    ProgramRun unsquash =
        RunProgram({"unsquashfs", "-f", "-no-xattrs", "-d", out, part, path.substr(1)});
    EXPECT_EQ(unsquash.exit, 0) << unsquash.output;
    return out + path;
  }

  std::string bin_dir_;
  std::string dir_;
};

TEST_F(FactoryBundleTest, RecoveryHoldsASignedReproducibleFactoryBundle) {
  std::vector<std::string> signing = {"--signing-cert",  dir_ + "/signer.crt",
                                      "--signing-key",   dir_ + "/signer.key",
                                      "--keyring",       dir_ + "/release-ca.crt",
                                      "--update-ca",     dir_ + "/other-ca.crt",
                                      "--image-version", "3.1.4"};
  ProgramRun first = Mkimage("one", signing);
  ASSERT_EQ(first.exit, 0) << first.output;
  std::string digest = ReportValue(first.output, "factory bundle sha256");
  ASSERT_EQ(digest.size(), 64u) << first.output;

  std::string bundle = ExtractFromRecovery(dir_ + "/one.img", kFactoryBundlePath);
  ASSERT_FALSE(HasFailure());
  EXPECT_EQ(*FileSha256(bundle), digest);
  ProgramRun info = RunProgram(
      {bin_dir_ + "/ralph-bundle", "info", bundle, "--keyring", dir_ + "/release-ca.crt"});
  EXPECT_EQ(info.exit, 0) << info.output;
  EXPECT_NE(info.output.find("verdict:    VALID"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("version:    3.1.4"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("compatible: ralphos / x86_64"), std::string::npos) << info.output;
  // The system image in the bundle is slot A's.
  EXPECT_NE(info.output.find("sha256 " + ReportValue(first.output, "system_a sha256")),
            std::string::npos)
      << info.output << first.output;
  ProgramRun untrusted =
      RunProgram({bin_dir_ + "/ralph-bundle", "info", bundle, "--keyring", dir_ + "/other-ca.crt"});
  EXPECT_NE(untrusted.exit, 0) << untrusted.output;
  EXPECT_NE(untrusted.output.find("is not trusted by keyring"), std::string::npos)
      << untrusted.output;

  // The slots carry the trust anchors.
  std::string keyring = ExtractFromRecovery(dir_ + "/one.img", kKeyringPath);
  EXPECT_EQ(*ReadWholeFile(keyring), *ReadWholeFile(dir_ + "/release-ca.crt"));
  std::string ca = ExtractFromRecovery(dir_ + "/one.img", kUpdateCaPath);
  EXPECT_EQ(*ReadWholeFile(ca), *ReadWholeFile(dir_ + "/other-ca.crt"));

  // RECOVERY is a rescue root: ralph-recovery as its service, the tools it
  // runs, and none of the slot's control plane.
  std::string services = ExtractFromRecovery(dir_ + "/one.img", "/etc/ralph/services.conf");
  auto conf = ReadWholeFile(services);
  ASSERT_TRUE(conf) << conf.error().ToString();
  EXPECT_NE(conf->find("/usr/bin/ralph-recovery"), std::string::npos) << *conf;
  EXPECT_EQ(conf->find("ralphd"), std::string::npos) << *conf;
  for (const char* tool : {"/usr/bin/ralph-recovery", "/sbin/e2fsck", "/sbin/mke2fs",
                           "/usr/bin/ralphctl", "/usr/bin/mtools", "/sbin/ralph-init"}) {
    EXPECT_TRUE(std::filesystem::exists(ExtractFromRecovery(dir_ + "/one.img", tool))) << tool;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/one.img.unpacked-RECOVERY/usr/bin/ralphd"));

  // Loop mode's git runs in the slot's root: the binary and the libraries
  // the loader lists for it.
  std::string git = ExtractFrom(dir_ + "/one.img", "SYSTEM_A", "/usr/bin/git");
  ExtractFrom(dir_ + "/one.img", "SYSTEM_A", "/lib");
  ExtractFrom(dir_ + "/one.img", "SYSTEM_A", "/lib64");
  std::string root = git.substr(0, git.size() - std::string("/usr/bin/git").size());
  // git opens /dev/null as it starts; the appliance's /dev is a devtmpfs.
  ASSERT_EQ(RunProgram({"mkdir", "-p", root + "/dev"}).exit, 0);
  ProgramRun null = RunProgram({"mknod", "-m", "666", root + "/dev/null", "c", "1", "3"});
  ASSERT_EQ(null.exit, 0) << null.output;
  ProgramRun version = RunProgram({"chroot", root, "/usr/bin/git", "--version"});
  EXPECT_EQ(version.exit, 0) << version.output;
  EXPECT_EQ(version.output.rfind("git version ", 0), 0u) << version.output;

  sleep(1);  // a later wall clock must not change a byte
  ProgramRun second = Mkimage("two", signing);
  ASSERT_EQ(second.exit, 0) << second.output;
  EXPECT_EQ(ReportValue(second.output, "factory bundle sha256"), digest) << second.output;
}

TEST_F(FactoryBundleTest, AnAgentImageBundleGoesOnVarAndABadOneFailsTheBuild) {
  // A small agent-image bundle (any bytes will do: mkimage checks the
  // bundle, ralphd on the appliance checks the image).
  ASSERT_TRUE(WriteWholeFile(dir_ + "/agent.squashfs", std::string(3 * 4096 + 5, 'a')));
  auto bundle = [&](const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> argv = {bin_dir_ + "/ralph-bundle",
                                     "create",
                                     "--cert",
                                     dir_ + "/signer.crt",
                                     "--key",
                                     dir_ + "/signer.key",
                                     "--version",
                                     "1.0.0",
                                     "--product",
                                     "ralphos",
                                     "--arch",
                                     "x86_64",
                                     "-o",
                                     dir_ + "/" + name};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Check(argv);
    return dir_ + "/" + name;
  };
  std::string agent =
      bundle("agent.rbundle", {"--kind", "agent-image", "--agent-image", dir_ + "/agent.squashfs"});
  std::string system = bundle(
      "system.rbundle", {"--rootfs", dir_ + "/agent.squashfs", "--uki", dir_ + "/agent.squashfs"});

  // Refused before anything is built: a system bundle, a signer the slots'
  // keyring does not trust.
  ProgramRun wrong_kind = Mkimage("kind", {"--agent-bundle", system});
  EXPECT_NE(wrong_kind.exit, 0);
  EXPECT_NE(wrong_kind.output.find("a system bundle, not an agent image"), std::string::npos)
      << wrong_kind.output;
  ProgramRun untrusted =
      Mkimage("untrusted", {"--agent-bundle", agent, "--keyring", dir_ + "/other-ca.crt"});
  EXPECT_NE(untrusted.exit, 0);
  EXPECT_NE(untrusted.output.find("not trusted by keyring"), std::string::npos) << untrusted.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/kind.img"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/untrusted.img"));

  ProgramRun built =
      Mkimage("agent", {"--agent-bundle", agent, "--keyring", dir_ + "/release-ca.crt"});
  ASSERT_EQ(built.exit, 0) << built.output;
  auto layout = ProbeDisk(dir_ + "/agent.img");
  ASSERT_TRUE(layout) << layout.error().ToString();
  const PartitionInfo* var = layout->Find("VAR");
  ASSERT_NE(var, nullptr);
  std::string part = dir_ + "/agent.var";
  Check({"dd", "if=" + dir_ + "/agent.img", "of=" + part, "bs=1M",
         fmt::format("skip={}", var->offset_bytes() / (1024 * 1024)),
         fmt::format("count={}", var->size_bytes() / (1024 * 1024))});
  // An ext4 labelled VAR (early boot checks it rather than formatting it)
  // holding the bundle where ralphd's --factory-agent-bundle looks.
  ProgramRun label = RunProgram({"e2label", part});
  EXPECT_EQ(label.output, "VAR\n");
  Check({"e2fsck", "-fn", part});
  std::string inside = std::string(kFactoryAgentBundlePath).substr(4);  // VAR is /var
  Check({"debugfs", "-R", fmt::format("dump {} {}/dumped.rbundle", inside, dir_), part});
  EXPECT_EQ(*ReadWholeFile(dir_ + "/dumped.rbundle"), *ReadWholeFile(agent));
}

TEST_F(FactoryBundleTest, SigningCertificateWithoutKeyIsRefused) {
  ProgramRun run = Mkimage("bad", {"--signing-cert", dir_ + "/signer.crt"});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.output.find("the factory bundle needs both --signing-cert and --signing-key"),
            std::string::npos)
      << run.output;
}

}  // namespace
}  // namespace ralph::mkimage
