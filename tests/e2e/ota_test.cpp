// Over-the-air updates end to end: the appliance boots A from the
// provisioned disk, brings its NIC up with DHCP (QEMU user networking), and
// installs a signed bundle for slot B over HTTPS from a server in this test
// process (the host is 10.0.2.2 from the guest; the server's certificate
// comes from the test CA the image trusts, the bundle's signer from the test
// release CA in the image's keyring) with `ralphctl update install` through
// the test agent. Then it reboots:
//   - a good bundle: B is tried, its health gate passes, B is committed and
//     `ralphctl update status` in B says so; then the SAME bundle file is
//     installed from B into A (a bundle names no slot: its UKI boots from
//     either, early boot tells the slot from the firmware) and A is tried
//     and committed;
//   - a bundle whose health gate fails: B is marked bad, A boots again and
//     `ralphctl update status [--json]` in A reports the rollback (from the
//     record on VAR); the rollback is in the audit log on VAR (read on the
//     host after power-off), whose chain verifies.
// The bundles are made here with `ralph-bundle create` from the slot-B
// payloads the e2e_images fixture exports.
//
// Compiled with -fexceptions: the HTTPS server is cpp-httplib (tests/ota's
// test server); the code under test runs in the guest.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstring>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "drivers/disk.h"
#include "harness/e2e_test.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "services/audit/audit_log.h"
#include "test_https_server.h"
#include "tests/support/run_program.h"

namespace ralph::e2e {
namespace {

constexpr std::chrono::seconds kNetworkTimeout{180};
constexpr const char* kUpdateHost = "updates.ralph.test";
// Hashing, writing, reading back and verifying ~40 MB under TCG.
constexpr std::chrono::seconds kInstallTimeout{900};

// Host programs; their exit status and output (stdout+stderr).
Machine::AgentReply RunHost(const std::vector<std::string>& argv) {
  ::ralph::testing::ProgramRun run = ::ralph::testing::RunProgram(argv);
  return {run.exit, std::move(run.output)};
}

// Answers DNS queries over UDP on `address`:53 for one name (an A record);
// AAAA for it gets no answer, every other name NXDOMAIN.
class DnsResponder {
 public:
  static Result<std::unique_ptr<DnsResponder>> Start(const std::string& address, std::string name,
                                                     in_addr answer) {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd) return Error::FromErrno("socket", errno);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(53);
    if (::inet_pton(AF_INET, address.c_str(), &sin.sin_addr) != 1) {
      return Error::Make(ErrorCode::kInvalidArgument, address + " is not an IPv4 address");
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
      return Error::FromErrno(fmt::format("bind {}:53", address), errno);
    }
    return std::unique_ptr<DnsResponder>(new DnsResponder(std::move(fd), std::move(name), answer));
  }
  ~DnsResponder() {
    stop_ = true;
    thread_.join();
  }
  size_t answered() const { return answered_; }

 private:
  DnsResponder(UniqueFd fd, std::string name, in_addr answer)
      : fd_(std::move(fd)), name_(std::move(name)), answer_(answer) {
    thread_ = std::thread([this] { Serve(); });
  }

  void Serve() {
    while (!stop_) {
      pollfd pfd{fd_.get(), POLLIN, 0};
      if (::poll(&pfd, 1, 200) <= 0) continue;
      uint8_t query[512];
      sockaddr_in from{};
      socklen_t from_len = sizeof(from);
      ssize_t n = ::recvfrom(fd_.get(), query, sizeof(query), 0, reinterpret_cast<sockaddr*>(&from),
                             &from_len);
      if (n < 17) continue;
      // The question: labels from byte 12, then QTYPE and QCLASS.
      std::string qname;
      size_t at = 12;
      while (at < static_cast<size_t>(n) && query[at] != 0 && query[at] < 64) {
        if (!qname.empty()) qname += '.';
        for (size_t i = 1; i <= query[at] && at + i < static_cast<size_t>(n); ++i) {
          qname += static_cast<char>(std::tolower(query[at + i]));
        }
        at += query[at] + 1;
      }
      size_t question_end = at + 5;
      if (question_end > static_cast<size_t>(n)) continue;
      uint16_t qtype = static_cast<uint16_t>(query[at + 1] << 8 | query[at + 2]);
      bool known = qname == name_;
      bool answer = known && qtype == 1;
      std::vector<uint8_t> reply(query, query + question_end);
      reply[2] = 0x81;                                       // QR, RD
      reply[3] = static_cast<uint8_t>(known ? 0x80 : 0x83);  // RA; NXDOMAIN
      reply[4] = 0, reply[5] = 1;                            // QDCOUNT
      reply[6] = 0, reply[7] = answer ? 1 : 0;               // ANCOUNT
      for (int i = 8; i < 12; ++i) reply[i] = 0;             // NSCOUNT, ARCOUNT
      if (answer) {
        const uint8_t* ip = reinterpret_cast<const uint8_t*>(&answer_.s_addr);
        uint8_t record[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ip[0], ip[1], ip[2], ip[3]};
        reply.insert(reply.end(), std::begin(record), std::end(record));
        ++answered_;
      }
      ::sendto(fd_.get(), reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from),
               from_len);
    }
  }

  UniqueFd fd_;
  std::string name_;
  in_addr answer_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> answered_{0};
  std::thread thread_;
};

// The first IPv4 nameserver of the host's /etc/resolv.conf: where QEMU's
// user networking relays the guest's queries to 10.0.2.3.
std::string HostNameserver() {
  auto text = ReadWholeFile("/etc/resolv.conf");
  if (!text) return "127.0.0.1";  // QEMU's fallback then
  std::istringstream lines(*text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string key, value;
    in_addr addr{};
    if (words >> key >> value && key == "nameserver" &&
        ::inet_pton(AF_INET, value.c_str(), &addr) == 1) {
      return value;
    }
  }
  return "127.0.0.1";
}

class OtaTest : public E2eTest {
 protected:
  void SetUp() override {
    E2eTest::SetUp();
    network_ = true;
    pki_ = paths_.images_dir + "/pki";
  }

  // `ralph-bundle create` over a variant's exported slot-B payloads; the
  // UKI must carry the Secure Boot signature the harness's firmware checks.
  std::vector<uint8_t> MakeBundle(const std::string& variant, const std::string& version) {
    std::string payloads = paths_.images_dir + "/" + variant + "-payloads";
    std::string out = fmt::format("{}/{}-{}.rbundle", scratch_->path(), variant, version);
    auto made = RunHost({paths_.binary_dir + "/bin/ralph-bundle",
                         "create",
                         "--cert",
                         pki_ + "/signer.crt",
                         "--key",
                         pki_ + "/signer.key",
                         "--version",
                         version,
                         "--product",
                         "ralphos",
                         "--arch",
                         "x86_64",
                         "--rootfs",
                         payloads + "/system_b.img",
                         "--uki",
                         payloads + "/b.efi",
                         "--secure-boot-cert",
                         kSnakeoilCert,
                         "-o",
                         out});
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

  // The update server under the name kUpdateHost instead of 10.0.2.2. This
  // test process (and so QEMU, its child) moves into a network namespace of
  // its own, where the host's nameserver address is on the loopback
  // interface and answered by a DnsResponder: QEMU relays the guest's DNS
  // there, and nothing outside this test is touched. The server's
  // certificate for the name is issued here by the image's update-server CA.
  void StartNamedServer() {
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0)
        << "unshare(CLONE_NEWNET): " << std::strerror(errno) << " (needs root)";
    std::string nameserver = HostNameserver();
    auto lo = RunHost({"/usr/sbin/ip", "link", "set", "lo", "up"});
    ASSERT_EQ(lo.exit, 0) << lo.output << " (Debian package iproute2)";
    if (nameserver.rfind("127.", 0) != 0) {
      auto added = RunHost({"/usr/sbin/ip", "addr", "add", nameserver + "/32", "dev", "lo"});
      ASSERT_EQ(added.exit, 0) << added.output;
    }
    in_addr host{};
    ::inet_pton(AF_INET, "10.0.2.2", &host);
    auto dns = DnsResponder::Start(nameserver, kUpdateHost, host);
    ASSERT_TRUE(dns) << dns.error().ToString();
    dns_ = std::move(*dns);
    std::string dir = scratch_->path();
    auto key = RunHost({"/usr/bin/openssl", "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
                        "-subj", std::string("/CN=") + kUpdateHost, "-keyout", dir + "/named.key",
                        "-out", dir + "/named.csr"});
    ASSERT_EQ(key.exit, 0) << key.output;
    ASSERT_TRUE(WriteWholeFile(dir + "/named.ext", fmt::format("basicConstraints=CA:FALSE\n"
                                                               "extendedKeyUsage=serverAuth\n"
                                                               "subjectAltName=DNS:{}\n",
                                                               kUpdateHost)));
    auto cert = RunHost({"/usr/bin/openssl", "x509", "-req", "-sha256", "-days", "30", "-in",
                         dir + "/named.csr", "-CA", pki_ + "/tls-ca.crt", "-CAkey",
                         pki_ + "/tls-ca.key", "-CAcreateserial", "-CAserial", dir + "/named.srl",
                         "-extfile", dir + "/named.ext", "-out", dir + "/named.crt"});
    ASSERT_EQ(cert.exit, 0) << cert.output;
    server_ = std::make_unique<ota::testing::TestServer>(
        ota::testing::KeyPair{dir + "/named.crt", dir + "/named.key"});
    host_ = kUpdateHost;
  }

  // The guest's URL for a file the server holds: QEMU user networking
  // forwards 10.0.2.2 to the host's loopback, where the server listens
  // (under kUpdateHost after StartNamedServer).
  std::string GuestUrl(const std::string& name) const {
    std::string url = server_->Url(name);  // https://127.0.0.1:<port>/<name>
    return "https://" + host_ + url.substr(url.find(':', 8));
  }

  // Boots A with the NIC and waits until DHCP has given it a default route.
  Machine BootAWithNetwork() {
    Prepare(DiskSource::kProvisioned);
    Machine machine = Boot();
    auto up = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
    EXPECT_TRUE(up) << up.error().ToString();
    WaitForNetwork(machine);
    return machine;
  }

  // Waits until DHCP has given the booted slot a default route.
  void WaitForNetwork(Machine& machine) {
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
  }

  // `ralphctl update install <url>` in the guest, into slot `target`.
  void InstallOverHttps(Machine& machine, const std::string& name, std::string_view target = "B") {
    uint64_t served = server_->bytes_served();
    auto reply = machine.Agent({"ralphctl", "update", "install", GuestUrl(name)}, kInstallTimeout);
    ASSERT_TRUE(reply) << reply.error().ToString();
    ASSERT_EQ(reply->exit, 0) << reply->output;
    EXPECT_NE(reply->output.find(fmt::format("into slot {}", target)), std::string::npos)
        << reply->output;
    EXPECT_GT(server_->bytes_served(), served);
  }

  // After power-off: the audit log rows of `type`, in order, read from the
  // disk's VAR file system on the host (debugfs) with the audit library; the
  // whole hash chain must verify. Expects exactly `expected` such rows.
  std::vector<audit::AuditRecord> AuditRows(const std::string& type, size_t expected) {
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
    if (!log) return std::vector<audit::AuditRecord>(expected);
    auto verified = (*log)->Verify();
    EXPECT_TRUE(verified) << verified.error().ToString();
    if (verified && !verified->ok()) ADD_FAILURE() << verified->broken->message;
    auto rows = (*log)->List();
    EXPECT_TRUE(rows) << rows.error().ToString();
    if (!rows) return std::vector<audit::AuditRecord>(expected);
    std::vector<audit::AuditRecord> found;
    std::string all;
    for (const auto& row : *rows) {
      all += fmt::format("{} {} {} {}\n", row.seq, row.type, row.subject, row.details);
      if (row.type == type) found.push_back(row);
    }
    EXPECT_EQ(found.size(), expected) << type << " rows in the audit log:\n" << all;
    found.resize(expected);
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
  std::string host_ = "10.0.2.2";
  std::unique_ptr<DnsResponder> dns_;
  std::unique_ptr<ota::testing::TestServer> server_;
};

TEST_F(OtaTest, GoodBundleOverHttpsIsTriedThenCommittedAndInstallsIntoEitherSlot) {
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

  // The same bundle file, now from B into A: its UKI names no slot, so it
  // boots from A's ESP file and early boot mounts A's root.
  WaitForNetwork(machine);
  ASSERT_FALSE(HasFailure());
  ASSERT_NO_FATAL_FAILURE(InstallOverHttps(machine, "ralphos-0.2.0.rbundle", "A"));
  ASSERT_NO_FATAL_FAILURE(RebootInto(machine, "A"));
  auto back_in_a = machine.WaitFor(CommittedSlot("A"), kBootTimeout);
  ASSERT_TRUE(back_in_a) << back_in_a.error().ToString();
  EXPECT_EQ(BootCurrentDescription(machine), "RalphOS A");
  EXPECT_EQ(FirstInBootOrderDescription(machine), "RalphOS A");
  auto early_boot = machine.Agent({"cat", "/run/ralph/early-boot"}, kAgentTimeout);
  ASSERT_TRUE(early_boot) << early_boot.error().ToString();
  EXPECT_NE(early_boot->output.find("slot=a\n"), std::string::npos) << early_boot->output;
  EXPECT_NE(early_boot->output.find("LoaderImageIdentifier \\EFI\\ralph\\a.efi"), std::string::npos)
      << early_boot->output;
  auto status_a = Ralphctl(machine, {"update", "status"});
  EXPECT_NE(status_a.output.find(
                "last update: the update to version 0.2.0 in slot A passed its trial and is "
                "committed"),
            std::string::npos)
      << status_a.output;
  nlohmann::json after_a = StatusJson(machine);
  EXPECT_EQ(after_a["last_update"].value("target", ""), "A") << after_a.dump();
  EXPECT_EQ(after_a["last_update"].value("from", ""), "B") << after_a.dump();

  ASSERT_NO_FATAL_FAILURE(PowerOff(machine));
  std::vector<audit::AuditRecord> rows = AuditRows("update-committed", 2);
  EXPECT_EQ(rows[0].subject, "slot B");
  EXPECT_EQ(rows[1].subject, "slot A");
  for (const audit::AuditRecord& row : rows) {
    EXPECT_EQ(row.actor, "ota");
    auto details = nlohmann::json::parse(row.details, nullptr, false);
    EXPECT_EQ(details.value("version", ""), "0.2.0") << row.details;
    EXPECT_EQ(details.value("outcome", ""), "committed") << row.details;
  }
}

TEST_F(OtaTest, BundleFailingItsHealthGateRollsBackToAAndIsReported) {
  std::vector<uint8_t> bundle = MakeBundle("health-fail", "0.3.0");
  ASSERT_FALSE(bundle.empty());
  ASSERT_NO_FATAL_FAILURE(StartNamedServer());
  server_->Add("ralphos-0.3.0.rbundle", std::move(bundle));
  Machine machine = BootAWithNetwork();
  ASSERT_FALSE(HasFailure());
  // The resolver file the DHCP hook wrote from the lease (QEMU's relay).
  auto resolv = machine.Agent({"cat", "/run/ralph/resolv.conf"}, kAgentTimeout);
  ASSERT_TRUE(resolv) << resolv.error().ToString();
  EXPECT_NE(resolv->output.find("\nnameserver 10.0.2.3\n"), std::string::npos) << resolv->output;

  ASSERT_NO_FATAL_FAILURE(InstallOverHttps(machine, "ralphos-0.3.0.rbundle"));
  EXPECT_GT(dns_->answered(), 0u);
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
  audit::AuditRecord row = AuditRows("update-rolled-back", 1)[0];
  EXPECT_EQ(row.actor, "ota");
  EXPECT_EQ(row.subject, "slot B");
  auto details = nlohmann::json::parse(row.details, nullptr, false);
  EXPECT_EQ(details.value("version", ""), "0.3.0") << row.details;
  EXPECT_EQ(details.value("summary", ""), kRolledBack) << row.details;
}

}  // namespace
}  // namespace ralph::e2e
