// The agent image through the real ralphd and ralphctl (root: sandboxes,
// loop-mounted squashfs): agent jobs are refused while no image is
// installed; `ralphctl agent-image install` of a bundle made by
// `ralph-bundle create --kind agent-image` from a real squashfs makes agent
// jobs run on it while plain jobs stay on the job base; a second install
// and a rollback switch what the next agent job sees; bad bundles (another
// CA, another arch, a system bundle) are refused by name with nothing
// changed; every install and rollback is in the audit log; a restart finds
// a tampered current image and refuses agent jobs naming it; the factory
// bundle is installed at start and removed.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_pki.h"
#include "tests/support/run_program.h"
#include "tests/support/wait_for.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;
using ralph::testing::ProgramStreams;
using ralph::testing::RunProgramStreams;
using ralph::testing::WaitFor;

void Write(const std::string& path, const std::string& content) {
  std::ofstream(path) << content;
}

class AgentImageDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "ralphd's tests need root";
    ASSERT_EQ(::access("/bin/busybox", X_OK), 0) << "needs /bin/busybox (package busybox-static)";
    ASSERT_EQ(RunProgramStreams({"sh", "-c", "command -v mksquashfs"}).exit, 0)
        << "needs mksquashfs (package squashfs-tools)";
    const char* build = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(build, nullptr);
    bin_ = std::string(build) + "/bin";
    work_ = fmt::format("/tmp/ralphd-agent-image-{}", ::getpid());
    std::filesystem::remove_all(work_);
    std::filesystem::create_directories(work_ + "/base/usr");
    std::filesystem::create_directories(work_ + "/var");
    ASSERT_EQ(RunProgramStreams({"sh", "-c",
                                 fmt::format("for l in bin lib lib64 sbin; do ln -s usr/$l "
                                             "{}/base/$l; done; mkdir -p {}/base/etc",
                                             work_, work_)})
                  .exit,
              0);
    ca_ = ota::testing::MakeCa(work_, "ca");
    signer_ = ota::testing::MakeSigner(work_, "signer", ca_);
    other_ca_ = ota::testing::MakeCa(work_, "other-ca");
    stranger_ = ota::testing::MakeSigner(work_, "stranger", other_ca_);
    store_ = work_ + "/var/agent-image";
  }

  void TearDown() override {
    StopDaemon();
    RunProgramStreams({"sh", "-c",
                       fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r "
                                   "umount -l; rm -rf {}",
                                   work_, work_)});
  }

  // A squashfs with a static busybox and /etc/agent-image-version = `tag`,
  // bundled as an agent image of `version`; the bundle's path.
  std::string MakeBundle(const std::string& tag, const std::string& version,
                         const std::string& arch = "x86_64",
                         const ota::testing::KeyPair* signer = nullptr) {
    std::string root = fmt::format("{}/root-{}", work_, tag);
    std::filesystem::create_directories(root + "/bin");
    std::filesystem::create_directories(root + "/etc");
    for (const char* dir : {"proc", "dev", "sys", "tmp", "work", "home", "usr"}) {
      std::filesystem::create_directories(root + "/" + dir);
    }
    std::filesystem::copy_file("/bin/busybox", root + "/bin/busybox",
                               std::filesystem::copy_options::overwrite_existing);
    Write(root + "/etc/agent-image-version", tag + "\n");
    std::string image = fmt::format("{}/agent-{}.squashfs", work_, tag);
    std::filesystem::remove(image);
    ProgramStreams pack =
        RunProgramStreams({"mksquashfs", root, image, "-quiet", "-no-progress", "-all-root"});
    EXPECT_EQ(pack.exit, 0) << pack.err;
    const ota::testing::KeyPair& key = signer ? *signer : signer_;
    std::string bundle = fmt::format("{}/agent-{}-{}.rbundle", work_, tag, arch);
    ProgramStreams created =
        RunProgramStreams({bin_ + "/ralph-bundle", "create", "--kind", "agent-image", "--cert",
                           key.cert_path, "--key", key.key_path, "--version", version, "--product",
                           "ralphos", "--arch", arch, "--agent-image", image, "-o", bundle});
    EXPECT_EQ(created.exit, 0) << created.err;
    return bundle;
  }

  void StartDaemon(std::vector<std::string> extra = {}) {
    std::string socket = work_ + "/ralphd.sock";
    std::vector<std::string> argv = {bin_ + "/ralphd", "--state-dir",    work_ + "/var/ralphd",
                                     "--socket",       socket,           "--job-root",
                                     work_ + "/base",  "--agent-images", store_,
                                     "--keyring",      ca_.cert_path};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string why;
    daemon_ = ralph::testing::StartServing(argv, socket, &why);
    ASSERT_GT(daemon_, 0) << why;
  }

  void StopDaemon() {
    if (daemon_ <= 0) return;
    ::kill(daemon_, SIGTERM);
    int status = 0;
    ::waitpid(daemon_, &status, 0);
    daemon_ = -1;
  }

  ProgramStreams Ctl(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"--socket", work_ + "/ralphd.sock"});
    args.insert(args.begin(), bin_ + "/ralphctl");
    return RunProgramStreams(args);
  }
  json CtlJson(std::vector<std::string> args) {
    args.push_back("--json");
    ProgramStreams run = Ctl(args);
    EXPECT_EQ(run.exit, 0) << run.err;
    json out = json::parse(run.out, nullptr, false);
    EXPECT_FALSE(out.is_discarded()) << run.out;
    return out;
  }

  // An agent job ("command" profile) printing the image's tag.
  ProgramStreams AgentJob() {
    return Ctl({"job", "run", "--agent", "command", "--", "/bin/busybox", "cat",
                "/etc/agent-image-version"});
  }

  // The factory install's report, once it has ended.
  json AwaitFactoryInstall() {
    json install;
    EXPECT_TRUE(WaitFor([&] {
      install = CtlJson({"agent-image", "status"})["install"];
      return install.is_object() && install["state"] != "running";
    })) << install.dump();
    return install;
  }

  size_t AuditRows(const std::string& type) {
    json rows = CtlJson({"audit", "list", "--type", type});
    return rows.is_array() ? rows.size() : 0;
  }

  std::string work_, bin_, store_;
  ota::testing::KeyPair ca_, signer_, other_ca_, stranger_;
  pid_t daemon_ = -1;
};

TEST_F(AgentImageDaemonTest, AgentJobsRunOnTheInstalledImageSwitchedByInstallAndRollback) {
  std::string v1 = MakeBundle("one", "1.0.0");
  std::string v2 = MakeBundle("two", "2.0.0");
  StartDaemon();
  Write(work_ + "/policy.xml", R"(<policy format="1">
  <profile name="default">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
</policy>
)");
  ProgramStreams set = Ctl({"policy", "set", work_ + "/policy.xml"});
  ASSERT_EQ(set.exit, 0) << set.err;

  // Nothing installed: agent jobs are refused, saying why and what to do.
  ProgramStreams refused = AgentJob();
  EXPECT_NE(refused.exit, 0);
  EXPECT_NE(refused.err.find("no agent image is installed"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("ralphctl agent-image install"), std::string::npos) << refused.err;
  json status = CtlJson({"agent-image", "status"});
  EXPECT_EQ(status["usable"], false) << status.dump();
  EXPECT_TRUE(status["current"].is_null());

  ProgramStreams installed = Ctl({"agent-image", "install", v1});
  ASSERT_EQ(installed.exit, 0) << installed.err;
  EXPECT_NE(installed.out.find("installed 1.0.0"), std::string::npos) << installed.out;
  ProgramStreams job = AgentJob();
  ASSERT_EQ(job.exit, 0) << job.err;
  EXPECT_EQ(job.out, "one\n");
  // A plain job stays on the job base, which has no such file.
  ProgramStreams plain = Ctl({"job", "run", "--", "cat", "/etc/agent-image-version"});
  EXPECT_NE(plain.exit, 0) << plain.out;

  ASSERT_EQ(Ctl({"agent-image", "install", v2}).exit, 0);
  job = AgentJob();
  ASSERT_EQ(job.exit, 0) << job.err;
  EXPECT_EQ(job.out, "two\n");
  status = CtlJson({"agent-image", "status"});
  EXPECT_EQ(status["current"]["version"], "2.0.0") << status.dump();
  EXPECT_EQ(status["previous"]["version"], "1.0.0") << status.dump();

  ProgramStreams rolled = Ctl({"agent-image", "rollback"});
  ASSERT_EQ(rolled.exit, 0) << rolled.err;
  job = AgentJob();
  ASSERT_EQ(job.exit, 0) << job.err;
  EXPECT_EQ(job.out, "one\n");

  // Bad bundles: refused by name, nothing changes but the install's report.
  auto images = [&] {
    json status = CtlJson({"agent-image", "status"});
    status.erase("install");
    return status.dump();
  };
  std::string before = images();
  struct Bad {
    std::string bundle;
    std::string message;
  };
  Bad bad[] = {
      {MakeBundle("stranger", "3.0.0", "x86_64", &stranger_), "not trusted by keyring"},
      {MakeBundle("arm", "3.0.0", "aarch64"), "is for ralphos/aarch64, this device is ralphos/"},
  };
  for (const Bad& b : bad) {
    ProgramStreams run = Ctl({"agent-image", "install", b.bundle});
    EXPECT_NE(run.exit, 0) << b.bundle;
    EXPECT_NE(run.err.find(b.message), std::string::npos) << run.err;
    EXPECT_EQ(images(), before);
    json install = CtlJson({"agent-image", "status"})["install"];
    EXPECT_EQ(install["state"], "failed") << install.dump();
    EXPECT_EQ(install["bundle"], b.bundle) << install.dump();
    EXPECT_NE(install.value("error", "").find(b.message), std::string::npos) << install.dump();
  }
  job = AgentJob();
  EXPECT_EQ(job.out, "one\n");

  // Audited: two installs, one rollback, two refusals.
  EXPECT_EQ(AuditRows("agent-image.install"), 2u);
  EXPECT_EQ(AuditRows("agent-image.rollback"), 1u);
  EXPECT_EQ(AuditRows("agent-image.install-failed"), 2u);

  // The current image changed on VAR while ralphd was down: found at start,
  // agent jobs refused naming it.
  StopDaemon();
  json state = json::parse(std::ifstream(store_ + "/state.json"), nullptr, false);
  ASSERT_FALSE(state.is_discarded());
  std::string current = store_ + "/images/" + state["current"]["file"].get<std::string>();
  {
    std::fstream f(current, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  StartDaemon();
  refused = AgentJob();
  EXPECT_NE(refused.exit, 0);
  EXPECT_NE(refused.err.find("does not match its recorded digest"), std::string::npos)
      << refused.err;
  status = CtlJson({"agent-image", "status"});
  EXPECT_EQ(status["usable"], false) << status.dump();
}

TEST_F(AgentImageDaemonTest, TheFactoryBundleIsInstalledAtStartAndABadOneIsKept) {
  std::string bad = MakeBundle("bad", "1.0.0", "x86_64", &stranger_);
  std::string factory = work_ + "/factory.rbundle";
  std::filesystem::copy_file(bad, factory);
  StartDaemon({"--factory-agent-bundle", factory});
  // ralphd serves while it installs; the outcome is the status's report.
  json install = AwaitFactoryInstall();
  EXPECT_EQ(install["state"], "failed") << install.dump();
  EXPECT_EQ(install["caller"], "factory");
  // Refused (another CA): kept, nothing installed, the reason audited.
  EXPECT_TRUE(std::filesystem::exists(factory));
  EXPECT_EQ(AuditRows("agent-image.install-failed"), 1u);
  EXPECT_NE(AgentJob().exit, 0);
  StopDaemon();

  std::filesystem::remove(factory);
  std::filesystem::copy_file(MakeBundle("factory", "1.0.0"), factory);
  StartDaemon({"--factory-agent-bundle", factory});
  // An agent job submitted at once waits for the image, if it is still
  // being installed, and runs on it.
  ProgramStreams first = AgentJob();
  ASSERT_EQ(first.exit, 0) << first.err;
  EXPECT_EQ(first.out, "factory\n");
  install = AwaitFactoryInstall();
  EXPECT_EQ(install["state"], "installed") << install.dump();
  EXPECT_FALSE(std::filesystem::exists(factory)) << "installed, so removed";
  EXPECT_EQ(AuditRows("agent-image.install"), 1u);
  ProgramStreams job = AgentJob();
  ASSERT_EQ(job.exit, 0) << job.err;
  EXPECT_EQ(job.out, "factory\n");
}

}  // namespace
}  // namespace ralph::ralphd
