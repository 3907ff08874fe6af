// Over-the-air updates end to end: the appliance boots A from the
// provisioned disk, brings its NIC up with DHCP (QEMU user networking), and
// installs a signed bundle for slot B over HTTPS from a server in this test
// process (the host is 10.0.2.2 from the guest; the server's certificate
// comes from the test CA the image trusts, the bundle's signer from the test
// release CA in the image's keyring) with `ralphctl update install` through
// the test agent. Then it reboots:
//   - a good bundle: B is tried, its health gate passes, B is committed and
//     `ralphctl update status` in B says so;
//   - a bundle whose health gate fails: B is marked bad, A boots again and
//     `ralphctl update status [--json]` in A reports the rollback (from the
//     record on VAR); the rollback is in the audit log on VAR (read on the
//     host after power-off), whose chain verifies.
// The bundles are made here with `ralph-bundle create` from the slot-B
// payloads the e2e_images fixture exports.
//
// Compiled with -fexceptions: the HTTPS server is cpp-httplib (tests/ota's
// test server); the code under test runs in the guest.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "drivers/disk.h"
#include "drivers/testing/run_program.h"
#include "harness/e2e_test.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "services/audit/audit_log.h"
#include "test_https_server.h"

namespace ralph::e2e {
namespace {

constexpr std::chrono::seconds kNetworkTimeout{180};
// Hashing, writing, reading back and verifying ~40 MB under TCG.
constexpr std::chrono::seconds kInstallTimeout{900};

// Host programs; their exit status and output (stdout+stderr).
Machine::AgentReply RunHost(const std::vector<std::string>& argv) {
  ::ralph::testing::ProgramRun run = ::ralph::testing::RunProgram(argv);
  return {run.exit, std::move(run.output)};
}

class OtaTest : public E2eTest {
 protected:
  void SetUp() override {
    E2eTest::SetUp();
    network_ = true;
    pki_ = paths_.images_dir + "/pki";
  }

  // `ralph-bundle create` over a variant's exported slot-B payloads.
  std::vector<uint8_t> MakeBundle(const std::string& variant, const std::string& version) {
    std::string payloads = paths_.images_dir + "/" + variant + "-payloads";
    std::string out = fmt::format("{}/{}-{}.rbundle", scratch_->path(), variant, version);
    auto made = RunHost({paths_.binary_dir + "/bin/ralph-bundle", "create", "--cert",
                         pki_ + "/signer.crt", "--key", pki_ + "/signer.key", "--version", version,
                         "--product", "ralphos", "--arch", "x86_64", "--rootfs",
                         payloads + "/system_b.img", "--uki", payloads + "/b.efi", "-o", out});
    EXPECT_EQ(made.exit, 0) << made.output;
    auto bytes = ReadWholeFile(out);
    EXPECT_TRUE(bytes) << bytes.error().ToString();
    if (!bytes) return {};
    return std::vector<uint8_t>(bytes->begin(), bytes->end());
  }

  void StartServer() {
    server_ = std::make_unique<ota::testing::TestServer>(
        ota::testing::KeyPair{pki_ + "/server.crt", pki_ + "/server.key"});
  }

  // The guest's URL for a file the server holds: QEMU user networking
  // forwards 10.0.2.2 to the host's loopback, where the server listens.
  std::string GuestUrl(const std::string& name) const {
    std::string url = server_->Url(name);  // https://127.0.0.1:<port>/<name>
    return "https://10.0.2.2" + url.substr(url.find(':', 8));
  }

  // Boots A with the NIC and waits until DHCP has given it a default route.
  Machine BootAWithNetwork() {
    Prepare(DiskSource::kProvisioned);
    Machine machine = Boot();
    auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
    EXPECT_TRUE(up) << up.error().ToString();
    auto deadline = std::chrono::steady_clock::now() + kNetworkTimeout;
    for (;;) {
      auto routes = machine.Agent({"cat", "/proc/net/route"}, kAgentTimeout);
      // A default route: destination 00000000 on some interface.
      if (routes && routes->exit == 0 &&
          routes->output.find("\t00000000\t0202000A") != std::string::npos) {
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ADD_FAILURE() << "no default route via 10.0.2.2 from DHCP within "
                      << kNetworkTimeout.count() << " s; /proc/net/route:\n"
                      << (routes ? routes->output : routes.error().ToString());
        break;
      }
      std::this_thread::sleep_for(std::chrono::seconds(2));
    }
    return machine;
  }

  // `ralphctl update install <url>` in the guest.
  void InstallOverHttps(Machine& machine, const std::string& name) {
    auto reply = machine.Agent({"ralphctl", "update", "install", GuestUrl(name)}, kInstallTimeout);
    ASSERT_TRUE(reply) << reply.error().ToString();
    ASSERT_EQ(reply->exit, 0) << reply->output;
    EXPECT_NE(reply->output.find("into slot B"), std::string::npos) << reply->output;
    EXPECT_GT(server_->bytes_served(), 0u);
  }

  // After power-off: the audit log row of `type`, read from the disk's VAR
  // file system on the host (debugfs) with the audit library; the whole
  // hash chain must verify. Expects exactly one such row.
  audit::AuditRecord AuditRow(const std::string& type) {
    auto layout = ProbeDisk(disk_);
    EXPECT_TRUE(layout) << layout.error().ToString();
    const PartitionInfo* var = layout ? layout->Find("VAR") : nullptr;
    EXPECT_NE(var, nullptr);
    if (!var) return {};
    std::string var_image = scratch_->path() + "/var.img";
    auto dd = RunHost({"/bin/dd", "if=" + disk_, "of=" + var_image, "bs=1M",
                       fmt::format("skip={}", var->offset_bytes() >> 20),
                       fmt::format("count={}", var->size_bytes() >> 20)});
    EXPECT_EQ(dd.exit, 0) << dd.output;
    // Replay the journal on the copy first (debugfs reads without it).
    auto fsck = RunHost({"/sbin/e2fsck", "-fy", var_image});
    EXPECT_LE(fsck.exit, 1) << fsck.output;
    std::string db = scratch_->path() + "/audit.db";
    // VAR is mounted at /var: the log is /lib/ralph/audit.db in its file
    // system. A cleanly closed WAL database has no -wal file left.
    auto dumped = RunHost({"/sbin/debugfs", "-R", "dump /lib/ralph/audit.db " + db, var_image});
    EXPECT_EQ(dumped.exit, 0) << dumped.output << " (Debian package e2fsprogs)";
    auto log = audit::AuditLog::Open(db, audit::OpenMode::kExisting);
    EXPECT_TRUE(log) << log.error().ToString() << "\n" << dumped.output;
    if (!log) return {};
    auto verified = (*log)->Verify();
    EXPECT_TRUE(verified) << verified.error().ToString();
    if (verified && !verified->ok()) ADD_FAILURE() << verified->broken->message;
    auto rows = (*log)->List();
    EXPECT_TRUE(rows) << rows.error().ToString();
    if (!rows) return {};
    audit::AuditRecord found;
    size_t count = 0;
    std::string all;
    for (const auto& row : *rows) {
      all += fmt::format("{} {} {} {}\n", row.seq, row.type, row.subject, row.details);
      if (row.type == type) {
        found = row;
        ++count;
      }
    }
    EXPECT_EQ(count, 1u) << type << " rows in the audit log:\n" << all;
    return found;
  }

  nlohmann::json StatusJson(Machine& machine) {
    auto status = Ralphctl(machine, {"update", "status", "--json"});
    EXPECT_EQ(status.exit, 0) << status.output;
    auto json = nlohmann::json::parse(status.output, nullptr, false);
    EXPECT_FALSE(json.is_discarded()) << status.output;
    return json;
  }

  std::string pki_;
  std::unique_ptr<ota::testing::TestServer> server_;
};

TEST_F(OtaTest, GoodBundleOverHttpsIsTriedThenCommitted) {
  std::vector<uint8_t> bundle = MakeBundle("base", "0.2.0");
  ASSERT_FALSE(bundle.empty());
  StartServer();
  server_->Add("ralphos-0.2.0.rbundle", std::move(bundle));
  Machine machine = BootAWithNetwork();
  ASSERT_FALSE(HasFailure());

  ASSERT_NO_FATAL_FAILURE(InstallOverHttps(machine, "ralphos-0.2.0.rbundle"));
  nlohmann::json before = StatusJson(machine);
  EXPECT_EQ(before.value("phase", ""), "done") << before.dump();
  EXPECT_EQ(before["last_update"].value("outcome", ""), "pending-trial") << before.dump();

  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  auto committed = machine.WaitFor(CommittedSlot("B"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS B");
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS B");

  auto status = Ralphctl(machine, {"update", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find(
                "last update: the update to version 0.2.0 in slot B passed its trial and is "
                "committed"),
            std::string::npos)
      << status.output;
  nlohmann::json after = StatusJson(machine);
  EXPECT_EQ(after["last_update"].value("outcome", ""), "committed") << after.dump();
  EXPECT_EQ(after["last_update"].value("version", ""), "0.2.0") << after.dump();
  auto slots = Ralphctl(machine, {"boot", "status"});
  EXPECT_NE(slots.output.find("0.2.0"), std::string::npos) << slots.output;

  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));
  audit::AuditRecord row = AuditRow("update-committed");
  EXPECT_EQ(row.actor, "ota");
  EXPECT_EQ(row.subject, "slot B");
  auto details = nlohmann::json::parse(row.details, nullptr, false);
  EXPECT_EQ(details.value("version", ""), "0.2.0") << row.details;
  EXPECT_EQ(details.value("outcome", ""), "committed") << row.details;
}

TEST_F(OtaTest, BundleFailingItsHealthGateRollsBackToAAndIsReported) {
  std::vector<uint8_t> bundle = MakeBundle("health-fail", "0.3.0");
  ASSERT_FALSE(bundle.empty());
  StartServer();
  server_->Add("ralphos-0.3.0.rbundle", std::move(bundle));
  Machine machine = BootAWithNetwork();
  ASSERT_FALSE(HasFailure());

  ASSERT_NO_FATAL_FAILURE(InstallOverHttps(machine, "ralphos-0.3.0.rbundle"));
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "B"));
  auto failed = machine.WaitFor("health gate failed: slot B marked bad", kBootTimeout);
  ASSERT_TRUE(failed) << failed.error().ToString();
  auto back = machine.WaitFor(BootingSlot("A"), kBootTimeout);
  ASSERT_TRUE(back) << back.error().ToString();
  // A's boot settles the update's outcome on VAR (the update-outcome service).
  constexpr const char* kRolledBack =
      "the update to version 0.3.0 in slot B failed its trial (slot B is marked bad); the "
      "system rolled back to slot A";
  auto reported = machine.WaitFor(kRolledBack, kBootTimeout);
  ASSERT_TRUE(reported) << reported.error().ToString();
  auto committed = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(committed) << committed.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");

  auto status = Ralphctl(machine, {"update", "status"});
  EXPECT_EQ(status.exit, 0) << status.output;
  EXPECT_NE(status.output.find(std::string("last update: ") + kRolledBack), std::string::npos)
      << status.output;
  nlohmann::json json = StatusJson(machine);
  const nlohmann::json& last = json["last_update"];
  EXPECT_EQ(last.value("outcome", ""), "rolled-back") << json.dump();
  EXPECT_EQ(last.value("version", ""), "0.3.0") << json.dump();
  EXPECT_EQ(last.value("target", ""), "B") << json.dump();
  EXPECT_EQ(last.value("from", ""), "A") << json.dump();
  EXPECT_EQ(last.value("source", ""), GuestUrl("ralphos-0.3.0.rbundle")) << json.dump();

  // Recorded once, by the boot that found it (status does not record it again).
  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));
  audit::AuditRecord row = AuditRow("update-rolled-back");
  EXPECT_EQ(row.actor, "ota");
  EXPECT_EQ(row.subject, "slot B");
  auto details = nlohmann::json::parse(row.details, nullptr, false);
  EXPECT_EQ(details.value("version", ""), "0.3.0") << row.details;
  EXPECT_EQ(details.value("summary", ""), kRolledBack) << row.details;
}

}  // namespace
}  // namespace ralph::e2e
