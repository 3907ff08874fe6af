// The real ralphd on a temp state dir, driven with ralphctl and through its
// socket: a job's output, exit status, uploaded workspace, downloaded result
// and recorded writes; egress denied and audited; policy validate, set and
// roll back; a job asking for more than its policy allows; bad frames with
// the daemon serving on; cancel; and SIGKILL mid-job, then a restart: the job
// is lost with its reason, nothing of its sandbox is left, the audit chain
// verifies; SIGKILL at chosen writes of the audit log (an LD_PRELOAD shim,
// audit_kill_shim.cpp), then a restart: the chain verifies and every job's
// record is consistent. The ralphctl cases run on both transports: the local socket and
// `ralphctl --remote` over the HTTPS API (ralphd --api-listen) with an
// identity paired by `ralphctl pair` + `ralphctl remote pair`; its errors
// (missing identity, not an appliance, pin mismatch, revoked). With
// --api-listen: pairing from `ralphctl pair`, a job over mutual TLS with the
// client library, an unpaired and a revoked client refused. A tty job's
// terminal over the local socket's attach frames, `ralphctl` in pipe mode
// and the HTTPS WebSocket: input, resize, a second watcher, detach with the
// job running on, reattach, `closed` with the exit status, refusals, audit.
// Agent jobs with the stand-in agent as the claude profile's tool: events,
// usage, audited tool calls, a prompt file, refusals; loop mode: the
// promise after K runs gives K iterations with commits and transcripts,
// each stop condition, cancel, pause and resume, bad loop input. The
// agents' credentials with the stand-in login program: a login on the
// relayed pty captured encrypted, an account shared by reference (a
// refresh one job makes is what the next sees, holders serialized),
// grants by policy, revocation, the live copy written back after a crash.
// each stop condition, cancel, pause and resume, bad loop input. The shared
// agent memory: a job granted it writes and reads through the socket in its
// sandbox as itself, a read-only grant cannot write, a job without the
// grant has no socket; ralphctl memory sees and adds to the same store.
#include <arpa/inet.h>
#include <dirent.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "platform/sha256.h"
#include "services/creds/store.h"
#include "services/memory/store.h"
#include "services/ralphd/api/client.h"
#include "services/ralphd/commands.h"
#include "tests/support/run_program.h"
#include "tests/support/test_seed.h"
#include "tests/support/wait_for.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;
using ralph::testing::ProgramStreams;
using ralph::testing::RunProgramStreams;
using ralph::testing::WaitFor;

std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void Write(const std::string& path, const std::string& content) {
  std::ofstream(path) << content;
}

// Cgroup directories of ralphd's job services owned by `pid`.
size_t JobCgroups(pid_t pid) {
  ProgramStreams found = RunProgramStreams(
      {"sh", "-c",
       fmt::format("find /sys/fs/cgroup -mindepth 1 -type d -name 'ralphd-job*@{}.*' 2>/dev/null",
                   pid)});
  return static_cast<size_t>(std::count(found.out.begin(), found.out.end(), '\n'));
}

size_t MountsBelow(const std::string& dir) {
  std::istringstream mounts(Read("/proc/self/mounts"));
  std::string device, target, line;
  size_t count = 0;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    fields >> device >> target;
    if (target.rfind(dir + "/", 0) == 0) ++count;
  }
  return count;
}

std::set<std::string> NftTables() {
  ProgramStreams tables = RunProgramStreams({"nft", "list", "tables"});
  std::set<std::string> out;
  std::istringstream lines(tables.out);
  std::string line;
  while (std::getline(lines, line)) out.insert(line);
  return out;
}

class RalphdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "ralphd's tests need root";
    work_ = fmt::format("/tmp/ralphd-test-{}-{}", ::getpid(), counter_++);
    const char* build = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(build, nullptr);
    ralphd_ = std::string(build) + "/bin/ralphd";
    ralphctl_ = std::string(build) + "/bin/ralphctl";
    state_ = work_ + "/var";
    socket_ = work_ + "/ralphd.sock";
    // The jobs' base: merged-/usr symlinks; the profiles bind the host's /usr.
    std::string base = work_ + "/base";
    ASSERT_EQ(RunProgramStreams({"sh", "-c",
                                 fmt::format("mkdir -p {0}/usr {0}/etc && for l in bin lib lib64 "
                                             "sbin; do ln -s usr/$l {0}/$l; done",
                                             base)})
                  .exit,
              0);
    StartDaemon();
    Write(work_ + "/policy.xml", R"(<policy format="1">
  <profile name="default">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
  <profile name="net">
    <limits memory="256MiB" timeout="5m"/>
    <egress/>
    <mount source="/usr" destination="/usr"/>
  </profile>
</policy>
)");
    ProgramStreams set = Ctl({"policy", "set", work_ + "/policy.xml", "--comment", "tests"});
    ASSERT_EQ(set.exit, 0) << set.err;
  }

  void TearDown() override {
    StopDaemon(SIGTERM);
    RunProgramStreams({"sh", "-c",
                       fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r "
                                   "umount -l; rm -rf {}",
                                   work_, work_)});
  }

  void StartDaemon(int max_running = 2, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {ralphd_,         "--state-dir",   state_,
                                     "--socket",      socket_,         "--job-root",
                                     work_ + "/base", "--max-running", std::to_string(max_running)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string why;
    daemon_ = ralph::testing::StartServing(argv, socket_, &why);
    ASSERT_GT(daemon_, 0) << why;
  }

  void StopDaemon(int signal) {
    if (daemon_ <= 0) return;
    ::kill(daemon_, signal);
    int status = 0;
    ::waitpid(daemon_, &status, 0);
    daemon_ = -1;
  }

  int Connect() {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{.sun_family = AF_UNIX, .sun_path = {}};
    socket_.copy(address.sun_path, socket_.size());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  // ralphctl COMMAND --socket ... ARGS (options before a job's "--"); with
  // remote_ set, `ralphctl --remote URL --identity DIR COMMAND ...` instead.
  ProgramStreams Ctl(std::vector<std::string> args, bool as_json = false) {
    std::vector<std::string> options = {"--socket", socket_};
    if (!remote_.empty()) options.clear();
    if (as_json) options.push_back("--json");
    args.insert(args.begin() + 1, options.begin(), options.end());
    if (!remote_.empty()) args.insert(args.begin(), {"--remote", remote_, "--identity", identity_});
    args.insert(args.begin(), ralphctl_);
    return RunProgramStreams(args);
  }

  // The console's ralphctl (the local socket), whatever the transport.
  ProgramStreams Console(std::vector<std::string> args, bool as_json = false) {
    std::string remote = std::exchange(remote_, "");
    ProgramStreams run = Ctl(std::move(args), as_json);
    remote_ = remote;
    return run;
  }

  // Restarts the daemon with the HTTPS API on a free loopback port; its
  // port.
  std::string StartWithApi(std::vector<std::string> extra = {}) {
    StopDaemon(SIGTERM);
    std::string port_file = state_ + "/api/port";
    ::unlink(port_file.c_str());
    extra.insert(extra.begin(), {"--api-listen", "127.0.0.1:0"});
    StartDaemon(2, extra);
    EXPECT_TRUE(WaitFor([&] { return !Read(port_file).empty(); })) << port_file;
    std::string port = Read(port_file);
    while (!port.empty() && port.back() == '\n') port.pop_back();
    return port;
  }

  // `ralphctl pair` on the console, `ralphctl remote pair` on the "host"
  // (dialling the loopback port, as through a forwarded one); the URL.
  std::string PairRemote(const std::string& port, const std::string& identity) {
    json offer = CtlJson({"pair"});
    std::string pairing = offer.value("pairing", "");
    ProgramStreams paired =
        RunProgramStreams({ralphctl_, "remote", "pair", "--identity", identity, "--address",
                           "127.0.0.1:" + port, "--name", "test host", pairing});
    EXPECT_EQ(paired.exit, 0) << paired.err;
    EXPECT_NE(paired.out.find("paired with 127.0.0.1:" + port), std::string::npos) << paired.out;
    return "https://127.0.0.1:" + port;
  }

  json CtlJson(std::vector<std::string> args) {
    ProgramStreams run = Ctl(args, /*as_json=*/true);
    EXPECT_EQ(run.exit, 0) << run.err;
    json out = json::parse(run.out, nullptr, false);
    EXPECT_FALSE(out.is_discarded()) << run.out;
    return out.is_discarded() ? json::object() : out;
  }

  std::string JobState(int id) {
    json job = CtlJson({"job", "show", std::to_string(id)});
    return job.is_object() ? job.value("state", "") : "";
  }

  std::string work_, state_, socket_, ralphd_, ralphctl_;
  // Set: Ctl goes through the HTTPS API with this URL and identity.
  std::string remote_, identity_;
  pid_t daemon_ = -1;
  static inline int counter_ = 0;
};

// One line each way on a raw connection.
class Line {
 public:
  explicit Line(int fd) : fd_(fd) {}
  ~Line() { ::close(fd_); }
  json Call(const std::string& frame) {
    std::string line = frame + "\n";
    EXPECT_EQ(::send(fd_, line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    return Next();
  }
  // The next frame (a following request's).
  json Next() {
    std::string reply;
    char c;
    while (::read(fd_, &c, 1) == 1 && c != '\n') reply += c;
    return json::parse(reply, nullptr, false);
  }

 private:
  int fd_;
};

// The same ralphctl cases on both transports: the local socket, and
// `ralphctl --remote` over the HTTPS API with an identity paired from the
// console's `ralphctl pair` (mutual TLS, the device key pinned).
enum class Transport { kLocal, kRemote };

class RalphctlTest : public RalphdTest, public ::testing::WithParamInterface<Transport> {
 protected:
  void SetUp() override {
    RalphdTest::SetUp();
    if (HasFatalFailure() || GetParam() == Transport::kLocal) return;
    std::string port = StartWithApi();
    identity_ = work_ + "/host-identity";
    remote_ = PairRemote(port, identity_);
    ASSERT_FALSE(HasFailure());
  }
};

INSTANTIATE_TEST_SUITE_P(Transports, RalphctlTest,
                         ::testing::Values(Transport::kLocal, Transport::kRemote),
                         [](const ::testing::TestParamInfo<Transport>& info) {
                           return info.param == Transport::kLocal ? "LocalSocket" : "Https";
                         });

TEST_P(RalphctlTest, JobWithWorkspaceOutputExitStatusAndRecordedWrites) {
  std::string in = work_ + "/in";
  ASSERT_EQ(::mkdir(in.c_str(), 0755), 0);
  Write(in + "/input.txt", "hello from the upload\n");
  // Over 1 MiB, the API's limit for every other body: an upload has the
  // core's own.
  ASSERT_EQ(
      RunProgramStreams({"sh", "-c", fmt::format("head -c 3M /dev/urandom > {}/big.bin", in)}).exit,
      0);
  ASSERT_EQ(RunProgramStreams({"tar", "-cf", work_ + "/in.tar", "-C", in, "."}).exit, 0);

  ProgramStreams run = Ctl({"job", "run", "--workspace", work_ + "/in.tar", "--", "sh", "-c",
                            "cat input.txt; echo oops >&2; echo result > out.txt; exit 3"});
  EXPECT_EQ(run.exit, 3) << run.err;  // the job's own exit status
  EXPECT_EQ(run.out, "hello from the upload\n");
  EXPECT_NE(run.err.find("oops\n"), std::string::npos) << run.err;

  json job = CtlJson({"job", "show", "1"});
  EXPECT_EQ(job["state"], "failed");
  EXPECT_EQ(job["termination"], "exited");
  EXPECT_EQ(job["exit_code"], 3);
  EXPECT_EQ(job["reason"], "exit status 3");
  EXPECT_TRUE(job["usage"].contains("wall_ms"));

  json files = CtlJson({"job", "files", "1"});
  std::string digest = DigestToHex(
      *Sha256::Of(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("result\n"), 7)));
  bool found = false;
  for (const json& file : files["files"]) {
    if (file["path"] == "/work/out.txt") {
      found = true;
      EXPECT_EQ(file["size"], 7);
      EXPECT_EQ(file["sha256"], digest);
    }
  }
  EXPECT_TRUE(found) << files.dump();

  ProgramStreams download = Ctl({"job", "download", "1", "--output", work_ + "/out.tar"});
  ASSERT_EQ(download.exit, 0) << download.err;
  ProgramStreams extracted = RunProgramStreams({"tar", "-xOf", work_ + "/out.tar", "./out.txt"});
  EXPECT_EQ(extracted.out, "result\n") << extracted.err;
  ProgramStreams listed = RunProgramStreams({"tar", "-tf", work_ + "/out.tar"});
  EXPECT_NE(listed.out.find("./input.txt"), std::string::npos) << listed.out;
  EXPECT_NE(listed.out.find("./big.bin"), std::string::npos) << listed.out;

  // The output from an offset; the audit trail of the job.
  ProgramStreams tail = Ctl({"job", "logs", "1", "--offset", "6"});
  EXPECT_EQ(tail.out, "from the upload\n");
  json audit = CtlJson({"audit", "list", "--job", "1", "--limit", "0"});
  std::set<std::string> types;
  for (const json& row : audit) types.insert(row["type"].get<std::string>());
  for (const char* type : {"job.submit", "job.workspace-upload", "job.state", "job.files"}) {
    EXPECT_TRUE(types.count(type)) << type << " in " << audit.dump();
  }
  ProgramStreams exported = Ctl({"audit", "export", "--job", "1", "--type", "job.submit"});
  ASSERT_EQ(exported.exit, 0) << exported.err;
  json submitted = json::parse(exported.out.substr(0, exported.out.find('\n')), nullptr, false);
  EXPECT_EQ(submitted.value("subject", ""), "job 1") << exported.out;
  ProgramStreams verify = Ctl({"audit", "verify"});
  EXPECT_EQ(verify.exit, 0) << verify.err;
  EXPECT_NE(verify.out.find("chain intact"), std::string::npos) << verify.out;
}

// Every output chunk, state change and audit record has a sequence number;
// asking again after the last one seen gives exactly what came later.
TEST_F(RalphdTest, EventsAfterASequenceNumberLoseNothing) {
  ASSERT_EQ(Ctl({"job", "run", "--", "sh", "-c", "echo one; echo two"}).exit, 0);
  int fd = Connect();
  ASSERT_GE(fd, 0);
  Line line(fd);
  json all = line.Call(R"({"verb":"GET","path":"/v1/events","query":{"job":"1"}})");
  ASSERT_EQ(all["ok"], true) << all.dump();
  const json& events = all["body"]["events"];
  ASSERT_GE(events.size(), 4u) << all.dump();
  std::string output;
  std::vector<std::string> states;
  uint64_t previous = 0;
  for (const json& event : events) {
    EXPECT_GT(event["seq"].get<uint64_t>(), previous);
    previous = event["seq"].get<uint64_t>();
    if (event["kind"] == "output") output += event["body"]["data_base64"].get<std::string>();
    if (event["kind"] == "state") states.push_back(event["body"]["state"].get<std::string>());
  }
  EXPECT_FALSE(output.empty());
  EXPECT_EQ(states, (std::vector<std::string>{"queued", "running", "succeeded"}));
  // A reconnect after the third event gets the rest, in order.
  uint64_t third = events[2]["seq"].get<uint64_t>();
  json rest = line.Call(fmt::format(
      R"({{"verb":"GET","path":"/v1/events","query":{{"job":"1","after":"{}"}}}})", third));
  ASSERT_EQ(rest["body"]["events"].size(), events.size() - 3);
  EXPECT_EQ(rest["body"]["events"][0], events[3]);

  // Following: every event from then on, numbered without a gap, while
  // another job runs.
  uint64_t last = rest["body"]["last_seq"].get<uint64_t>();
  int follower = Connect();
  ASSERT_GE(follower, 0);
  Line stream(follower);
  json started = stream.Call(fmt::format(
      R"({{"verb":"GET","path":"/v1/events","query":{{"after":"{}"}},"follow":true}})", last));
  ASSERT_EQ(started["ok"], true) << started.dump();
  ASSERT_EQ(Ctl({"job", "run", "--", "echo", "three"}).exit, 0);
  uint64_t expected = last + 1;
  bool finished = false;
  while (!finished) {
    json frame = stream.Next();
    ASSERT_TRUE(frame.contains("event")) << frame.dump();
    EXPECT_EQ(frame["event"]["seq"], expected++);
    finished = frame["event"]["kind"] == "state" && frame["event"]["job"] == 2 &&
               frame["event"]["body"]["state"] == "succeeded";
  }

  // The audit log as JSON lines, filtered by job.
  ProgramStreams exported = Ctl({"audit", "export", "--job", "1"});
  ASSERT_EQ(exported.exit, 0) << exported.err;
  std::istringstream lines(exported.out);
  std::string row;
  size_t rows = 0, execs = 0;
  while (std::getline(lines, row)) {
    json record = json::parse(row, nullptr, false);
    ASSERT_TRUE(record.is_object()) << row;
    EXPECT_EQ(record["subject"], "job 1");
    ++(record["type"] == "job.exec" ? execs : rows);
  }
  EXPECT_EQ(rows, 4u);   // submit, running, files (none), succeeded
  EXPECT_EQ(execs, 1u);  // sh (echo is its builtin)

  // By time: the rows from job 1's submission on; none before the first.
  json job1 = CtlJson({"audit", "list", "--job", "1", "--limit", "0"});
  ASSERT_FALSE(job1.empty());
  std::string submitted = job1[0]["time"];
  json since = CtlJson({"audit", "list", "--since", submitted, "--limit", "0"});
  ASSERT_FALSE(since.empty());
  for (const json& record : since) EXPECT_GE(record["time"].get<std::string>(), submitted);
  EXPECT_LE(since[0]["seq"].get<int64_t>(), job1[0]["seq"].get<int64_t>());
  ProgramStreams before = Ctl({"audit", "export", "--job", "1", "--until", submitted});
  ASSERT_EQ(before.exit, 0) << before.err;
  EXPECT_EQ(before.out, "");
  ProgramStreams bad = Ctl({"audit", "list", "--since", "now"});
  EXPECT_EQ(bad.exit, 2);
  EXPECT_NE(bad.err.find("--since: 'now' is not a UTC time"), std::string::npos) << bad.err;
}

// Every process a job starts is in the audit log, in order, with its argv
// redacted; the rows precede the job's final state row.
TEST_F(RalphdTest, EveryExecOfAJobIsAuditedWithItsArgvRedacted) {
  ProgramStreams run =
      Ctl({"job", "run", "--", "/bin/sh", "-c",
           "/bin/echo a b; /usr/bin/env GITHUB_TOKEN=ghp_s3cr3t /bin/true --api-key k3y 'c d'; "
           "/bin/true https://ops:hunter2@example.com/x"});
  ASSERT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out, "a b\n");
  json execs = CtlJson({"audit", "list", "--job", "1", "--type", "job.exec", "--limit", "0"});
  ASSERT_TRUE(execs.is_array()) << execs.dump();
  std::vector<std::string> seen;
  for (const json& row : execs) {
    EXPECT_EQ(row["subject"], "job 1");
    EXPECT_EQ(row["actor"], "ralphd");
    EXPECT_GT(row["details"]["pid"].get<int>(), 0);
    EXPECT_FALSE(row["details"]["time"].get<std::string>().empty());
    seen.push_back(row["details"]["path"].get<std::string>() + " " + row["details"]["argv"].dump());
  }
  EXPECT_EQ(
      seen,
      (std::vector<std::string>{
          R"(/bin/sh ["/bin/sh","-c","/bin/echo a b; /usr/bin/env GITHUB_TOKEN=[REDACTED] /bin/true --api-key [REDACTED] 'c d'; /bin/true https://ops:[REDACTED]@example.com/x"])",
          R"(/bin/echo ["/bin/echo","a","b"])",
          R"(/usr/bin/env ["/usr/bin/env","GITHUB_TOKEN=[REDACTED]","/bin/true","--api-key","[REDACTED]","c d"])",
          R"(/bin/true ["/bin/true","--api-key","[REDACTED]","c d"])",
          R"(/bin/true ["/bin/true","https://ops:[REDACTED]@example.com/x"])",
      }));
  // No secret reached the log file, and the exec rows precede the last state row.
  json all = CtlJson({"audit", "list", "--job", "1", "--limit", "0"});
  std::string dumped = all.dump();
  for (const char* secret : {"ghp_s3cr3t", "k3y", "hunter2"})
    EXPECT_EQ(dumped.find(secret), std::string::npos) << secret;
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back()["type"], "job.state") << dumped;
  EXPECT_LT(execs.back()["seq"].get<int64_t>(), all.back()["seq"].get<int64_t>());
}

TEST_P(RalphctlTest, EgressIsDeniedAndAudited) {
  ProgramStreams run = Ctl({"job", "run", "--profile", "net", "--", "python3", "-c",
                            "import socket; socket.create_connection(('203.0.113.9', 8080), 5)"});
  EXPECT_NE(run.exit, 0) << run.out;
  json denied = CtlJson({"audit", "list", "--job", "1", "--type", "net.denied"});
  ASSERT_FALSE(denied.empty()) << run.err;
  EXPECT_EQ(denied[0]["details"]["destination"], "203.0.113.9");
  EXPECT_EQ(denied[0]["details"]["port"], 8080);
  EXPECT_EQ(denied[0]["subject"], "job 1");
}

TEST_P(RalphctlTest, PolicyValidateSetAndRollback) {
  Write(work_ + "/bad.xml",
        "<policy format=\"1\">\n  <profile name=\"x\">\n    <limits memory=\"lots\" "
        "timeout=\"5\"/>\n  </profile>\n</policy>\n");
  ProgramStreams validate = Ctl({"policy", "validate", work_ + "/bad.xml"});
  EXPECT_EQ(validate.exit, 1);
  EXPECT_NE(validate.err.find(work_ + "/bad.xml:3:13: <limits>: memory: 'lots' is not a size"),
            std::string::npos)
      << validate.err;
  EXPECT_NE(validate.err.find(work_ + "/bad.xml:3:27: <limits>: timeout: '5' is not a duration"),
            std::string::npos)
      << validate.err;

  // A bad document changes nothing.
  ProgramStreams set = Ctl({"policy", "set", work_ + "/bad.xml"});
  EXPECT_EQ(set.exit, 1);
  EXPECT_NE(set.err.find("bad.xml:3:13"), std::string::npos) << set.err;
  EXPECT_EQ(CtlJson({"status"})["policy_version"], 2);

  ProgramStreams rollback = Ctl({"policy", "rollback", "1"});
  ASSERT_EQ(rollback.exit, 0) << rollback.err;
  EXPECT_EQ(rollback.out, "policy version 3 is active (rollback to version 1)\n");
  json active = CtlJson({"policy", "get"});
  EXPECT_EQ(active["version"], 3);
  EXPECT_EQ(active["document"], CtlJson({"policy", "get", "--version", "1"})["document"]);
  json history = CtlJson({"policy", "history"});
  ASSERT_EQ(history["versions"].size(), 3u);
  EXPECT_EQ(history["versions"][0]["active"], true);
  json audited = CtlJson({"audit", "list", "--type", "policy.rollback"});
  ASSERT_EQ(audited.size(), 1u);
  EXPECT_EQ(audited[0]["details"]["version"], 3);
}

TEST_P(RalphctlTest, AJobAskingForMoreThanItsPolicyIsRefused) {
  ProgramStreams run = Ctl({"job", "run", "--pids", "65", "--", "true"});
  EXPECT_EQ(run.exit, 1);
  EXPECT_NE(run.err.find("limits.pids: 65 is more than profile 'default' allows (64) [refused]"),
            std::string::npos)
      << run.err;
  ProgramStreams unknown = Ctl({"job", "run", "--profile", "gpu", "--", "true"});
  EXPECT_EQ(unknown.exit, 1);
  EXPECT_NE(unknown.err.find("profile: 'gpu' is not in the active policy (version 2)"),
            std::string::npos)
      << unknown.err;
  // Asking for less is fine.
  EXPECT_EQ(Ctl({"job", "run", "--pids", "8", "--", "true"}).exit, 0);
}

TEST_F(RalphdTest, BadFramesGetPreciseErrorsAndTheDaemonServesOn) {
  int fd = Connect();
  ASSERT_GE(fd, 0);
  Line line(fd);
  json reply = line.Call("{not json");
  EXPECT_EQ(reply["ok"], false);
  EXPECT_EQ(reply["error"]["code"], "invalid-argument");
  EXPECT_EQ(reply["error"]["message"].get<std::string>().rfind(
                "frame: malformed JSON at line 1, column 3", 0),
            0u)
      << reply.dump();
  reply = line.Call(R"({"verb":"GET","path":"/v1/status","bogus":1})");
  EXPECT_EQ(reply["error"]["message"], "frame.bogus: unknown member");
  reply = line.Call(R"({"verb":"POST","path":"/v1/jobs","body":{"argv":["true"],"colour":"red"}})");
  EXPECT_EQ(reply["error"]["message"], "body.colour: unknown field");
  reply = line.Call(R"({"verb":"POST","path":"/v1/jobs","body":{"argv":"true"}})");
  EXPECT_EQ(reply["error"]["message"], "body.argv: expected an array of strings, got string");
  reply = line.Call(R"({"verb":"GET","path":"/v1/jobs/99"})");
  EXPECT_EQ(reply["error"]["code"], "not-found");
  EXPECT_EQ(reply["error"]["message"], "job 99: no such job");
  // The same connection, and a new one, are still served.
  reply = line.Call(R"({"verb":"GET","path":"/v1/status"})");
  EXPECT_EQ(reply["ok"], true) << reply.dump();
  EXPECT_EQ(Ctl({"status"}).exit, 0);
  // Every refusal was audited with its error; the reads that succeeded
  // were not, each connection that asked was (its session).
  json commands = CtlJson({"audit", "list", "--type", "command", "--limit", "0"});
  bool refused = false;
  for (const json& row : commands) {
    if (row["subject"] == "job.show" && row["details"]["result"] == "not-found") refused = true;
    EXPECT_FALSE(row["subject"] == "status") << row.dump();
  }
  EXPECT_TRUE(refused) << commands.dump();
  json sessions = CtlJson({"audit", "list", "--type", "local.session", "--limit", "0"});
  ASSERT_GE(sessions.size(), 2u) << sessions.dump();
  for (const json& row : sessions) {
    EXPECT_EQ(row["subject"], "uid:0") << row.dump();
    EXPECT_EQ(row["details"]["caller"], "uid:0") << row.dump();
    EXPECT_TRUE(row["details"]["peer"].get<std::string>().starts_with("pid ")) << row.dump();
  }
}

// The break-glass reboot needs the appliance's ralphd (--recovery-reboot,
// where PID 1 is ralph-init): here it is refused, naming why, on both
// transports, audited as a refused command, and the daemon serves on. The
// reboot itself is e2e_armed_recovery's.
TEST_P(RalphctlTest, ARecoveryRebootIsRefusedByADaemonThatDoesNotRebootTheMachine) {
  ProgramStreams reboot = Ctl({"recovery", "reboot", "--reason", "test"});
  EXPECT_EQ(reboot.exit, 1);
  EXPECT_NE(reboot.err.find("this ralphd does not reboot the machine"), std::string::npos)
      << reboot.err;
  ProgramStreams bad = Ctl({"recovery", "restart"});
  EXPECT_EQ(bad.exit, 2) << bad.err;
  EXPECT_EQ(Ctl({"status"}).exit, 0);
  json commands = CtlJson({"audit", "list", "--type", "command", "--limit", "0"});
  bool refused = false;
  for (const json& row : commands) {
    if (row["subject"] == "recovery.reboot" && row["details"]["result"] == "unsupported") {
      refused = true;
    }
  }
  EXPECT_TRUE(refused) << commands.dump();
  EXPECT_EQ(CtlJson({"audit", "list", "--type", "recovery.reboot", "--limit", "0"}).size(), 0u);
}

TEST_P(RalphctlTest, TimeoutsUnsafeUploadsAndNonRootCallersAreRefused) {
  // Killed by the timeout it asked for (less than the profile's).
  ProgramStreams slow = Ctl({"job", "run", "--timeout-ms", "300", "--", "sleep", "600"});
  EXPECT_EQ(slow.exit, 1);
  EXPECT_EQ(JobState(1), "timed-out");

  // A member that climbs out of the workspace: refused, the job never runs.
  ASSERT_EQ(RunProgramStreams({"python3", "-c",
                               "import io, tarfile, sys\n"
                               "t = tarfile.open(sys.argv[1], 'w')\n"
                               "i = tarfile.TarInfo('../escaped'); i.size = 2\n"
                               "t.addfile(i, io.BytesIO(b'x\\n')); t.close()",
                               work_ + "/evil.tar"})
                .exit,
            0);
  ProgramStreams evil = Ctl({"job", "run", "--workspace", work_ + "/evil.tar", "--", "true"});
  EXPECT_EQ(evil.exit, 1);
  EXPECT_NE(evil.err.find("member '../escaped' is absolute or has '..'"), std::string::npos)
      << evil.err;
  EXPECT_NE(::access((state_ + "/jobs/escaped").c_str(), F_OK), 0);

  // SO_PEERCRED: another uid is refused even when the file mode lets it in.
  if (GetParam() == Transport::kRemote) return;
  ASSERT_EQ(::chmod(socket_.c_str(), 0666), 0);
  ProgramStreams nobody =
      RunProgramStreams({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ralphctl_,
                         "status", "--socket", socket_});
  EXPECT_EQ(nobody.exit, 1);
  EXPECT_NE(nobody.err.find("uid 65534: only root may use ralphd's local socket"),
            std::string::npos)
      << nobody.err;
}

// Following a job that writes as it runs: every byte once, in order, from
// where the follow started to the job's end (over HTTPS: its logs, then its
// event stream, placed by byte offset).
TEST_P(RalphctlTest, FollowingARunningJobGetsEachByteOnce) {
  json job = CtlJson({"job", "run", "--detach", "--", "sh", "-c",
                      "for i in $(seq 1 40); do echo line $i; echo err $i >&2; sleep 0.02; done"});
  ASSERT_EQ(job["id"], 1);
  std::string expected, expected_err;
  for (int i = 1; i <= 40; ++i) {
    expected += fmt::format("line {}\n", i);
    expected_err += fmt::format("err {}\n", i);
  }
  ProgramStreams follow = Ctl({"job", "logs", "1", "--follow"});
  EXPECT_EQ(follow.exit, 0) << follow.err;
  EXPECT_EQ(follow.out, expected);
  EXPECT_EQ(JobState(1), "succeeded");
  // From an offset, the other stream, after the end.
  ProgramStreams tail = Ctl({"job", "logs", "1", "--follow", "--stream", "stderr", "--offset",
                             std::to_string(expected_err.size() - 7)});
  EXPECT_EQ(tail.exit, 0) << tail.err;
  EXPECT_EQ(tail.out, "err 40\n");
}

TEST_P(RalphctlTest, CancelKillsARunningJob) {
  json job = CtlJson({"job", "run", "--detach", "--", "sleep", "600"});
  ASSERT_EQ(job["id"], 1);
  ASSERT_TRUE(WaitFor([&] { return JobState(1) == "running" && JobCgroups(daemon_) > 0; }));
  ProgramStreams cancel = Ctl({"job", "cancel", "1"});
  ASSERT_EQ(cancel.exit, 0) << cancel.err;
  // --follow returns once the job is over.
  ProgramStreams follow = Ctl({"job", "logs", "1", "--follow"});
  EXPECT_EQ(follow.exit, 0) << follow.err;
  EXPECT_EQ(JobState(1), "cancelled");
  EXPECT_TRUE(WaitFor([&] { return JobCgroups(daemon_) == 0; }));
}

TEST_F(RalphdTest, KilledMidJobTheJobIsLostAndNothingIsLeft) {
  // One job at a time: the second one waits in the queue.
  StopDaemon(SIGTERM);
  StartDaemon(1);
  std::set<std::string> tables_before = NftTables();
  json job = CtlJson({"job", "run", "--detach", "--profile", "net", "--", "sh", "-c",
                      "echo started; exec sleep 600"});
  ASSERT_EQ(job["id"], 1);
  // Running, with its output through: the sandbox is all set up.
  ASSERT_TRUE(WaitFor([&] { return Ctl({"job", "logs", "1"}).out == "started\n"; }));
  json queued = CtlJson({"job", "run", "--detach", "--", "true"});
  EXPECT_EQ(queued["state"], "queued");
  pid_t dead = daemon_;
  ASSERT_GT(JobCgroups(dead), 0u);
  // The tables that appeared with the job (its own, its network service's).
  std::set<std::string> ours;
  for (const std::string& table : NftTables()) {
    if (!tables_before.count(table)) ours.insert(table);
  }
  EXPECT_FALSE(ours.empty());

  StopDaemon(SIGKILL);
  // The job died with its daemon; the kernel drops its netns, veth and
  // socket-owned nft tables.
  EXPECT_TRUE(WaitFor([&] {
    std::set<std::string> now = NftTables();
    return std::none_of(ours.begin(), ours.end(), [&](const auto& t) { return now.count(t); });
  }));
  StartDaemon(1);

  json lost = CtlJson({"job", "show", "1"});
  EXPECT_EQ(lost["state"], "lost");
  EXPECT_NE(lost["reason"].get<std::string>().find("ralphd stopped while the job ran"),
            std::string::npos)
      << lost.dump();
  // What the dead daemon's job left (cgroups, its volume) was swept.
  EXPECT_EQ(JobCgroups(dead), 0u);
  // The queued job stayed queued, and runs now.
  EXPECT_TRUE(WaitFor([&] { return JobState(queued.value("id", 0)) == "succeeded"; }));
  ProgramStreams verify = Ctl({"audit", "verify"});
  EXPECT_EQ(verify.exit, 0) << verify.err;
  EXPECT_NE(verify.out.find("chain intact"), std::string::npos);
  StopDaemon(SIGTERM);
  EXPECT_TRUE(WaitFor([&] { return MountsBelow(state_) == 0; })) << MountsBelow(state_);
}

// `ralphctl --remote`'s refusals, each naming what was wrong: a missing
// identity, a peer that is not an appliance's API, an appliance that is not
// the paired one, a revoked identity, the console-only pairing commands,
// malformed command lines (exit 2, nothing done).
TEST_F(RalphdTest, RemoteErrorsSayWhatWasWrong) {
  // The pairing strings advertise a name this host cannot resolve (the
  // appliance's own address); --address dials the forwarded port instead.
  std::string port = StartWithApi({"--api-address", "appliance.invalid:8443"});
  std::string identity = work_ + "/host";
  std::string advertised = CtlJson({"pair"}).value("pairing", "");
  ASSERT_TRUE(advertised.starts_with("ralphos-pair:v1?addr=appliance.invalid:8443&")) << advertised;
  ProgramStreams unreachable =
      RunProgramStreams({ralphctl_, "remote", "pair", "--identity", identity, advertised});
  EXPECT_EQ(unreachable.exit, 1);
  EXPECT_NE(unreachable.err.find("pairing with appliance.invalid:8443"), std::string::npos)
      << unreachable.err;
  EXPECT_NE(::access(identity.c_str(), F_OK), 0) << "nothing is stored when pairing fails";
  std::string url = PairRemote(port, identity);
  struct stat st {};
  ASSERT_EQ(::stat(identity.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const char* file : {"client.key", "client.crt", "ca.crt", "device.json"}) {
    ASSERT_EQ(::stat((identity + "/" + file).c_str(), &st), 0) << file;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << file;
  }
  auto remote = [&](std::vector<std::string> args, const std::string& dir) {
    args.insert(args.begin(), {ralphctl_, "--remote", url, "--identity", dir});
    return RunProgramStreams(args);
  };
  ProgramStreams ok = remote({"status"}, identity);
  ASSERT_EQ(ok.exit, 0) << ok.err;
  EXPECT_NE(ok.out.find("policy version 2"), std::string::npos) << ok.out;

  ProgramStreams missing = remote({"status"}, work_ + "/nowhere");
  EXPECT_EQ(missing.exit, 1);
  EXPECT_NE(missing.err.find("no client identity: " + work_ + "/nowhere is not a directory"),
            std::string::npos)
      << missing.err;

  // Not TLS at all: a plain TCP peer that answers in HTTP.
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in any{.sin_family = AF_INET, .sin_port = 0, .sin_addr = {htonl(INADDR_LOOPBACK)}};
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t length = sizeof any;
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&any), &length), 0);
  std::thread plain([listener] {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    char buffer[4096];
    [[maybe_unused]] ssize_t n = ::read(fd, buffer, sizeof buffer);
    std::string reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    [[maybe_unused]] ssize_t w = ::write(fd, reply.data(), reply.size());
    ::close(fd);
  });
  std::string plain_url = fmt::format("https://127.0.0.1:{}", ntohs(any.sin_port));
  ProgramStreams not_appliance =
      RunProgramStreams({ralphctl_, "--remote", plain_url, "--identity", identity, "job", "list"});
  plain.join();
  ::close(listener);
  EXPECT_EQ(not_appliance.exit, 1);
  EXPECT_NE(not_appliance.err.find(plain_url + " is not a RalphOS appliance's API"),
            std::string::npos)
      << not_appliance.err;

  // Another device key than the pinned one.
  std::string other = work_ + "/other";
  ASSERT_EQ(RunProgramStreams({"cp", "-a", identity, other}).exit, 0);
  json device = json::parse(Read(other + "/device.json"));
  device["spki_sha256"] = std::string(64, '0');
  Write(other + "/device.json", device.dump());
  ProgramStreams pin = remote({"status"}, other);
  EXPECT_EQ(pin.exit, 1);
  EXPECT_NE(pin.err.find(url + " is not the appliance paired in " + other), std::string::npos)
      << pin.err;
  EXPECT_NE(pin.err.find("pinned key"), std::string::npos) << pin.err;

  // Pairing is the console's.
  ProgramStreams pair = remote({"pair"}, identity);
  EXPECT_EQ(pair.exit, 2);
  EXPECT_NE(pair.err.find("pairing is done on the appliance's console"), std::string::npos)
      << pair.err;
  EXPECT_EQ(remote({"pairings", "list"}, identity).exit, 2);

  // Bad command lines.
  ProgramStreams http = RunProgramStreams({ralphctl_, "--remote", "http://127.0.0.1:1", "status"});
  EXPECT_EQ(http.exit, 2);
  EXPECT_NE(http.err.find("--remote: 'http://127.0.0.1:1' is not https://HOST:PORT"),
            std::string::npos)
      << http.err;
  EXPECT_EQ(RunProgramStreams({ralphctl_, "--remote", url, "--socket", socket_, "status"}).exit, 2);
  EXPECT_EQ(RunProgramStreams({ralphctl_, "--remote", url, "boot", "status"}).exit, 2);
  ProgramStreams garbage =
      RunProgramStreams({ralphctl_, "remote", "pair", "--identity", other, "not-a-pairing"});
  EXPECT_EQ(garbage.exit, 2);
  EXPECT_NE(garbage.err.find("the pairing string"), std::string::npos) << garbage.err;

  // Revoked: refused from the next request on, saying so.
  json listed = CtlJson({"pairings", "list"});
  ASSERT_EQ(listed["pairings"].size(), 1u) << listed.dump();
  ASSERT_EQ(Ctl({"pairings", "revoke", listed["pairings"][0].value("id", "")}).exit, 0);
  ProgramStreams revoked = remote({"job", "list"}, identity);
  EXPECT_EQ(revoked.exit, 1);
  EXPECT_NE(revoked.err.find(url + " refused the client identity in " + identity),
            std::string::npos)
      << revoked.err;
  EXPECT_NE(revoked.err.find("revoked"), std::string::npos) << revoked.err;
}

// ralphd SIGKILLed during its audit writes, at points reached by
// construction: the shim (audit_kill_shim.cpp, preloaded into the real
// ralphd) counts the calls that change the audit database's files (writes,
// truncations, syncs of audit.db, -wal, -shm) and kills the daemon at the
// n-th, before or after it; n is picked from a counted clean run of the same
// commands (policy set, two jobs run to their end, a running job and a
// queued one), spread over all of them (seeded: RALPH_TEST_SEED). After
// each kill a restart must find: the chain verifying, no job running that
// was not restarted, every job final once the rest ran (cancelled when
// needed), each job's audited states ending at its stored one save the
// transition in flight at the kill, and nothing of the dead daemon's
// sandboxes left (cgroups, mounts).
TEST_F(RalphdTest, KilledDuringAuditWritesTheChainVerifiesAndJobsAreConsistent) {
#if defined(__SANITIZE_ADDRESS__)
  // ASan's runtime must be the first library of the daemon it instruments,
  // so no shim can be preloaded before it; the release tree runs this test.
  GTEST_SKIP() << "the LD_PRELOAD kill shim cannot precede ASan's runtime";
#endif
  StopDaemon(SIGTERM);
  const std::string shim = RALPHD_AUDIT_KILL_SHIM;
  const std::string report = work_ + "/kill-report";
  auto start_with_shim = [&](int64_t at, bool after) {
    ::setenv("LD_PRELOAD", shim.c_str(), 1);
    ::setenv("RALPH_KILL_PATH", (state_ + "/audit.db").c_str(), 1);
    ::setenv("RALPH_KILL_AT", std::to_string(at).c_str(), 1);
    ::setenv("RALPH_KILL_AFTER", after ? "1" : "0", 1);
    ::setenv("RALPH_KILL_REPORT", report.c_str(), 1);
    daemon_ = ralph::testing::StartProgram({ralphd_, "--state-dir", state_, "--socket", socket_,
                                            "--job-root", work_ + "/base", "--max-running", "1"});
    for (const char* name : {"LD_PRELOAD", "RALPH_KILL_PATH", "RALPH_KILL_AT", "RALPH_KILL_AFTER",
                             "RALPH_KILL_REPORT"}) {
      ::unsetenv(name);
    }
  };
  auto exited = [&](int* status) { return ::waitpid(daemon_, status, WNOHANG) == daemon_; };
  // The commands of a round; with the daemon killed midway the rest fail.
  auto scenario = [&] {
    Ctl({"policy", "set", work_ + "/policy.xml", "--comment", "crash"});
    Ctl({"job", "run", "--", "/bin/echo", "hi"});
    Ctl({"job", "run", "--", "/bin/sh", "-c", "exit 3"});
    Ctl({"job", "run", "--detach", "--", "/bin/sleep", "600"});
    Ctl({"job", "run", "--detach", "--", "/bin/true"});  // queued behind the sleep
  };
  auto count = [&] { return std::atoll(Read(report).c_str()); };

  state_ = work_ + "/var-counted";
  std::filesystem::remove(report);
  start_with_shim(0, false);
  ASSERT_TRUE(WaitFor([&] { return Connect() >= 0; }));
  scenario();
  ASSERT_EQ(JobState(4), "queued");
  // A reply leaves before its command's audit record is written (the
  // loop's round ends with the commit), and a stop writes what is pending:
  // count to the end of a clean stop.
  StopDaemon(SIGTERM);
  const int64_t changes = count();
  fmt::print("a clean run changes the audit database's files {} times\n", changes);
  ASSERT_GT(changes, 20);

  std::mt19937 rng(ralph::testing::TestSeed());
  constexpr int kRounds = 10;
  for (int round = 0; round < kRounds; ++round) {
    // One point in each tenth of the run, so creation, the policy, both
    // jobs' lives and the detached ones are all reached.
    // (Runs differ by a few changes: a job's end and a request fall in one
    // loop round or two, one commit or two; the last ones are left out.)
    const int64_t span = changes - 15;
    int64_t lo = 1 + span * round / kRounds, hi = span * (round + 1) / kRounds;
    int64_t at = std::uniform_int_distribution<int64_t>(lo, std::max(lo, hi))(rng);
    bool after = rng() % 2 == 1;
    state_ = work_ + fmt::format("/var-{}", round);
    std::filesystem::remove(report);
    start_with_shim(at, after);
    int status = 0;
    bool died = false;
    auto reap = [&] { return died = died || exited(&status); };
    if (WaitFor([&] { return reap() || Connect() >= 0; }) && !reap()) scenario();
    // The clean run's last changes come with its stop.
    if (!reap()) ::kill(daemon_, SIGTERM);
    WaitFor(reap);
    std::string killed = Read(report);
    if (died && WIFEXITED(status) && count() < at) {
      // Batches group a little differently from run to run (a job's end
      // and a request in one loop round or two): this run made fewer
      // changes than the clean one. Rare; the point is not reached.
      fmt::print("round {}: {} changes, fewer than {}; not reached\n", round, count(), at);
      daemon_ = -1;
      continue;
    }
    SCOPED_TRACE(fmt::format("round {}: {} I/O #{} of {}: {}", round, after ? "after" : "before",
                             at, changes, killed));
    fmt::print("round {}: {}", round, killed);
    if (!died) StopDaemon(SIGKILL);
    pid_t dead = daemon_;
    daemon_ = -1;
    ASSERT_TRUE(died && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the shim did not kill ralphd, status " << status;
    ASSERT_EQ(killed.rfind("killed", 0), 0u) << killed;

    StartDaemon(1);
    ProgramStreams verify = Ctl({"audit", "verify"});
    EXPECT_EQ(verify.exit, 0) << verify.out << verify.err;
    // Recovery left nothing of the dead daemon's sandboxes.
    EXPECT_EQ(JobCgroups(dead), 0u);
    // Whatever runs now (a queued job restarted) is cancelled; then every
    // job is final.
    json jobs = CtlJson({"job", "list"});
    for (const json& job : jobs["jobs"]) {
      if (job["state"] == "running") Ctl({"job", "cancel", std::to_string(job["id"].get<int>())});
    }
    std::map<int, json> stored;
    ASSERT_TRUE(WaitFor([&] {
      stored.clear();
      json listed = CtlJson({"job", "list"});
      for (const json& job : listed["jobs"]) stored[job["id"].get<int>()] = job;
      return std::all_of(stored.begin(), stored.end(), [](const auto& entry) {
        std::string state = entry.second["state"];
        return state != "running" && state != "queued";
      });
    }));
    // Each job's audited states against its record.
    std::map<int, std::vector<std::string>> audited;
    std::set<int> submitted;
    for (const json& row : CtlJson({"audit", "list", "--limit", "0"})) {
      std::string subject = row["subject"];
      if (subject.rfind("job ", 0) != 0) continue;
      int id = std::stoi(subject.substr(4));
      EXPECT_TRUE(stored.count(id)) << "audited job " << id << " is not in the store";
      if (row["type"] == "job.submit") submitted.insert(id);
      if (row["type"] == "job.state") audited[id].push_back(row["details"]["state"]);
    }
    int missing = 0;
    for (const auto& [id, job] : stored) {
      std::string state = job["state"];
      SCOPED_TRACE(fmt::format("job {}: {}", id, job.dump()));
      if (state == "succeeded" || state == "failed") {
        EXPECT_TRUE(job.contains("termination"));
        EXPECT_FALSE(job["finished"].is_null());
      }
      if (state == "lost") {
        EXPECT_NE(job["reason"].get<std::string>().find("ralphd stopped"), std::string::npos);
      }
      // Stored first, audited next: the kill may fall between the two, once.
      if (!submitted.count(id)) ++missing;
      if (audited[id].empty() || audited[id].back() != state) ++missing;
    }
    EXPECT_LE(missing, 1) << "more records behind their audit than the one in flight";
    StopDaemon(SIGTERM);
    EXPECT_TRUE(WaitFor([&] { return MountsBelow(state_) == 0; })) << MountsBelow(state_);
  }
}

// The HTTPS API of the real daemon: `ralphctl pair` on the console, the
// client library pairs with that string, runs a job over mTLS and reads its
// output; an unpaired client and, after `ralphctl pairings revoke`, the
// revoked one are refused.
TEST_F(RalphdTest, PairedClientRunsAJobOverHttpsUntilRevoked) {
  StopDaemon(SIGTERM);
  StartDaemon(2, {"--api-listen", "127.0.0.1:0"});
  std::string port_file = state_ + "/api/port";
  ASSERT_TRUE(WaitFor([&] { return !Read(port_file).empty(); })) << port_file;

  ProgramStreams refused = Ctl({"pairings", "revoke", "0123"});
  EXPECT_NE(refused.exit, 0);
  EXPECT_FALSE(refused.err.empty());

  json offer = CtlJson({"pair"});
  std::string pairing = offer.value("pairing", "");
  ASSERT_TRUE(pairing.starts_with("ralphos-pair:v1?addr=127.0.0.1:")) << offer.dump();
  EXPECT_NE(pairing.find(":" + std::to_string(std::stoi(Read(port_file))) + "&"), std::string::npos)
      << pairing << " vs port " << Read(port_file);
  EXPECT_FALSE(offer.value("qr", "").empty());
  ProgramStreams shown = Ctl({"pair"});
  ASSERT_EQ(shown.exit, 0) << shown.err;
  EXPECT_NE(shown.out.find("ralphos-pair:v1?"), std::string::npos) << shown.out;

  // The appliance's boot-time offer: made while no client is paired.
  ProgramStreams unpaired = Ctl({"pair", "--unless-paired"});
  ASSERT_EQ(unpaired.exit, 0) << unpaired.err;
  EXPECT_NE(unpaired.out.find("ralphos-pair:v1?"), std::string::npos) << unpaired.out;

  Result<api::ClientCredentials> credentials = api::PairWithDevice(pairing, "api-test");
  ASSERT_TRUE(credentials) << credentials.error().ToString();
  ProgramStreams paired = Ctl({"pair", "--unless-paired"});
  ASSERT_EQ(paired.exit, 0) << paired.err;
  EXPECT_EQ(paired.out.find("ralphos-pair:"), std::string::npos) << paired.out;
  EXPECT_NE(paired.out.find("1 client(s) paired: no pairing offer made"), std::string::npos)
      << paired.out;
  Result<api::PairingString> parsed = api::PairingString::Parse(pairing);
  ASSERT_TRUE(parsed);

  // A client without a certificate gets nothing but /v1/pair.
  Result<std::unique_ptr<api::ApiConnection>> anonymous =
      api::ApiConnection::Connect({.address = parsed->address, .device_spki = parsed->spki_sha256});
  ASSERT_TRUE(anonymous) << anonymous.error().ToString();
  Result<api::HttpReply> denied = (*anonymous)->Request("GET", "/v1/jobs");
  ASSERT_TRUE(denied) << denied.error().ToString();
  EXPECT_EQ(denied->status, 401) << denied->body;

  auto connect = [&] {
    return api::ApiConnection::Connect({.address = parsed->address,
                                        .device_spki = parsed->spki_sha256,
                                        .credentials = *credentials});
  };
  Result<std::unique_ptr<api::ApiConnection>> connection = connect();
  ASSERT_TRUE(connection) << connection.error().ToString();
  api::ApiConnection& https = **connection;
  auto call = [&](std::string_view method, std::string_view target, std::string_view body = {}) {
    Result<api::HttpReply> reply = https.Request(method, target, body);
    EXPECT_TRUE(reply) << target << ": " << reply.error().ToString();
    if (!reply) return json();
    EXPECT_EQ(reply->status / 100, 2) << method << " " << target << ": " << reply->body;
    return json::parse(reply->body, nullptr, false);
  };

  // The pairing commands are the console's, not a paired client's.
  Result<api::HttpReply> pair_remote = https.Request("POST", "/v1/pairing/offers");
  ASSERT_TRUE(pair_remote);
  EXPECT_EQ(pair_remote->status, 403) << pair_remote->body;

  json job = call("POST", "/v1/jobs",
                  R"({"argv":["sh","-c","echo over-https; exit 3"],"profile":"default"})");
  ASSERT_TRUE(job.contains("id")) << job.dump();
  std::string path = fmt::format("/v1/jobs/{}", job["id"].get<uint64_t>());
  std::string state;
  ASSERT_TRUE(WaitFor([&] {
    state = call("GET", path).value("state", "");
    return state != "created" && state != "queued" && state != "running";
  })) << state;
  json shown_job = call("GET", path);
  EXPECT_EQ(shown_job.value("state", ""), "failed") << shown_job.dump();
  EXPECT_EQ(shown_job.value("exit_code", -1), 3) << shown_job.dump();
  json logs = call("GET", path + "/logs");
  Result<std::string> output = Base64Decode(logs.value("data_base64", ""), "data_base64");
  ASSERT_TRUE(output) << logs.dump();
  EXPECT_EQ(*output, "over-https\n");

  // The client's submit and its refusal are audited; its reads are not:
  // its connection is, once, with the client and where it came from.
  const std::string client = "cert:" + credentials->client_id;
  std::set<std::string> audited;
  for (const json& row : CtlJson({"audit", "list", "--type", "command", "--limit", "0"})) {
    if (row["details"]["caller"] == client) audited.insert(row["subject"].get<std::string>());
  }
  EXPECT_EQ(audited, (std::set<std::string>{"job.submit", "pair"}));
  json sessions = CtlJson({"audit", "list", "--type", "api.session", "--limit", "0"});
  ASSERT_EQ(sessions.size(), 1u) << sessions.dump();
  EXPECT_EQ(sessions[0]["subject"], client);
  EXPECT_EQ(sessions[0]["details"]["peer"], "127.0.0.1");

  // The same job's state changes on the event stream (SSE), from seq 0.
  Result<std::unique_ptr<api::ApiConnection>> stream = connect();
  ASSERT_TRUE(stream) << stream.error().ToString();
  Result<void> opened = (*stream)->OpenEvents(0);
  ASSERT_TRUE(opened) << opened.error().ToString();
  std::string final_state;
  uint64_t last_seq = 0;
  for (int i = 0; i < 10000 && final_state.empty(); ++i) {
    Result<api::StreamEvent> event = (*stream)->NextEvent();
    ASSERT_TRUE(event) << event.error().ToString();
    EXPECT_GT(event->seq, last_seq);
    last_seq = event->seq;
    if (event->type != "job.state") continue;
    json data = json::parse(event->data, nullptr, false);
    if (data.value("job", uint64_t{0}) == job["id"].get<uint64_t>() &&
        data["body"].value("state", "") == "failed") {
      final_state = "failed";
    }
  }
  EXPECT_EQ(final_state, "failed");

  json listed = CtlJson({"pairings", "list"});
  ASSERT_EQ(listed["pairings"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["pairings"][0].value("id", ""), credentials->client_id);
  ProgramStreams revoke = Ctl({"pairings", "revoke", credentials->client_id});
  ASSERT_EQ(revoke.exit, 0) << revoke.err;
  // A revoked client counts as none: the offer is made again.
  ProgramStreams offered_again = Ctl({"pair", "--unless-paired"});
  ASSERT_EQ(offered_again.exit, 0) << offered_again.err;
  EXPECT_NE(offered_again.out.find("ralphos-pair:v1?"), std::string::npos) << offered_again.out;

  // The next request, on this connection or a new one, is refused.
  Result<api::HttpReply> after = https.Request("GET", path);
  ASSERT_TRUE(after) << after.error().ToString();
  EXPECT_EQ(after->status, 403) << after->body;
  EXPECT_NE(after->body.find("revoked"), std::string::npos) << after->body;
  Result<std::unique_ptr<api::ApiConnection>> again = connect();
  ASSERT_TRUE(again) << again.error().ToString();
  Result<api::HttpReply> reply = (*again)->Request("GET", path);
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(reply->status, 403) << reply->body;
}

}  // namespace
}  // namespace ralph::ralphd

namespace ralph::ralphd {
namespace {

// A tty job that answers each line with the line and its window size, says
// its new size on SIGWINCH, and exits 7 on "quit".
constexpr const char* kTtyScript =
    "trap 'echo size:$(stty size)' WINCH; while :; do read l || continue; "
    "echo got:$l $(stty size); [ \"$l\" = quit ] && exit 7; done";

std::string ShellQuote(std::string_view text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// One attachment over the local socket: attach frames, then the output
// collected until what a test waits for shows up.
class Attached {
 public:
  Attached(int fd, uint64_t job) : fd_(fd) {
    reply_ =
        Call(fmt::format(R"({{"verb":"GET","path":"/v1/jobs/{}/terminal","attach":true}})", job));
  }
  ~Attached() {
    if (fd_ >= 0) ::close(fd_);
  }
  const json& reply() const { return reply_; }

  void Send(const json& frame) {
    std::string line = frame.dump() + "\n";
    ASSERT_EQ(::send(fd_, line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
  }
  json Call(const std::string& frame) {
    std::string line = frame + "\n";
    EXPECT_EQ(::send(fd_, line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    return Next();
  }
  void Type(std::string_view text) { Send({{"input_base64", Base64Encode(text)}}); }

  // The next frame that is not output (output is collected); null at EOF.
  json Next() {
    while (true) {
      std::string line;
      char c;
      while (::read(fd_, &c, 1) == 1 && c != '\n') line += c;
      if (line.empty()) return json();
      json frame = json::parse(line, nullptr, false);
      if (frame.is_object() && frame.contains("output")) {
        output_ += Base64Decode(frame["output"].value("data_base64", ""), "data").value_or("");
        continue;
      }
      return frame;
    }
  }
  // Reads output frames until `text` is in the output; false when another
  // frame (kept in last()) or the end came first.
  bool AwaitOutput(std::string_view text) {
    while (output_.find(text) == std::string::npos) {
      last_ = NextAny();
      if (last_.is_null()) return false;
      if (!last_.contains("output")) return false;
      output_ += Base64Decode(last_["output"].value("data_base64", ""), "data").value_or("");
    }
    return true;
  }
  const std::string& output() const { return output_; }
  const json& last() const { return last_; }
  void Close() {
    ::close(fd_);
    fd_ = -1;
  }

 private:
  json NextAny() {
    std::string line;
    char c;
    while (::read(fd_, &c, 1) == 1 && c != '\n') line += c;
    if (line.empty()) return json();
    return json::parse(line, nullptr, false);
  }

  int fd_;
  json reply_;
  std::string output_;
  json last_;
};

TEST_F(RalphdTest, TtyJobTerminalAttachInputResizeDetachReattachOverTheLocalSocket) {
  Line submit(Connect());
  json job = submit.Call(json{
      {"verb", "POST"},
      {"path", "/v1/jobs"},
      {"body", {{"argv", {"sh", "-c", kTtyScript}}, {"tty", true}, {"columns", 100}, {"rows", 30}}}}
                             .dump());
  ASSERT_TRUE(job.value("ok", false)) << job.dump();
  const uint64_t id = job["body"]["id"].get<uint64_t>();

  auto first = std::make_unique<Attached>(Connect(), id);
  ASSERT_TRUE(first->reply().value("ok", false)) << first->reply().dump();
  EXPECT_EQ(first->reply()["body"]["job"], id);
  first->Type("hello\n");
  ASSERT_TRUE(first->AwaitOutput("got:hello 30 100")) << first->output() << first->last().dump();

  // A second attachment watches; either may type; a resize reaches the job.
  Attached second(Connect(), id);
  ASSERT_TRUE(second.reply().value("ok", false)) << second.reply().dump();
  first->Send({{"resize", {{"columns", 120}, {"rows", 40}}}});
  ASSERT_TRUE(first->AwaitOutput("size:40 120")) << first->output();
  ASSERT_TRUE(second.AwaitOutput("size:40 120")) << second.output();
  // What the terminal printed before it attached, replayed first.
  EXPECT_GT(second.reply()["body"]["replayed"].get<uint64_t>(), 0u) << second.reply().dump();
  EXPECT_LT(second.output().find("got:hello 30 100"), second.output().find("size:40 120"))
      << second.output();
  second.Type("from-second\n");
  ASSERT_TRUE(first->AwaitOutput("got:from-second 40 120")) << first->output();
  ASSERT_TRUE(second.AwaitOutput("got:from-second 40 120")) << second.output();

  // Bad frames on an attached terminal: named, and the attachment stays.
  json bad = second.Call(R"({"resize":{"columns":0,"rows":5}})");
  EXPECT_EQ(bad["error"]["message"], "frame.resize.columns: expected an integer in 1..10000, got 0")
      << bad.dump();
  bad = second.Call(R"({"bogus":1})");
  EXPECT_EQ(bad["error"]["message"], "frame.bogus: unknown member on an attached terminal")
      << bad.dump();
  bad = second.Call(R"({"input_base64":"%%"})");
  EXPECT_EQ(bad["error"]["code"], "invalid-argument") << bad.dump();
  EXPECT_NE(bad["error"]["message"].get<std::string>().find("frame.input_base64"),
            std::string::npos)
      << bad.dump();

  // Detach: the first goes, the job runs on; the second disconnects.
  json detached = first->Call(R"({"detach":true})");
  EXPECT_EQ(detached["detached"]["job"], id) << detached.dump();
  EXPECT_TRUE(first->Next().is_null());  // then the daemon closes
  first.reset();
  second.Close();
  EXPECT_EQ(JobState(static_cast<int>(id)), "running");

  // Reattach; the job ends: `closed` with its exit status.
  Attached again(Connect(), id);
  ASSERT_TRUE(again.reply().value("ok", false)) << again.reply().dump();
  again.Type("quit\n");
  ASSERT_TRUE(again.AwaitOutput("got:quit 40 120")) << again.output();
  json closed = again.Next();
  EXPECT_EQ(closed["closed"]["exit_status"], 7) << closed.dump();
  EXPECT_TRUE(again.Next().is_null());
  ASSERT_TRUE(WaitFor([&] { return JobState(static_cast<int>(id)) == "failed"; }));
  json shown = CtlJson({"job", "show", std::to_string(id)});
  EXPECT_EQ(shown["exit_code"], 7);
  // Its output is in its logs as well, all of it.
  ProgramStreams logs = Ctl({"job", "logs", std::to_string(id)});
  EXPECT_NE(logs.out.find("got:hello 30 100"), std::string::npos) << logs.out;

  // Refusals: a finished tty job, a job without a pty, an unknown job, and
  // attach on another route.
  Attached over(Connect(), id);
  EXPECT_EQ(over.reply()["error"]["code"], "invalid-state") << over.reply().dump();
  EXPECT_NE(over.reply()["error"]["message"].get<std::string>().find("is failed"),
            std::string::npos);
  ProgramStreams plain = Ctl({"job", "run", "--detach", "--", "sleep", "30"});
  ASSERT_EQ(plain.exit, 0) << plain.err;
  Attached no_pty(Connect(), id + 1);
  EXPECT_EQ(no_pty.reply()["error"]["code"], "invalid-state") << no_pty.reply().dump();
  EXPECT_NE(no_pty.reply()["error"]["message"].get<std::string>().find("has no terminal"),
            std::string::npos)
      << no_pty.reply().dump();
  Attached unknown(Connect(), 999);
  EXPECT_EQ(unknown.reply()["error"]["code"], "not-found") << unknown.reply().dump();
  Line other(Connect());
  json wrong = other.Call(R"({"verb":"GET","path":"/v1/jobs/1/logs","attach":true})");
  EXPECT_EQ(wrong["error"]["message"], "frame.attach: only GET /v1/jobs/{id}/terminal attaches");
  ASSERT_EQ(Ctl({"job", "cancel", std::to_string(id + 1)}).exit, 0);

  // Every attach and detach is audited with who and why; the input is not.
  json attaches =
      CtlJson({"audit", "list", "--job", std::to_string(id), "--type", "terminal.attach"});
  ASSERT_TRUE(attaches.is_array()) << attaches.dump();
  EXPECT_EQ(attaches.size(), 3u) << attaches.dump();
  json detaches =
      CtlJson({"audit", "list", "--job", std::to_string(id), "--type", "terminal.detach"});
  ASSERT_TRUE(detaches.is_array()) << detaches.dump();
  std::multiset<std::string> reasons;
  for (const json& record : detaches) {
    ASSERT_TRUE(record.contains("details") && record["details"].is_object()) << record.dump();
    EXPECT_EQ(record["details"].value("caller", ""), "uid:0") << record.dump();
    reasons.insert(record["details"].value("reason", ""));
  }
  EXPECT_EQ(reasons, (std::multiset<std::string>{"detached", "disconnected", "job ended"}));
  ProgramStreams exported = Ctl({"audit", "export"});
  EXPECT_EQ(exported.out.find("from-second"), std::string::npos);
  EXPECT_EQ(exported.out.find(Base64Encode("hello\n")), std::string::npos);
}

// ralphctl with stdin a pipe: `job run --tty` types it and ends with the
// job; `job attach` sends its input and detaches at its end.
TEST_P(RalphctlTest, RalphctlAttachesInPipeMode) {
  // How this case's ralphctl reaches ralphd: its socket, or the API's
  // terminal WebSocket with the paired identity.
  const std::string transport = remote_.empty()
                                    ? "--socket " + socket_
                                    : fmt::format("--remote {} --identity {}", remote_, identity_);
  std::string script = work_ + "/run.sh";
  Write(script, fmt::format("printf 'hello\\nquit\\n' | {} job run {} --tty -- sh -c {}\n",
                            ralphctl_, transport, ShellQuote(kTtyScript)));
  ProgramStreams run = RunProgramStreams({"sh", script});
  EXPECT_EQ(run.exit, 7) << run.out << run.err;
  EXPECT_NE(run.out.find("got:hello 24 80"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("got:quit"), std::string::npos) << run.out;

  json job = CtlJson({"job", "run", "--tty", "--detach", "--", "sh", "-c", kTtyScript});
  std::string id = std::to_string(job["id"].get<uint64_t>());
  // Input then the end of it: detached, the job runs on.
  Write(script, fmt::format("printf 'one\\n' | {} job attach {} {}\n", ralphctl_, transport, id));
  ProgramStreams attach = RunProgramStreams({"sh", script});
  EXPECT_EQ(attach.exit, 0) << attach.err;
  ASSERT_TRUE(WaitFor([&] {
    return Ctl({"job", "logs", id}).out.find("got:one") != std::string::npos;
  }));
  EXPECT_EQ(JobState(std::stoi(id)), "running");
  // Reattached with stdin held open (a fifo) until the job ends: the output
  // and the job's exit status.
  std::string out = work_ + "/attach.out";
  Write(script, fmt::format("mkfifo {0}/in; {1} job attach {2} {3} < {0}/in > {4} & "
                            "exec 3> {0}/in; printf 'two\\n' >&3; "
                            "until grep -q got:two {4}; do sleep 0.02; done; "
                            "printf 'quit\\n' >&3; wait $!\n",
                            work_, ralphctl_, transport, id, out));
  ProgramStreams reattach = RunProgramStreams({"sh", script});
  EXPECT_EQ(reattach.exit, 7) << reattach.err;
  std::string seen = Read(out);
  EXPECT_NE(seen.find("got:two"), std::string::npos) << seen;
  EXPECT_NE(seen.find("got:quit"), std::string::npos) << seen;
  // What the job printed before the reattach is replayed first.
  EXPECT_LT(seen.find("got:one"), seen.find("got:two")) << seen;

  ProgramStreams unknown = Ctl({"job", "attach", "999"});
  EXPECT_EQ(unknown.exit, 1);
  EXPECT_NE(unknown.err.find("999"), std::string::npos) << unknown.err;
}

// The same terminal over HTTPS: a paired client's WebSocket, through the
// real API client.
TEST_F(RalphdTest, TtyJobTerminalOverTheHttpsWebSocket) {
  StopDaemon(SIGTERM);
  StartDaemon(2, {"--api-listen", "127.0.0.1:0"});
  ASSERT_TRUE(WaitFor([&] { return !Read(state_ + "/api/port").empty(); }));
  json offer = CtlJson({"pair"});
  std::string pairing = offer.value("pairing", "");
  Result<api::ClientCredentials> credentials = api::PairWithDevice(pairing, "terminal-test");
  ASSERT_TRUE(credentials) << credentials.error().ToString();
  Result<api::PairingString> parsed = api::PairingString::Parse(pairing);
  ASSERT_TRUE(parsed);
  auto connect = [&] {
    auto connection = api::ApiConnection::Connect({.address = parsed->address,
                                                   .device_spki = parsed->spki_sha256,
                                                   .credentials = *credentials});
    EXPECT_TRUE(connection) << connection.error().ToString();
    return connection ? std::move(*connection) : nullptr;
  };
  std::unique_ptr<api::ApiConnection> https = connect();
  ASSERT_TRUE(https);
  auto call = [&](std::string_view method, std::string_view target, std::string_view body = {}) {
    Result<api::HttpReply> reply = https->Request(method, target, body);
    EXPECT_TRUE(reply) << target << ": " << reply.error().ToString();
    if (!reply) return json();
    EXPECT_EQ(reply->status / 100, 2) << method << " " << target << ": " << reply->body;
    return json::parse(reply->body, nullptr, false);
  };
  json job =
      call("POST", "/v1/jobs", json{{"argv", {"sh", "-c", kTtyScript}}, {"tty", true}}.dump());
  ASSERT_TRUE(job.contains("id")) << job.dump();
  const std::string id = std::to_string(job["id"].get<uint64_t>());

  // Output until `text` shows up; false when the server closed first. The
  // last control message is kept.
  struct Terminal {
    std::unique_ptr<api::ApiConnection> connection;
    std::string output;
    json control;
    bool Await(std::string_view text) {
      while (output.find(text) == std::string::npos) {
        Result<api::ApiConnection::TerminalMessage> message = connection->ReceiveTerminal();
        if (!message || message->closed) return false;
        if (message->binary) {
          output += message->data;
        } else {
          control = json::parse(message->data, nullptr, false);
        }
      }
      return true;
    }
    // The next control message (output on the way is collected).
    json Control() {
      while (true) {
        Result<api::ApiConnection::TerminalMessage> message = connection->ReceiveTerminal();
        if (!message || message->closed) return json();
        if (!message->binary) return json::parse(message->data, nullptr, false);
        output += message->data;
      }
    }
  };
  Terminal first{.connection = connect()};
  ASSERT_TRUE(first.connection);
  Result<void> opened = first.connection->OpenTerminal(id);
  ASSERT_TRUE(opened) << opened.error().ToString();
  ASSERT_TRUE(first.connection->SendTerminalInput("hello\n"));
  ASSERT_TRUE(first.Await("got:hello 24 80")) << first.output;
  ASSERT_TRUE(
      first.connection->SendTerminalControl(R"({"type":"resize","columns":120,"rows":40})"));
  ASSERT_TRUE(first.Await("size:40 120")) << first.output;
  ASSERT_TRUE(first.connection->SendTerminalControl(R"({"type":"detach"})"));
  EXPECT_TRUE(first.Control().is_null());  // the server closes; the job runs on
  EXPECT_EQ(call("GET", "/v1/jobs/" + id).value("state", ""), "running");

  Terminal again{.connection = connect()};
  ASSERT_TRUE(again.connection);
  opened = again.connection->OpenTerminal(id);
  ASSERT_TRUE(opened) << opened.error().ToString();
  ASSERT_TRUE(again.connection->SendTerminalInput("quit\n"));
  ASSERT_TRUE(again.Await("got:quit 40 120")) << again.output;
  json exit = again.Control();
  EXPECT_EQ(exit.value("type", ""), "exit") << exit.dump();
  EXPECT_EQ(exit.value("status", -1), 7) << exit.dump();

  // Refusals with the core's codes: over, no pty, unknown, not an id.
  auto refused = [&](std::string_view job_id) {
    std::unique_ptr<api::ApiConnection> connection = connect();
    if (!connection) return Error::Make(ErrorCode::kInternal, "no connection");
    Result<void> attached = connection->OpenTerminal(job_id);
    return attached ? Error::Make(ErrorCode::kInternal, "attached") : attached.error();
  };
  ASSERT_TRUE(
      WaitFor([&] { return call("GET", "/v1/jobs/" + id).value("state", "") == "failed"; }));
  EXPECT_EQ(refused(id).code(), ErrorCode::kInvalidState);
  json plain = call("POST", "/v1/jobs", R"({"argv":["true"]})");
  Error no_pty = refused(std::to_string(plain.value("id", 0)));
  EXPECT_EQ(no_pty.code(), ErrorCode::kInvalidState) << no_pty.ToString();
  EXPECT_NE(no_pty.message().find("has no terminal"), std::string::npos) << no_pty.ToString();
  EXPECT_EQ(refused("999").code(), ErrorCode::kNotFound);
  EXPECT_EQ(refused("x7").code(), ErrorCode::kNotFound);

  json attaches = CtlJson({"audit", "list", "--job", id, "--type", "terminal.attach"});
  ASSERT_TRUE(attaches.is_array() && attaches.size() == 2u) << attaches.dump();
  for (const json& record : attaches) {
    EXPECT_EQ(record["details"].value("caller", ""), "cert:" + credentials->client_id);
  }
}

// `ralphctl job attach` on a terminal of its own (a pty the test holds):
// raw mode (a typed CR reaches the job), its window size sent at attach and
// on SIGWINCH, Ctrl-] detaches with the job running on, and the terminal's
// modes are restored when it exits.
TEST_F(RalphdTest, RalphctlAttachesInteractively) {
  json job = CtlJson({"job", "run", "--tty", "--detach", "--", "sh", "-c", kTtyScript});
  const std::string id = std::to_string(job["id"].get<uint64_t>());
  int master = -1, slave = -1;
  winsize size{.ws_row = 30, .ws_col = 100, .ws_xpixel = 0, .ws_ypixel = 0};
  ASSERT_EQ(::openpty(&master, &slave, nullptr, nullptr, &size), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setsid();
    ::ioctl(slave, TIOCSCTTY, 0);
    for (int fd : {0, 1, 2}) ::dup2(slave, fd);
    ::close(master);
    ::execl(ralphctl_.c_str(), ralphctl_.c_str(), "job", "attach", "--socket", socket_.c_str(),
            id.c_str(), nullptr);
    ::_exit(127);
  }
  std::string seen;
  auto await = [&](std::string_view text) {
    return WaitFor([&] {
      pollfd fd{master, POLLIN, 0};
      while (::poll(&fd, 1, 0) > 0) {
        char buffer[4096];
        ssize_t n = ::read(master, buffer, sizeof buffer);
        if (n <= 0) break;
        seen.append(buffer, static_cast<size_t>(n));
      }
      return seen.find(text) != std::string::npos;
    });
  };
  ASSERT_TRUE(await("Ctrl-] detaches")) << seen;
  ASSERT_EQ(::write(master, "hello\r", 6), 6);
  ASSERT_TRUE(await("got:hello 30 100")) << seen;
  size = {.ws_row = 40, .ws_col = 120, .ws_xpixel = 0, .ws_ypixel = 0};
  ASSERT_EQ(::ioctl(master, TIOCSWINSZ, &size), 0);
  ASSERT_TRUE(await("size:40 120")) << seen;
  ASSERT_EQ(::write(master, "\x1d", 1), 1);
  ASSERT_TRUE(await("it keeps running")) << seen;
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  termios modes{};
  ASSERT_EQ(::tcgetattr(slave, &modes), 0);
  EXPECT_TRUE(modes.c_lflag & ICANON);
  EXPECT_TRUE(modes.c_lflag & ECHO);
  ::close(master);
  ::close(slave);
  EXPECT_EQ(JobState(std::stoi(id)), "running");
  ASSERT_EQ(Ctl({"job", "cancel", id}).exit, 0);
}

// Agent jobs with the stand-in agent (tests/agents/standin) as the claude
// profile's tool: ralphd is started with --agent-program claude=<it>,
// mounted read-only into the jobs of policy profile "agent".
class AgentJobTest : public RalphdTest {
 protected:
  void SetUp() override {
    RalphdTest::SetUp();
    if (HasFatalFailure()) return;
    StopDaemon(SIGTERM);
    StartDaemon(2, {"--agent-program", "claude=/opt/ralph-tests/ralph-agent-standin"});
    const char* build = std::getenv("RALPH_BINARY_DIR");
    Write(work_ + "/agent-policy.xml", fmt::format(R"(<policy format="1">
  <profile name="default">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
  <profile name="agent">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
    <mount source="{}/tests" destination="/opt/ralph-tests"/>
  </profile>
</policy>
)",
                                                   build));
    ProgramStreams set = Ctl({"policy", "set", work_ + "/agent-policy.xml"});
    ASSERT_EQ(set.exit, 0) << set.err;
  }

  // A request on a fresh connection; the reply frame.
  json Call(const json& frame) {
    int fd = Connect();
    EXPECT_GE(fd, 0);
    Line line(fd);
    return line.Call(frame.dump());
  }

  json Submit(const json& body) {
    return Call({{"verb", "POST"}, {"path", "/v1/jobs"}, {"body", body}});
  }

  std::vector<json> Events(uint64_t job) {
    json reply = Call({{"verb", "GET"},
                       {"path", "/v1/events"},
                       {"query", {{"job", std::to_string(job)}, {"limit", "10000"}}}});
    std::vector<json> out;
    for (const json& event : reply["body"]["events"]) out.push_back(event);
    return out;
  }

  static size_t CountKind(const std::vector<json>& events, const std::string& kind) {
    return static_cast<size_t>(std::count_if(events.begin(), events.end(),
                                             [&](const json& e) { return e["kind"] == kind; }));
  }

  // A loop job of the stand-in (configured by `env`); its id.
  uint64_t SubmitLoop(const json& loop, const json& env) {
    json reply = Submit({{"profile", "agent"},
                         {"agent", {{"profile", "claude"}, {"prompt", "Fix the parser"}}},
                         {"loop", loop},
                         {"env", env}});
    EXPECT_EQ(reply["ok"], true) << reply.dump();
    return reply["body"].value("id", uint64_t{0});
  }

  json Show(uint64_t id) {
    return Call({{"verb", "GET"}, {"path", fmt::format("/v1/jobs/{}", id)}})["body"];
  }

  // Waits for the job to be over (its state, polled); its record.
  json WaitOver(uint64_t id) {
    json job;
    EXPECT_TRUE(WaitFor([&] {
      job = Show(id);
      std::optional<ralphd::JobState> state = ParseJobState(job.value("state", ""));
      return state && IsFinal(*state);
    })) << job.dump();
    return job;
  }

  json Iterations(uint64_t id) {
    return Call({{"verb", "GET"},
                 {"path", fmt::format("/v1/jobs/{}/iterations", id)}})["body"]["iterations"];
  }

  std::string Git(uint64_t id, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"git", "--git-dir",
                                     fmt::format("{}/jobs/{}/loop.git", state_, id)};
    argv.insert(argv.end(), args.begin(), args.end());
    ProgramStreams run = RunProgramStreams(argv);
    EXPECT_EQ(run.exit, 0) << run.err;
    return run.out;
  }

  static std::vector<std::string> Stops(const json& iterations) {
    std::vector<std::string> out;
    for (const json& it : iterations) out.push_back(it.value("stop", ""));
    return out;
  }

  static std::string Sha256Hex(const std::string& text) {
    return DigestToHex(*Sha256::Of(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size())));
  }
};

TEST_F(AgentJobTest, AnAgentJobRunsTheProfileAndPublishesItsEventsUsageAndToolCalls) {
  // No --profile: an agent job runs under the policy's "agent" profile.
  ProgramStreams run =
      Ctl({"job", "run", "--agent", "claude", "--prompt", "Fix the parser\nin detail"});
  ASSERT_EQ(run.exit, 0) << run.err;
  // The raw stream is the job's output.
  EXPECT_NE(run.out.find(R"("type":"system")"), std::string::npos) << run.out;

  json job = CtlJson({"job", "show", "1"});
  EXPECT_EQ(job["state"], "succeeded") << job.dump();
  EXPECT_EQ(job["profile"], "agent");
  const json& usage = job["usage"]["agent"];
  EXPECT_EQ(usage["profile"], "claude");
  EXPECT_EQ(usage["input_tokens"], 1000);
  EXPECT_EQ(usage["output_tokens"], 200);
  EXPECT_EQ(usage["cache_read_tokens"], 3000);
  EXPECT_EQ(usage["cache_write_tokens"], 500);
  EXPECT_DOUBLE_EQ(usage["cost_usd"].get<double>(), 0.01);
  EXPECT_EQ(usage["tool_calls"], 1);

  std::vector<json> events = Events(1);
  EXPECT_EQ(CountKind(events, "agent.session"), 1u);
  EXPECT_EQ(CountKind(events, "agent.tool_call"), 1u);
  EXPECT_EQ(CountKind(events, "agent.tool_result"), 1u);
  EXPECT_EQ(CountKind(events, "agent.result"), 1u);
  EXPECT_GE(CountKind(events, "agent.message"), 2u);
  EXPECT_GE(CountKind(events, "agent.usage"), 1u);
  for (const json& event : events) {
    if (event["kind"] == "agent.session") {
      EXPECT_EQ(event["body"]["cwd"], "/work");
    }
    if (event["kind"] == "agent.tool_call") {
      EXPECT_EQ(event["body"]["name"], "Write");
      EXPECT_EQ(event["body"]["input"]["file_path"], "notes/step-1.txt");
    }
  }

  json calls = CtlJson({"audit", "list", "--job", "1", "--type", "agent.tool_call"});
  ASSERT_EQ(calls.size(), 1u) << calls.dump();
  EXPECT_EQ(calls[0]["details"]["name"], "Write");
  EXPECT_EQ(calls[0]["details"]["input"]["content"], "iteration 1\nprompt: Fix the parser\n");

  // The tool wrote into the workspace, not into its home.
  json files = CtlJson({"job", "files", "1"});
  bool step = false;
  for (const json& file : files["files"]) {
    if (file["path"] == "/work/notes/step-1.txt") step = true;
  }
  EXPECT_TRUE(step) << files.dump();
  // The home (settings files) lived as long as the job.
  EXPECT_FALSE(std::filesystem::exists(state_ + "/agents/1"));
}

TEST_F(AgentJobTest, JobsThatNameNoProfileRunUnderAgentOrDefault) {
  // A plain job and a command-profile job: "default"; a named one: itself.
  ASSERT_EQ(Ctl({"job", "run", "--", "true"}).exit, 0);
  ASSERT_EQ(Ctl({"job", "run", "--agent", "command", "--", "true"}).exit, 0);
  ASSERT_EQ(Ctl({"job", "run", "--profile", "agent", "--", "true"}).exit, 0);
  EXPECT_EQ(CtlJson({"job", "show", "1"})["profile"], "default");
  EXPECT_EQ(CtlJson({"job", "show", "2"})["profile"], "default");
  EXPECT_EQ(CtlJson({"job", "show", "3"})["profile"], "agent");
}

TEST_F(AgentJobTest, APromptFileComesFromTheUploadedWorkspace) {
  std::string in = work_ + "/in";
  ASSERT_EQ(::mkdir(in.c_str(), 0755), 0);
  Write(in + "/PROMPT.md", "Write the release notes\nwith care\n");
  ASSERT_EQ(RunProgramStreams({"tar", "-cf", work_ + "/in.tar", "-C", in, "."}).exit, 0);
  ProgramStreams run = Ctl({"job", "run", "--profile", "agent", "--agent", "claude",
                            "--prompt-file", "PROMPT.md", "--workspace", work_ + "/in.tar"});
  ASSERT_EQ(run.exit, 0) << run.err;
  json files = CtlJson({"job", "files", "1"});
  std::string sha;
  for (const json& file : files["files"]) {
    if (file["path"] == "/work/notes/step-1.txt") sha = file["sha256"];
  }
  EXPECT_EQ(sha, Sha256Hex("iteration 1\nprompt: Write the release notes\n")) << files.dump();
}

TEST_F(AgentJobTest, BadAgentRequestsAreRefusedNamingTheFieldAndTheDaemonServesOn) {
  json reply = Submit({{"profile", "agent"}, {"agent", {{"profile", "gpt"}, {"prompt", "x"}}}});
  EXPECT_EQ(reply["error"]["message"],
            "body.agent.profile: 'gpt' is not one of claude, codex, opencode, command")
      << reply.dump();
  reply = Submit({{"profile", "agent"}, {"agent", {{"profile", "claude"}}}});
  EXPECT_EQ(reply["error"]["code"], "invalid-argument");
  EXPECT_EQ(reply["error"]["message"].get<std::string>().rfind("body.agent.prompt: required", 0),
            0u)
      << reply.dump();
  reply = Submit({{"profile", "agent"},
                  {"agent", {{"profile", "claude"}, {"prompt", "x"}}},
                  {"env", {{"ANTHROPIC_API_KEY", "sk-ant-secret"}}}});
  EXPECT_EQ(reply["error"]["code"], "refused") << reply.dump();
  std::string message = reply["error"]["message"];
  EXPECT_EQ(message.rfind("body.env.ANTHROPIC_API_KEY: ", 0), 0u) << message;
  EXPECT_NE(message.find("ralphctl creds login claude"), std::string::npos) << message;
  EXPECT_EQ(message.find("sk-ant-secret"), std::string::npos) << message;
  reply = Submit({{"profile", "agent"},
                  {"argv", {"claude"}},
                  {"agent", {{"profile", "claude"}, {"prompt", "x"}}}});
  EXPECT_EQ(reply["error"]["message"].get<std::string>().rfind("body.argv: ", 0), 0u)
      << reply.dump();
  // A prompt file is read from the workspace: not there, the start is refused.
  reply = Submit(
      {{"profile", "agent"}, {"agent", {{"profile", "claude"}, {"prompt_file", "PROMPT.md"}}}});
  EXPECT_EQ(reply["error"]["message"].get<std::string>().rfind("body.agent.prompt_file: ", 0), 0u)
      << reply.dump();
  reply = Submit({{"profile", "agent"},
                  {"start", false},
                  {"agent", {{"profile", "claude"}, {"prompt_file", "../PROMPT.md"}}}});
  EXPECT_EQ(reply["error"]["message"], "body.agent.prompt_file: '../PROMPT.md' contains '..'");
  reply = Submit({{"profile", "agent"},
                  {"start", false},
                  {"agent", {{"profile", "claude"}, {"prompt_file", "PROMPT.md"}}}});
  ASSERT_EQ(reply["ok"], true) << reply.dump();
  uint64_t id = reply["body"]["id"];
  std::string in = work_ + "/in";
  ASSERT_EQ(::mkdir(in.c_str(), 0755), 0);
  Write(in + "/README.md", "no prompt here\n");
  ASSERT_EQ(RunProgramStreams({"tar", "-cf", work_ + "/in.tar", "-C", in, "."}).exit, 0);
  json uploaded = Call({{"verb", "PUT"},
                        {"path", fmt::format("/v1/jobs/{}/workspace", id)},
                        {"body_base64", Base64Encode(Read(work_ + "/in.tar"))}});
  ASSERT_EQ(uploaded["ok"], true) << uploaded.dump();
  reply = Call({{"verb", "POST"}, {"path", fmt::format("/v1/jobs/{}/start", id)}});
  EXPECT_EQ(reply["error"]["message"],
            "agent.prompt_file: 'PROMPT.md' is not a file in the uploaded workspace")
      << reply.dump();
  EXPECT_EQ(JobState(static_cast<int>(id)), "created");
  // Served on.
  EXPECT_EQ(Call({{"verb", "GET"}, {"path", "/v1/status"}})["ok"], true);
}

// Loop mode: the stand-in prints the promise at its third run; exactly three
// iterations, each with its own commit of the workspace and its transcript.
TEST_F(AgentJobTest, ALoopStopsAtThePromiseWithOneCommitAndTranscriptPerIteration) {
  ProgramStreams run =
      Ctl({"job", "run", "--profile", "agent", "--agent", "claude", "--prompt", "Fix the parser",
           "--loop", "--max-iterations", "10", "--promise", "<promise>DONE</promise>"});
  ASSERT_EQ(run.exit, 0) << run.err;
  json job = CtlJson({"job", "show", "1"});
  EXPECT_EQ(job["state"], "succeeded") << job.dump();
  const json& usage = job["usage"]["agent"];
  EXPECT_EQ(usage["iterations"], 3);
  EXPECT_EQ(usage["stop"], "promise");
  EXPECT_EQ(usage["input_tokens"], 3000);
  EXPECT_EQ(usage["output_tokens"], 600);
  EXPECT_NEAR(usage["cost_usd"].get<double>(), 0.03, 1e-9);
  EXPECT_EQ(usage["tool_calls"], 3);

  json iterations = CtlJson({"job", "iterations", "1"})["iterations"];
  ASSERT_EQ(iterations.size(), 3u) << iterations.dump();
  EXPECT_EQ(Stops(iterations), (std::vector<std::string>{"", "", "promise"}));
  json logs = Call(
      {{"verb", "GET"}, {"path", "/v1/jobs/1/logs"}, {"query", {{"limit", "1048576"}}}})["body"];
  std::string out = *Base64Decode(logs["data_base64"].get<std::string>(), "logs");
  uint64_t offset = 0;
  std::vector<std::string> commits;
  for (size_t i = 0; i < iterations.size(); ++i) {
    const json& it = iterations[i];
    SCOPED_TRACE(it.dump());
    EXPECT_EQ(it["iteration"], i + 1);
    EXPECT_EQ(it["exit_code"], 0);
    EXPECT_EQ(it["changed"], true);
    EXPECT_EQ(it["usage"]["input_tokens"], 1000);
    // Its transcript: its own run's stream, right after the previous one.
    EXPECT_EQ(it["transcript"]["offset"], offset);
    uint64_t end = it["transcript"]["end"];
    ASSERT_GT(end, offset);
    ASSERT_LE(end, out.size());
    std::string transcript = out.substr(offset, end - offset);
    EXPECT_NE(transcript.find(fmt::format("standin-session-{}", i + 1)), std::string::npos);
    EXPECT_EQ(transcript.find(fmt::format("standin-session-{}", i + 2)), std::string::npos);
    offset = end;
    std::string commit = it["commit"];
    EXPECT_EQ(commit.size(), 40u);
    commits.push_back(commit);
  }
  EXPECT_EQ(offset, out.size());

  // The commits: one per iteration, in order, a fixed author at a fixed
  // date; each diff is that iteration's step.
  std::string history = Git(1, {"log", "--format=%H %an <%ae> %at", "main"});
  EXPECT_EQ(history, fmt::format("{} ralphd <ralphd@ralphos.invalid> 3\n"
                                 "{} ralphd <ralphd@ralphos.invalid> 2\n"
                                 "{} ralphd <ralphd@ralphos.invalid> 1\n",
                                 commits[2], commits[1], commits[0]));
  std::string diff = Git(1, {"diff", "--name-only", commits[0], commits[1]});
  EXPECT_EQ(diff, ".standin/state.json\nPROGRESS.md\nnotes/step-2.txt\n");
  EXPECT_EQ(Git(1, {"show", commits[0] + ":notes/step-1.txt"}),
            "iteration 1\nprompt: Fix the parser\n");

  std::vector<json> events = Events(1);
  EXPECT_EQ(CountKind(events, "loop.iteration"), 3u);
  EXPECT_EQ(CountKind(events, "agent.tool_call"), 3u);
  json stopped = CtlJson({"audit", "list", "--job", "1", "--type", "loop.stopped"});
  ASSERT_EQ(stopped.size(), 1u);
  EXPECT_EQ(stopped[0]["details"]["reason"], "promise");
  EXPECT_EQ(stopped[0]["details"]["iterations"], 3);
  EXPECT_EQ(CtlJson({"audit", "list", "--job", "1", "--type", "loop.iteration"}).size(), 3u);
  // The workspace at the end is the last iteration's.
  json listed = CtlJson({"job", "download", "1", "--list"});
  bool third = false;
  for (const json& file : listed["files"])
    third = third || file["path"] == "/work/notes/step-3.txt";
  EXPECT_TRUE(third) << listed.dump();
}

TEST_F(AgentJobTest, ALoopStopsAtMaxIterationsStallStopFileAndBudgets) {
  struct Case {
    json loop;
    json env;
    size_t iterations;
    std::string stop;
    std::string state;
  };
  const Case cases[] = {
      {{{"max_iterations", 2}, {"promise", "<promise>DONE</promise>"}},
       {{"RALPH_STANDIN_ITERATIONS", "10"}},
       2,
       "max_iterations",
       "failed"},
      // Changes at the first run only: two unchanged iterations stop it.
      {{{"max_iterations", 10}, {"stall_iterations", 2}},
       {{"RALPH_STANDIN_ITERATIONS", "10"}, {"RALPH_STANDIN_STALL_AFTER", "1"}},
       3,
       "stall_iterations",
       "failed"},
      {{{"max_iterations", 10}, {"stop_file", "state/STOP"}},
       {{"RALPH_STANDIN_ITERATIONS", "2"}, {"RALPH_STANDIN_STOP_FILE", "state/STOP"}},
       2,
       "stop_file",
       "succeeded"},
      // $0.01 a run: the budget of $0.02 is used up by the second.
      {{{"max_iterations", 10}, {"max_cost_microusd", 20000}},
       {{"RALPH_STANDIN_ITERATIONS", "10"}},
       2,
       "max_cost_microusd",
       "failed"},
      // 1200 tokens a run: 2500 are used up by the third.
      {{{"max_iterations", 10}, {"max_tokens", 2500}},
       {{"RALPH_STANDIN_ITERATIONS", "10"}},
       3,
       "max_tokens",
       "failed"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.stop);
    uint64_t id = SubmitLoop(c.loop, c.env);
    ASSERT_NE(id, 0u);
    json job = WaitOver(id);
    EXPECT_EQ(job["state"], c.state) << job.dump();
    json iterations = Iterations(id);
    ASSERT_EQ(iterations.size(), c.iterations) << iterations.dump();
    std::vector<std::string> stops(c.iterations, "");
    stops.back() = c.stop;
    EXPECT_EQ(Stops(iterations), stops);
    EXPECT_EQ(job["usage"]["agent"]["stop"], c.stop);
    if (c.stop == "stall_iterations") {
      EXPECT_EQ(iterations[0]["changed"], true);
      EXPECT_EQ(iterations[1]["changed"], false);
      EXPECT_EQ(iterations[2]["changed"], false);
    }
    if (c.state == "failed") {
      EXPECT_EQ(job["reason"],
                fmt::format("loop stopped by {} after {} iterations", c.stop, c.iterations));
    }
  }
}

// The wall-clock budget (1 ms: no iteration is quicker), three failed runs
// in a row, and the command profile's promise in its raw output.
TEST_F(AgentJobTest, ALoopStopsAtItsWallClockBudgetRepeatedFailuresAndARawPromise) {
  uint64_t id = SubmitLoop({{"max_iterations", 10}, {"max_wall_ms", 1}},
                           {{"RALPH_STANDIN_ITERATIONS", "10"}});
  json job = WaitOver(id);
  EXPECT_EQ(job["usage"]["agent"]["stop"], "max_wall_ms") << job.dump();
  EXPECT_EQ(Iterations(id).size(), 1u);

  json reply = Submit({{"profile", "agent"},
                       {"argv", {"sh", "-c", "echo trying; exit 3"}},
                       {"agent", {{"profile", "command"}}},
                       {"loop", {{"max_iterations", 10}}}});
  ASSERT_EQ(reply["ok"], true) << reply.dump();
  id = reply["body"]["id"];
  job = WaitOver(id);
  EXPECT_EQ(job["state"], "failed");
  EXPECT_EQ(job["reason"], "loop stopped by failures after 3 iterations");
  json iterations = Iterations(id);
  ASSERT_EQ(iterations.size(), 3u);
  EXPECT_EQ(iterations[2]["exit_code"], 3);

  reply = Submit({{"profile", "agent"},
                  {"argv", {"sh", "-c", "echo working; echo '<promise>OK</promise>'"}},
                  {"agent", {{"profile", "command"}}},
                  {"loop", {{"max_iterations", 10}, {"promise", "<promise>OK</promise>"}}}});
  ASSERT_EQ(reply["ok"], true) << reply.dump();
  id = reply["body"]["id"];
  job = WaitOver(id);
  EXPECT_EQ(job["state"], "succeeded") << job.dump();
  EXPECT_EQ(Stops(Iterations(id)), std::vector<std::string>{"promise"});
}

TEST_F(AgentJobTest, CancelStopsALoopBetweenIterations) {
  uint64_t id = SubmitLoop({{"max_iterations", 100000}}, {{"RALPH_STANDIN_ITERATIONS", "100000"}});
  ASSERT_NE(id, 0u);
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() >= 2; }));
  json cancelled = Call({{"verb", "POST"}, {"path", fmt::format("/v1/jobs/{}/cancel", id)}});
  ASSERT_EQ(cancelled["ok"], true) << cancelled.dump();
  json job = WaitOver(id);
  EXPECT_EQ(job["state"], "cancelled") << job.dump();
  json iterations = Iterations(id);
  ASSERT_GE(iterations.size(), 2u);
  EXPECT_EQ(iterations.back()["stop"], "cancelled");
  for (size_t i = 0; i + 1 < iterations.size(); ++i) EXPECT_FALSE(iterations[i].contains("stop"));
  // No iteration after the cancel.
  EXPECT_EQ(Iterations(id).size(), iterations.size());
  json stopped = CtlJson({"audit", "list", "--job", std::to_string(id), "--type", "loop.stopped"});
  ASSERT_EQ(stopped.size(), 1u);
  EXPECT_EQ(stopped[0]["details"]["reason"], "cancelled");
  EXPECT_EQ(stopped[0]["details"]["iterations"], iterations.size());
}

TEST_F(AgentJobTest, BadLoopRequestsAreRefusedNamingTheField) {
  json agent = {{"profile", "claude"}, {"prompt", "x"}};
  json reply = Submit({{"profile", "agent"}, {"agent", agent}, {"loop", {{"max_iterations", 0}}}});
  EXPECT_EQ(reply["error"]["message"], "body.loop.max_iterations: 0 is out of range 1..100000");
  reply = Submit({{"argv", {"true"}}, {"loop", json::object()}});
  EXPECT_EQ(reply["error"]["message"].get<std::string>().rfind("body.loop: needs body.agent", 0),
            0u)
      << reply.dump();
  reply = Submit({{"profile", "agent"}, {"agent", agent}, {"loop", {{"stop_file", "../STOP"}}}});
  EXPECT_EQ(reply["error"]["message"], "body.loop.stop_file: '../STOP' contains '..'");
  reply = Submit({{"profile", "agent"},
                  {"agent", agent},
                  {"loop", json::object()},
                  {"env", {{"OPENAI_API_KEY", "sk-x"}}}});
  EXPECT_EQ(reply["error"]["code"], "refused") << reply.dump();
  EXPECT_EQ(Call({{"verb", "GET"}, {"path", "/v1/status"}})["ok"], true);
}
// Pause lets the running iteration finish and starts no next one; resume
// starts the next; a cancel while paused ends the loop between iterations.
TEST_F(AgentJobTest, PauseResumeAndCancelBetweenIterations) {
  uint64_t id = SubmitLoop({{"max_iterations", 100000}}, {{"RALPH_STANDIN_ITERATIONS", "100000"}});
  ASSERT_NE(id, 0u);
  std::string job = std::to_string(id);
  auto paused_events = [&] { return CountKind(Events(id), "loop.paused"); };
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() >= 1; }));
  ProgramStreams pause = Ctl({"job", "pause", job});
  ASSERT_EQ(pause.exit, 0) << pause.err;
  ASSERT_TRUE(WaitFor([&] { return paused_events() == 1; }));
  size_t at_pause = Iterations(id).size();
  EXPECT_EQ(Show(id)["state"], "running");
  ProgramStreams again = Ctl({"job", "pause", job});
  EXPECT_EQ(again.exit, 1);
  EXPECT_NE(again.err.find("already paused"), std::string::npos) << again.err;
  // Nothing runs while paused: the next iteration waits for resume.
  EXPECT_EQ(Iterations(id).size(), at_pause);

  ProgramStreams resume = Ctl({"job", "resume", job});
  ASSERT_EQ(resume.exit, 0) << resume.err;
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() > at_pause; }));
  ASSERT_EQ(Ctl({"job", "pause", job}).exit, 0);
  ASSERT_TRUE(WaitFor([&] { return paused_events() == 2; }));
  size_t at_cancel = Iterations(id).size();

  ProgramStreams cancel = Ctl({"job", "cancel", job});
  ASSERT_EQ(cancel.exit, 0) << cancel.err;
  json record = Show(id);  // over at once: nothing was running
  EXPECT_EQ(record["state"], "cancelled") << record.dump();
  EXPECT_EQ(record["reason"], "cancelled while paused between iterations");
  EXPECT_EQ(record["usage"]["agent"]["stop"], "cancelled");
  EXPECT_EQ(record["usage"]["agent"]["iterations"], at_cancel);
  EXPECT_EQ(Iterations(id).size(), at_cancel);
  json stopped = CtlJson({"audit", "list", "--job", job, "--type", "loop.stopped"});
  ASSERT_EQ(stopped.size(), 1u);
  EXPECT_EQ(stopped[0]["details"]["reason"], "cancelled");
  EXPECT_EQ(CtlJson({"audit", "list", "--job", job, "--type", "loop.resumed"}).size(), 1u);
  // Only a running loop job is paused.
  ProgramStreams over = Ctl({"job", "resume", job});
  EXPECT_EQ(over.exit, 1);
  EXPECT_NE(over.err.find("only a running loop job is paused or resumed"), std::string::npos)
      << over.err;
}

// Every regular file below `dir` (relative path -> bytes), and its
// directories (relative path -> "/"); what a rollback must restore exactly.
std::map<std::string, std::string> Tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (auto it = std::filesystem::recursive_directory_iterator(dir);
       it != std::filesystem::recursive_directory_iterator(); ++it) {
    std::string relative = it->path().string().substr(dir.size() + 1);
    out[relative] = it->is_directory() ? "/" : Read(it->path().string());
  }
  return out;
}

// The files a diff touches, from its "diff --git a/X b/X" lines.
std::set<std::string> DiffPaths(const std::string& diff) {
  std::set<std::string> out;
  std::istringstream lines(diff);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("diff --git a/", 0) != 0) continue;
    out.insert(line.substr(13, line.find(" b/") - 13));
  }
  return out;
}

// The diff of an iteration is exactly its change; a rollback (only while
// the loop is paused between iterations or over) restores the workspace of
// an iteration byte for byte, is recorded, and the loop goes on from it.
TEST_F(AgentJobTest, ADiffShowsAnIterationsChangeAndARollbackRestoresItsWorkspaceExactly) {
  // Each run adds notes/step-<i>.txt and removes the previous run's.
  uint64_t id = SubmitLoop({{"max_iterations", 100000}}, {{"RALPH_STANDIN_ITERATIONS", "100000"},
                                                          {"RALPH_STANDIN_REMOVE_PREVIOUS", "1"}});
  ASSERT_NE(id, 0u);
  const std::string job = std::to_string(id);
  const std::string workspace = fmt::format("{}/agents/{}/work", state_, id);
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() >= 1; }));
  // Never while an iteration runs (an unpaused loop always has one).
  ProgramStreams busy = Ctl({"job", "rollback", job, "1"});
  EXPECT_EQ(busy.exit, 1);
  EXPECT_NE(busy.err.find("a rollback needs the loop paused between iterations"), std::string::npos)
      << busy.err;
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() >= 3; }));
  ASSERT_EQ(Ctl({"job", "pause", job}).exit, 0);
  ASSERT_TRUE(WaitFor([&] { return CountKind(Events(id), "loop.paused") == 1; }));
  json iterations = Iterations(id);
  const size_t last = iterations.size();
  ASSERT_GE(last, 3u);

  // Iteration 2's change, against the workspace it started from.
  ProgramStreams diff = Ctl({"job", "diff", job, "2"});
  ASSERT_EQ(diff.exit, 0) << diff.err;
  EXPECT_EQ(DiffPaths(diff.out), (std::set<std::string>{".standin/state.json", "PROGRESS.md",
                                                        "notes/step-1.txt", "notes/step-2.txt"}))
      << diff.out;
  EXPECT_NE(diff.out.find("deleted file mode 100644\n"), std::string::npos) << diff.out;
  EXPECT_NE(diff.out.find("-iteration 1\n-prompt: Fix the parser\n"), std::string::npos);
  EXPECT_NE(diff.out.find("+iteration 2\n+prompt: Fix the parser\n"), std::string::npos);
  EXPECT_NE(diff.out.find(" - iteration 1\n+- iteration 2\n"), std::string::npos) << diff.out;
  EXPECT_NE(diff.out.find("-{\"iteration\":1}\n+{\"iteration\":2}\n"), std::string::npos);
  json reply = CtlJson({"job", "diff", job, "2"});
  EXPECT_EQ(reply["commit"], iterations[1]["commit"]);
  EXPECT_EQ(reply["from_commit"], iterations[0]["commit"]);
  EXPECT_EQ(reply["truncated"], false);
  EXPECT_EQ(reply["bytes"], diff.out.size());
  // The first iteration's: against the empty tree.
  json first = CtlJson({"job", "diff", job, "1"});
  EXPECT_TRUE(first["from_commit"].is_null()) << first.dump();
  EXPECT_EQ(DiffPaths(first["diff"]),
            (std::set<std::string>{".standin/state.json", "PROGRESS.md", "notes/step-1.txt"}));
  // Between two iterations.
  json between = CtlJson({"job", "diff", job, "3", "1"});
  EXPECT_EQ(between["from"], 1);
  EXPECT_EQ(DiffPaths(between["diff"]),
            (std::set<std::string>{".standin/state.json", "PROGRESS.md", "notes/step-1.txt",
                                   "notes/step-3.txt"}));
  // Bounded, and says so.
  json cut = CtlJson({"job", "diff", job, "2", "--limit", "40"});
  EXPECT_EQ(cut["truncated"], true);
  EXPECT_EQ(cut["bytes"], diff.out.size());
  std::string text = cut["diff"];
  EXPECT_EQ(text.substr(0, 40), diff.out.substr(0, 40));
  EXPECT_EQ(text.substr(40), fmt::format("\n[ralphd: diff truncated: 40 of {} bytes shown (limit "
                                         "40, at most 1048576)]\n",
                                         diff.out.size()));

  // Bad iteration numbers, each named.
  auto error = [&](const json& frame) { return Call(frame)["error"]; };
  std::string path = fmt::format("/v1/jobs/{}/diff", id);
  json bad = error({{"verb", "GET"}, {"path", path}, {"query", {{"iteration", "0"}}}});
  EXPECT_EQ(bad["message"], "query.iteration: 0 is out of range 1..9007199254740992");
  bad = error({{"verb", "GET"}, {"path", path}, {"query", json::object()}});
  EXPECT_EQ(bad["message"], "query.iteration: required (the loop iteration to show)");
  bad = error({{"verb", "GET"}, {"path", path}, {"query", {{"iteration", "99"}}}});
  EXPECT_EQ(bad["code"], "not-found");
  EXPECT_EQ(bad["message"], fmt::format("query.iteration: job {} has no iteration 99 (its "
                                        "iterations are 1..{})",
                                        id, last));
  bad = error({{"verb", "GET"}, {"path", path}, {"query", {{"iteration", "2"}, {"from", "2"}}}});
  EXPECT_EQ(bad["message"], "query.from: 2 is the iteration itself (an empty diff)");
  bad = error({{"verb", "GET"}, {"path", path}, {"query", {{"iteration", "2"}, {"from", "98"}}}});
  EXPECT_EQ(bad["message"].get<std::string>().rfind("query.from: job ", 0), 0u) << bad.dump();
  std::string rollback = fmt::format("/v1/jobs/{}/rollback", id);
  bad = error({{"verb", "POST"}, {"path", rollback}, {"body", {{"iteration", 0}}}});
  EXPECT_EQ(bad["message"], "body.iteration: 0 is out of range 1..9007199254740992");
  bad = error({{"verb", "POST"}, {"path", rollback}, {"body", {{"iteration", 99}}}});
  EXPECT_EQ(bad["message"], fmt::format("body.iteration: job {} has no iteration 99 (its "
                                        "iterations are 1..{})",
                                        id, last));
  ProgramStreams usage = Ctl({"job", "diff", job, "two"});
  EXPECT_EQ(usage.exit, 2);
  EXPECT_NE(usage.err.find("iteration: 'two' is not a number"), std::string::npos) << usage.err;
  // Nothing of that changed the workspace.
  EXPECT_EQ(Read(workspace + "/.standin/state.json"), fmt::format("{{\"iteration\":{}}}\n", last));

  // A file no iteration committed goes too.
  Write(workspace + "/stray.txt", "not committed\n");
  ProgramStreams restored = Ctl({"job", "rollback", job, "1"});
  ASSERT_EQ(restored.exit, 0) << restored.err;
  const std::map<std::string, std::string> iteration1 = {
      {".standin", "/"},
      {".standin/state.json", "{\"iteration\":1}\n"},
      {"PROGRESS.md", "- iteration 1\n"},
      {"notes", "/"},
      {"notes/step-1.txt", "iteration 1\nprompt: Fix the parser\n"}};
  EXPECT_EQ(Tree(workspace), iteration1);
  // Owned by the job's root, as the job left them.
  struct stat root {};
  ASSERT_EQ(::stat(workspace.c_str(), &root), 0);
  for (const auto& [name, content] : iteration1) {
    struct stat st {};
    ASSERT_EQ(::lstat((workspace + "/" + name).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, root.st_uid) << name;
  }
  // Recorded: an audit row and an event, and a commit of the restored tree
  // on top of the loop's history.
  json rows = CtlJson({"audit", "list", "--job", job, "--type", "loop.rollback"});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["details"]["iteration"], 1);
  EXPECT_EQ(rows[0]["details"]["caller"], "uid:0");
  EXPECT_EQ(rows[0]["details"]["commit"], iterations[0]["commit"]);
  EXPECT_EQ(rows[0]["details"]["after_iteration"], last);
  EXPECT_EQ(CountKind(Events(id), "loop.rollback"), 1u);
  std::string rollback_commit = rows[0]["details"]["rollback_commit"];
  EXPECT_EQ(
      Git(id, {"log", "-1", "--format=%H %s", "main"}),
      fmt::format("{} rollback to iteration 1 (after iteration {})\n", rollback_commit, last));
  EXPECT_EQ(Git(id, {"rev-parse", rollback_commit + "^{tree}"}),
            Git(id, {"rev-parse", iterations[0]["commit"].get<std::string>() + "^{tree}"}));
  // The download is the restored workspace.
  json listed = CtlJson({"job", "download", job, "--list"});
  std::set<std::string> paths;
  for (const json& file : listed["files"]) paths.insert(file["path"]);
  EXPECT_TRUE(paths.count("/work/notes/step-1.txt")) << listed.dump();
  EXPECT_FALSE(paths.count("/work/notes/step-2.txt")) << listed.dump();

  // The loop goes on from there: the next run is the stand-in's second again.
  ASSERT_EQ(Ctl({"job", "resume", job}).exit, 0);
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() > last; }));
  ASSERT_EQ(Ctl({"job", "cancel", job}).exit, 0);
  json over = WaitOver(id);
  EXPECT_EQ(over["state"], "cancelled");
  json next = Iterations(id)[last];
  EXPECT_EQ(next["changed"], true);
  json again = CtlJson({"job", "diff", job, std::to_string(last + 1)});
  EXPECT_EQ(again["from_commit"], rollback_commit);
  EXPECT_EQ(DiffPaths(again["diff"]),
            (std::set<std::string>{".standin/state.json", "PROGRESS.md", "notes/step-1.txt",
                                   "notes/step-2.txt"}));

  // After the end, the rollback restores the workspace the job leaves (its
  // archive).
  ASSERT_EQ(Ctl({"job", "rollback", job, "2"}).exit, 0);
  std::string out = work_ + "/after.tar";
  ASSERT_EQ(Ctl({"job", "download", job, "--output", out}).exit, 0);
  std::string extracted = work_ + "/after";
  ASSERT_EQ(::mkdir(extracted.c_str(), 0755), 0);
  ASSERT_EQ(RunProgramStreams({"tar", "-xf", out, "-C", extracted}).exit, 0);
  EXPECT_EQ(Tree(extracted), (std::map<std::string, std::string>{
                                 {".standin", "/"},
                                 {".standin/state.json", "{\"iteration\":2}\n"},
                                 {"PROGRESS.md", "- iteration 1\n- iteration 2\n"},
                                 {"notes", "/"},
                                 {"notes/step-2.txt", "iteration 2\nprompt: Fix the parser\n"}}));
  EXPECT_EQ(CtlJson({"audit", "list", "--job", job, "--type", "loop.rollback"}).size(), 2u);
  EXPECT_FALSE(std::filesystem::exists(fmt::format("{}/jobs/{}/rollback", state_, id)));
}

// A job that is not a loop has no iterations to diff or restore.
TEST_F(AgentJobTest, DiffAndRollbackOfAJobThatIsNotALoopAreRefused) {
  ProgramStreams run = Ctl({"job", "run", "--", "true"});
  ASSERT_EQ(run.exit, 0) << run.err;
  ProgramStreams diff = Ctl({"job", "diff", "1", "1"});
  EXPECT_EQ(diff.exit, 1);
  EXPECT_NE(diff.err.find("job 1 is not a loop job"), std::string::npos) << diff.err;
  ProgramStreams rollback = Ctl({"job", "rollback", "1", "1"});
  EXPECT_EQ(rollback.exit, 1);
  EXPECT_NE(rollback.err.find("job 1 is not a loop job"), std::string::npos) << rollback.err;
}

// The same over the HTTPS API (`ralphctl --remote`): the diff, and a
// rollback whose audit row names the client certificate.
TEST_F(AgentJobTest, DiffAndRollbackOverTheHttpsApi) {
  std::string port =
      StartWithApi({"--agent-program", "claude=/opt/ralph-tests/ralph-agent-standin"});
  identity_ = work_ + "/host-identity";
  remote_ = PairRemote(port, identity_);
  ASSERT_FALSE(HasFailure());
  uint64_t id = SubmitLoop({{"max_iterations", 100000}}, {{"RALPH_STANDIN_ITERATIONS", "100000"},
                                                          {"RALPH_STANDIN_REMOVE_PREVIOUS", "1"}});
  ASSERT_NE(id, 0u);
  const std::string job = std::to_string(id);
  ASSERT_TRUE(WaitFor([&] { return Iterations(id).size() >= 2; }));
  ProgramStreams pause = Ctl({"job", "pause", job});
  ASSERT_EQ(pause.exit, 0) << pause.err;
  ASSERT_TRUE(WaitFor([&] { return CountKind(Events(id), "loop.paused") == 1; }));
  ProgramStreams diff = Ctl({"job", "diff", job, "2"});
  ASSERT_EQ(diff.exit, 0) << diff.err;
  EXPECT_EQ(DiffPaths(diff.out), (std::set<std::string>{".standin/state.json", "PROGRESS.md",
                                                        "notes/step-1.txt", "notes/step-2.txt"}))
      << diff.out;
  ProgramStreams rollback = Ctl({"job", "rollback", job, "1"});
  ASSERT_EQ(rollback.exit, 0) << rollback.err;
  EXPECT_EQ(Read(fmt::format("{}/agents/{}/work/notes/step-1.txt", state_, id)),
            "iteration 1\nprompt: Fix the parser\n");
  json rows = CtlJson({"audit", "list", "--job", job, "--type", "loop.rollback"});
  ASSERT_EQ(rows.size(), 1u) << rows.dump();
  EXPECT_EQ(rows[0]["details"]["caller"].get<std::string>().rfind("cert:", 0), 0u) << rows.dump();
  ProgramStreams bad = Ctl({"job", "rollback", job, "99"});
  EXPECT_EQ(bad.exit, 1);
  EXPECT_NE(bad.err.find(fmt::format("body.iteration: job {} has no iteration 99", id)),
            std::string::npos)
      << bad.err;
  ASSERT_EQ(Console({"job", "cancel", job}).exit, 0);
  WaitOver(id);
}

// Without a working git a loop job is refused at submit, saying why; other
// jobs run.
TEST_F(AgentJobTest, WithoutGitALoopIsRefusedAtSubmit) {
  StopDaemon(SIGTERM);
  StartDaemon(2, {"--agent-program", "claude=/opt/ralph-tests/ralph-agent-standin", "--git",
                  work_ + "/no-such-git"});
  json reply = Submit({{"profile", "agent"},
                       {"agent", {{"profile", "claude"}, {"prompt", "x"}}},
                       {"loop", {{"max_iterations", 2}}}});
  EXPECT_EQ(reply["error"]["code"], "not-found") << reply.dump();
  std::string message = reply["error"]["message"];
  EXPECT_EQ(message.rfind(fmt::format("body.loop: loop mode needs git ({}/no-such-git, Debian "
                                      "package git)",
                                      work_),
                          0),
            0u)
      << message;
  EXPECT_EQ(Ctl({"job", "run", "--", "true"}).exit, 0);
}

TEST_F(AgentJobTest, AJobThatNeedsAVmIsRefusedWithTheReasonAndOthersRun) {
  Write(work_ + "/vm-policy.xml", R"(<policy format="1">
  <profile name="default">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
  <profile name="untrusted" isolation="vm">
    <limits memory="256MiB" pids="64" timeout="5m"/>
  </profile>
</policy>
)");
  ProgramStreams set = Ctl({"policy", "set", work_ + "/vm-policy.xml"});
  ASSERT_EQ(set.exit, 0) << set.err;
  json reply = Submit({{"profile", "untrusted"}, {"argv", {"true"}}});
  EXPECT_EQ(reply["error"]["code"], "unsupported") << reply.dump();
  EXPECT_EQ(std::string(reply["error"]["message"])
                .rfind("isolation: profile 'untrusted' requires vm, and this machine cannot run a "
                       "VM job: this ralphd was started without a guest image for VM jobs "
                       "(ralphd --vm-guest DIR",
                       0),
            0u)
      << reply.dump();
  reply = Submit({{"isolation", "vm"}, {"argv", {"true"}}});
  EXPECT_EQ(reply["error"]["code"], "unsupported") << reply.dump();
  reply = Submit({{"profile", "untrusted"}, {"isolation", "namespaces"}, {"argv", {"true"}}});
  EXPECT_EQ(reply["error"]["code"], "refused") << reply.dump();
  // Nothing was queued, and a namespace job runs as before.
  EXPECT_EQ(Ctl({"job", "run", "--", "true"}).exit, 0);
}

// A job's memory client: each argument is one request line; prints each
// reply. Without a socket: whether the variable and the directory exist.
constexpr std::string_view kMemoryClient = R"(
import json, os, socket, sys
path = os.environ.get("RALPH_MEMORY_SOCKET")
if not path:
    print(json.dumps({"socket": None, "dir": os.path.exists("/run/ralph-memory")}))
    sys.exit(0)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rw")
for line in sys.argv[1:]:
    f.write(line + "\n")
    f.flush()
    print(f.readline().strip())
)";

std::vector<json> JsonLines(const std::string& text) {
  std::vector<json> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) out.push_back(json::parse(line, nullptr, false));
  return out;
}

TEST_F(RalphdTest, AJobGrantedMemoryUsesItsSocketAsItselfAndOneWithoutHasNone) {
  ASSERT_EQ(::access("/usr/bin/python3", X_OK), 0)
      << "the jobs' memory client needs python3 on the host (Debian package python3)";
  Write(work_ + "/memory-policy.xml", R"(<policy format="1">
  <profile name="default">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
  <profile name="memory">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
    <memory access="read-write"/>
  </profile>
  <profile name="reader">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
    <memory access="read"/>
  </profile>
</policy>
)");
  ProgramStreams set = Ctl({"policy", "set", work_ + "/memory-policy.xml"});
  ASSERT_EQ(set.exit, 0) << set.err;
  // The hash the store must give job 1's write (services/memory store.h).
  std::string hash = *memory::EntryHash("job:1", "notes/plan", R"({"a":1,"b":2})");

  ProgramStreams writer =
      Ctl({"job", "run", "--profile", "memory", "--", "/usr/bin/python3", "-c",
           std::string(kMemoryClient), R"({"op":"put","key":"notes/plan","value":{"b":2,"a":1}})",
           R"({"op": "put", "value": {"a": 1, "b": 2}, "key": "notes/plan"})",
           R"({"op":"put","key":"notes/plan","value":1,"agent":"job:2"})",
           json({{"op", "get"}, {"hash", hash}}).dump(), R"({"op":"history","key":"notes/plan"})"});
  ASSERT_EQ(writer.exit, 0) << writer.err;
  std::vector<json> replies = JsonLines(writer.out);
  ASSERT_EQ(replies.size(), 5u) << writer.out;
  EXPECT_EQ(replies[0]["ok"], true) << replies[0];
  EXPECT_EQ(replies[0]["created"], true);
  EXPECT_EQ(replies[0]["entry"]["agent"], "job:1");
  EXPECT_EQ(replies[0]["entry"]["hash"], hash);
  EXPECT_EQ(replies[1]["created"], false) << replies[1];
  EXPECT_EQ(replies[1]["entry"]["hash"], hash);
  // A job cannot name another agent: the socket says who it is.
  EXPECT_EQ(replies[2]["error"]["message"], "request.agent: unknown member for op put");
  EXPECT_EQ(replies[3]["entry"]["value"], json::parse(R"({"a":1,"b":2})"));
  EXPECT_EQ(replies[4]["entries"].size(), 1u);

  // No grant: no socket and no variable.
  ProgramStreams none =
      Ctl({"job", "run", "--", "/usr/bin/python3", "-c", std::string(kMemoryClient)});
  ASSERT_EQ(none.exit, 0) << none.err;
  EXPECT_EQ(none.out, "{\"socket\": null, \"dir\": false}\n");

  // Read access: reads, and its put is refused.
  ProgramStreams reader =
      Ctl({"job", "run", "--profile", "reader", "--", "/usr/bin/python3", "-c",
           std::string(kMemoryClient), R"({"op":"put","key":"notes/plan","value":3})",
           json({{"op", "get"}, {"hash", hash}}).dump()});
  ASSERT_EQ(reader.exit, 0) << reader.err;
  replies = JsonLines(reader.out);
  ASSERT_EQ(replies.size(), 2u) << reader.out;
  EXPECT_EQ(replies[0]["error"]["code"], "permission-denied") << replies[0];
  EXPECT_EQ(replies[1]["entry"]["agent"], "job:1");

  // Each job's socket went with it.
  EXPECT_FALSE(std::filesystem::exists(state_ + "/memory/1"));
  EXPECT_FALSE(std::filesystem::exists(state_ + "/memory/3"));

  // ralphctl sees the same store and writes as its caller.
  json got = CtlJson({"memory", "get", hash});
  EXPECT_EQ(got["entry"]["agent"], "job:1");
  json put = CtlJson({"memory", "put", "notes/plan", R"("from the console")"});
  EXPECT_EQ(put["entry"]["agent"], "uid:0");
  EXPECT_EQ(put["created"], true);
  ProgramStreams put_text = Ctl({"memory", "put", "notes/plan", R"("from the console")"});
  EXPECT_EQ(put_text.out, put["entry"]["hash"].get<std::string>() + " (already stored)\n");
  json history = CtlJson({"memory", "history", "notes/plan"});
  ASSERT_EQ(history["entries"].size(), 2u) << history;
  EXPECT_EQ(history["entries"][0]["agent"], "job:1");
  EXPECT_EQ(history["entries"][1]["agent"], "uid:0");
  EXPECT_EQ(CtlJson({"memory", "list", "job:1"})["entries"].size(), 1u);
  // LIKE's metacharacters are themselves in a prefix.
  for (const char* key : {"a%b", "axb", "a_b"}) CtlJson({"memory", "put", key, "1"});
  json like = CtlJson({"memory", "query", "a%"});
  ASSERT_EQ(like["entries"].size(), 1u) << like;
  EXPECT_EQ(like["entries"][0]["key"], "a%b");
  json paged = CtlJson({"memory", "query", "--limit", "2"});
  EXPECT_EQ(paged["entries"].size(), 2u);
  EXPECT_TRUE(paged.contains("next_after")) << paged;

  ProgramStreams bad = Ctl({"memory", "query", "--limit", "5000"});
  EXPECT_NE(bad.exit, 0);
  EXPECT_NE(bad.err.find("query.limit: 5000 is out of range 1..1000"), std::string::npos)
      << bad.err;
  ProgramStreams not_json = Ctl({"memory", "put", "k", "not json"});
  EXPECT_EQ(not_json.exit, 2);
  EXPECT_NE(not_json.err.find("VALUE: 'not json' is not JSON"), std::string::npos) << not_json.err;

  // Every put through a socket is audited with the job as the agent.
  json job1 = CtlJson({"audit", "list", "--job", "1", "--type", "memory.put", "--limit", "0"});
  ASSERT_EQ(job1.size(), 2u) << job1;
  EXPECT_EQ(job1[0]["details"]["agent"], "job:1");
  EXPECT_EQ(job1[0]["details"]["hash"], hash);
  EXPECT_EQ(job1[0]["details"]["created"], true);
  EXPECT_EQ(job1[1]["details"]["created"], false);
  json job3 = CtlJson({"audit", "list", "--job", "3", "--type", "memory.put", "--limit", "0"});
  ASSERT_EQ(job3.size(), 1u) << job3;
  EXPECT_EQ(job3[0]["details"]["result"], "permission-denied");
  EXPECT_EQ(Ctl({"audit", "verify"}).exit, 0);
}

// The memory's commands on both transports: ralphctl on the console writes
// as uid:0, a paired client over HTTPS as its certificate.
TEST_P(RalphctlTest, MemoryCommandsWriteAsTheCallerAndPage) {
  json put = CtlJson({"memory", "put", "plan/1", R"({"b": 2, "a": [1, "x"]})"});
  ASSERT_TRUE(put.contains("entry")) << put;
  std::string agent = put["entry"]["agent"];
  if (GetParam() == Transport::kLocal) {
    EXPECT_EQ(agent, "uid:0");
  } else {
    EXPECT_EQ(agent.rfind("cert:", 0), 0u) << agent;
  }
  std::string hash = put["entry"]["hash"];
  EXPECT_EQ(hash, *memory::EntryHash(agent, "plan/1", R"({"a":[1,"x"],"b":2})"));
  EXPECT_EQ(put["created"], true);
  EXPECT_EQ(CtlJson({"memory", "put", "plan/1", R"({"a":[1,"x"],"b":2})"})["created"], false);
  ProgramStreams got = Ctl({"memory", "get", hash});
  ASSERT_EQ(got.exit, 0) << got.err;
  EXPECT_NE(got.out.find(agent + " plan/1"), std::string::npos) << got.out;
  for (int i = 2; i <= 5; ++i) {
    CtlJson({"memory", "put", fmt::format("plan/{}", i), std::to_string(i)});
  }
  CtlJson({"memory", "put", "plan%", "0"});
  // Pages of 2 over the prefix, in write order, without loss or repeat.
  std::vector<std::string> keys;
  std::string after = "0";
  for (int pages = 0; pages < 10; ++pages) {
    json page = CtlJson({"memory", "query", "plan/", "--limit", "2", "--after", after});
    for (const json& entry : page["entries"]) keys.push_back(entry["key"]);
    if (!page.contains("next_after")) break;
    after = std::to_string(page["next_after"].get<uint64_t>());
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"plan/1", "plan/2", "plan/3", "plan/4", "plan/5"}));
  json percent = CtlJson({"memory", "query", "plan%"});
  ASSERT_EQ(percent["entries"].size(), 1u) << percent;
  EXPECT_EQ(CtlJson({"memory", "list", agent})["entries"].size(), 6u);
  ProgramStreams missing = Ctl({"memory", "get", std::string(64, '0')});
  EXPECT_NE(missing.exit, 0);
  EXPECT_NE(missing.err.find("no such entry"), std::string::npos) << missing.err;
  ProgramStreams bad_key = Ctl({"memory", "put", "", "1"});
  EXPECT_NE(bad_key.exit, 0);
  EXPECT_NE(bad_key.err.find("body.key: must not be empty"), std::string::npos) << bad_key.err;
}

}  // namespace
}  // namespace ralph::ralphd

namespace ralph::ralphd {
namespace {

// The agents' credentials with the stand-in login program
// (tests/agents/standin/login_standin_main.cpp) as the claude profile's tool:
// a login on a pty captured into the encrypted store, the account shared by
// reference into the jobs its policy grants (the refresh one job makes is
// what the next sees; one holder at a time), revocation. The live copies
// are on a tmpfs (/dev/shm) named with the pid; the token "server" is a
// directory the jobs mount.
class CredentialTest : public AgentJobTest {
 protected:
  void SetUp() override {
    RalphdTest::SetUp();
    if (HasFatalFailure()) return;
    StopDaemon(SIGTERM);
    live_ = fmt::format("/dev/shm/ralphd-test-{}-{}-live", ::getpid(), counter_);
    server_ = work_ + "/server";
    ASSERT_EQ(::mkdir(server_.c_str(), 0777), 0);
    ASSERT_EQ(::chmod(server_.c_str(), 0777), 0);
    StartDaemon(2, {"--agent-program", "claude=/opt/ralph-tests/ralph-login-standin",
                    "--creds-live-dir", live_});
    const char* build = std::getenv("RALPH_BINARY_DIR");
    // A small disk: the plaintext checks read every byte under the state
    // directory, the jobs' upper images included.
    std::string mounts = fmt::format(R"(
    <limits memory="256MiB" pids="64" disk="64MiB" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
    <mount source="{}/tests" destination="/opt/ralph-tests"/>
    <mount source="{}" destination="/server" access="read-write"/>)",
                                     build, server_);
    Write(work_ + "/creds-policy.xml", fmt::format(R"(<policy format="1">
  <profile name="default">{0}
  </profile>
  <profile name="granted">{0}
    <credentials scopes="global"/>
  </profile>
  <profile name="ungranted">{0}
  </profile>
  <profile name="team">{0}
    <credentials scopes="agent,tenant" tenant="acme"/>
  </profile>
</policy>
)",
                                                   mounts));
    ProgramStreams set = Ctl({"policy", "set", work_ + "/creds-policy.xml"});
    ASSERT_EQ(set.exit, 0) << set.err;
  }

  void TearDown() override {
    RalphdTest::TearDown();
    // The accounts' tmpfs mounts a failed test may have left.
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(live_, ec);
         it != std::filesystem::directory_iterator(); it.increment(ec)) {
      ::umount2(it->path().c_str(), MNT_DETACH);
    }
    std::filesystem::remove_all(live_, ec);
  }

  // The store as ralphd keeps it (same directory and device key).
  std::unique_ptr<creds::CredentialStore> Store() {
    auto store = creds::CredentialStore::Open(state_ + "/credentials", state_ + "/credentials.key");
    EXPECT_TRUE(store) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }

  static creds::AccountId Global() {
    return *creds::AccountId::Make("claude", creds::Scope::kGlobal, "default");
  }

  static std::string CredentialWith(const std::string& refresh) {
    return json{{"claudeAiOauth", {{"accessToken", "standin-access-1"}, {"refreshToken", refresh}}}}
        .dump();
  }

  // An account as a login would have left it, and the provider's side.
  void Seed(const creds::AccountId& account, const std::string& refresh) {
    auto store = Store();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Put(account, CredentialWith(refresh)));
    Write(server_ + "/valid", refresh + "\n");
    ASSERT_EQ(::chmod((server_ + "/valid").c_str(), 0666), 0);
  }

  uint64_t SubmitAgent(const std::string& profile, const std::string& hold = "") {
    json env = {{"RALPH_STANDIN_TOKEN_SERVER", "/server"}};
    if (!hold.empty()) env["RALPH_STANDIN_HOLD"] = "/server/" + hold;
    json reply = Submit({{"profile", profile},
                         {"agent", {{"profile", "claude"}, {"prompt", "refresh"}}},
                         {"env", env}});
    EXPECT_EQ(reply["ok"], true) << reply.dump();
    return reply["body"].value("id", uint64_t{0});
  }

  std::vector<std::string> ServerLog() {
    std::vector<std::string> lines;
    std::istringstream in(Read(server_ + "/log"));
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
    return lines;
  }

  // Whether `needle` is in any regular file below `dir`.
  static bool AnyFileHas(const std::string& dir, const std::string& needle) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(
             dir, std::filesystem::directory_options::skip_permission_denied, ec);
         it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec) && Read(it->path().string()).find(needle) != std::string::npos) {
        ADD_FAILURE() << needle << " found in " << it->path();
        return true;
      }
    }
    return false;
  }

  size_t LiveFiles() {
    size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(live_, ec);
         it != std::filesystem::directory_iterator(); it.increment(ec)) {
      ++n;
    }
    return n;
  }

  json AuditRows(const std::string& type) { return CtlJson({"audit", "list", "--type", type}); }

  std::string live_, server_;
};

TEST_F(CredentialTest, ARefreshOneJobMakesIsWhatTheNextSeesAndHoldersAreSerialized) {
  Seed(Global(), "standin-refresh-1-seed");
  uint64_t first = SubmitAgent("granted", "release-1");
  uint64_t second = SubmitAgent("granted", "release-2");
  // The first holds the account (it refreshed, then waits on its release
  // file); the second waits, queued, although a job slot is free.
  ASSERT_TRUE(WaitFor([&] { return ServerLog().size() == 1; })) << Read(server_ + "/log");
  ASSERT_TRUE(WaitFor([&] { return CountKind(Events(second), "creds.wait") == 1; }));
  EXPECT_EQ(Show(first)["state"], "running");
  EXPECT_EQ(Show(second)["state"], "queued");
  EXPECT_EQ(ServerLog()[0], "standin-refresh-1-seed -> standin-refresh-2-seed");
  json listed = CtlJson({"creds", "list"});
  ASSERT_EQ(listed["accounts"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["accounts"][0]["account"], "claude/global/default");
  EXPECT_EQ(listed["accounts"][0]["holders"], json::array({first}));
  // While held, the credential in the clear is on the tmpfs only: the
  // account's own, bound as the tool's directory with the profile's
  // settings in it (the stand-in saved its refresh by rename there).
  EXPECT_EQ(LiveFiles(), 1u);
  EXPECT_FALSE(AnyFileHas(state_, "standin-refresh"));
  const std::string tool_dir = live_ + "/claude.global.default";
  struct statfs fs {};
  ASSERT_EQ(::statfs(tool_dir.c_str(), &fs), 0);
  EXPECT_EQ(fs.f_type, TMPFS_MAGIC);
  struct stat parent {
  }, own{};
  ASSERT_EQ(::stat(live_.c_str(), &parent), 0);
  ASSERT_EQ(::stat(tool_dir.c_str(), &own), 0);
  EXPECT_NE(parent.st_dev, own.st_dev) << "the account's directory is not a tmpfs of its own";
  EXPECT_NE(Read(tool_dir + "/settings.json").find("bypassPermissions"), std::string::npos);
  EXPECT_NE(Read(tool_dir + "/.credentials.json").find("standin-refresh-2-seed"),
            std::string::npos);

  Write(server_ + "/release-1", "");
  EXPECT_EQ(WaitOver(first)["state"], "succeeded");
  // The second got the account next and presented the rotated token: had
  // it been given a copy of the first's, the provider would have refused.
  ASSERT_TRUE(WaitFor([&] { return ServerLog().size() == 2; }));
  EXPECT_EQ(ServerLog()[1], "standin-refresh-2-seed -> standin-refresh-3-seed");
  Write(server_ + "/release-2", "");
  EXPECT_EQ(WaitOver(second)["state"], "succeeded") << Show(second).dump();

  // Written back: the store holds the last refresh, encrypted; nothing in
  // the clear is left on VAR or on the tmpfs.
  auto store = Store();
  ASSERT_NE(store, nullptr);
  auto stored = store->Get(Global());
  ASSERT_TRUE(stored) << stored.error().ToString();
  EXPECT_EQ(json::parse(*stored)["claudeAiOauth"]["refreshToken"], "standin-refresh-3-seed");
  EXPECT_FALSE(AnyFileHas(state_, "standin-refresh"));
  EXPECT_FALSE(AnyFileHas(state_, "claudeAiOauth"));
  EXPECT_EQ(LiveFiles(), 0u);

  // Every grant is audited, the first released (written back) before the
  // second's grant.
  json grants = AuditRows("creds.grant");
  json releases = AuditRows("creds.release");
  ASSERT_EQ(grants.size(), 2u) << grants.dump();
  ASSERT_EQ(releases.size(), 2u) << releases.dump();
  EXPECT_EQ(grants[0]["details"]["job"], first);
  EXPECT_EQ(grants[1]["details"]["job"], second);
  EXPECT_EQ(grants[0]["details"]["account"], "claude/global/default");
  EXPECT_EQ(releases[0]["details"]["job"], first);
  EXPECT_EQ(releases[0]["details"]["written_back"], true);
  EXPECT_LT(releases[0]["seq"].get<int64_t>(), grants[1]["seq"].get<int64_t>());
}

TEST_F(CredentialTest, JobsSeeOnlyWhatTheirPolicyGrantsAndRevocationRemovesAccess) {
  Seed(Global(), "standin-refresh-1-seed");
  // No <credentials>: no credential file at all.
  uint64_t ungranted = SubmitAgent("ungranted");
  json over = WaitOver(ungranted);
  EXPECT_EQ(over["state"], "failed");
  EXPECT_NE(Ctl({"job", "logs", std::to_string(ungranted)}).out.find("Not logged in"),
            std::string::npos);
  // Granted agent and tenant scopes, but no account stored for either.
  uint64_t team = SubmitAgent("team");
  EXPECT_EQ(WaitOver(team)["state"], "failed");
  EXPECT_TRUE(ServerLog().empty());
  EXPECT_EQ(AuditRows("creds.grant").size(), 0u);

  // The tenant account, once stored, is what "team" jobs get.
  creds::AccountId acme = *creds::AccountId::Make("claude", creds::Scope::kTenant, "acme");
  Seed(acme, "standin-refresh-1-acme");
  uint64_t held = SubmitAgent("team", "release-team");
  ASSERT_TRUE(WaitFor([&] { return ServerLog().size() == 1; }));
  EXPECT_EQ(ServerLog()[0], "standin-refresh-1-acme -> standin-refresh-2-acme");
  // Revoked while held: the holder loses it at once, nothing is written
  // back, later jobs get nothing.
  ProgramStreams revoke = Ctl({"creds", "revoke", "claude", "--scope", "tenant", "--name", "acme"});
  EXPECT_EQ(revoke.exit, 0) << revoke.err;
  EXPECT_NE(revoke.out.find("account claude/tenant/acme revoked"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(live_ + "/claude.tenant.acme/.credentials.json"));
  Write(server_ + "/release-team", "");
  EXPECT_EQ(WaitOver(held)["state"], "succeeded");
  EXPECT_EQ(LiveFiles(), 0u);
  auto store = Store();
  EXPECT_FALSE(*store->Has(acme));
  json listed = CtlJson({"creds", "list"});
  ASSERT_EQ(listed["accounts"].size(), 1u);
  EXPECT_EQ(listed["accounts"][0]["account"], "claude/global/default");
  uint64_t after = SubmitAgent("team");
  EXPECT_EQ(WaitOver(after)["state"], "failed");
  json grants = AuditRows("creds.grant");
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0]["details"]["job"], held);

  // Bad input, each naming what was wrong.
  ProgramStreams again = Ctl({"creds", "revoke", "claude", "--scope", "tenant", "--name", "acme"});
  EXPECT_EQ(again.exit, 1);
  EXPECT_NE(again.err.find("claude/tenant/acme has no credential"), std::string::npos) << again.err;
  ProgramStreams nameless = Ctl({"creds", "revoke", "claude", "--scope", "agent"});
  EXPECT_NE(nameless.err.find("body.name: the agent scope needs a name"), std::string::npos)
      << nameless.err;
  ProgramStreams command = Ctl({"creds", "login", "command"});
  EXPECT_NE(command.err.find("body.profile: 'command' is not one of claude, codex, opencode"),
            std::string::npos)
      << command.err;
  ProgramStreams scope = Ctl({"creds", "login", "claude", "--scope", "everyone"});
  EXPECT_NE(scope.err.find("body.scope"), std::string::npos) << scope.err;
  ProgramStreams policy = Ctl({"creds", "login", "claude", "--policy-profile", "nope"});
  EXPECT_NE(policy.err.find("body.policy_profile: 'nope' is not in the active policy"),
            std::string::npos)
      << policy.err;
}

TEST_F(CredentialTest, ALoginOnThePtyIsCapturedEncryptedAndGrantedToTheNextJob) {
  // The operator pastes the code on the relayed pty (ralphctl in pipe mode).
  std::string script = work_ + "/login.sh";
  Write(script, fmt::format("printf 'STANDIN-k7q\\n' | {} creds login claude --socket {} "
                            "--policy-profile granted\n",
                            ralphctl_, socket_));
  ProgramStreams login = RunProgramStreams({"sh", script});
  EXPECT_EQ(login.exit, 0) << login.out << login.err;
  EXPECT_NE(login.out.find("https://login.standin.invalid/oauth/authorize"), std::string::npos)
      << login.out;
  EXPECT_NE(login.out.find("Device code: ABCD-1234"), std::string::npos);
  EXPECT_NE(login.err.find("logged in: claude/global/default stored"), std::string::npos)
      << login.err;

  auto store = Store();
  ASSERT_NE(store, nullptr);
  auto stored = store->Get(Global());
  ASSERT_TRUE(stored) << stored.error().ToString();
  EXPECT_EQ(json::parse(*stored)["claudeAiOauth"]["refreshToken"], "standin-refresh-1-k7q");
  // Captured: encrypted on VAR, the login's home gone from the tmpfs.
  EXPECT_FALSE(AnyFileHas(state_, "standin-refresh"));
  EXPECT_EQ(LiveFiles(), 0u);
  json logins = AuditRows("creds.login");
  ASSERT_EQ(logins.size(), 1u) << logins.dump();
  EXPECT_EQ(logins[0]["details"]["result"], "captured");
  EXPECT_EQ(logins[0]["details"]["account"], "claude/global/default");

  // A granted job uses it (the provider issued that token at the login).
  Write(server_ + "/valid", "standin-refresh-1-k7q\n");
  ASSERT_EQ(::chmod((server_ + "/valid").c_str(), 0666), 0);
  uint64_t job = SubmitAgent("granted");
  EXPECT_EQ(WaitOver(job)["state"], "succeeded");
  EXPECT_EQ(ServerLog(),
            std::vector<std::string>{"standin-refresh-1-k7q -> standin-refresh-2-k7q"});

  // A wrong code: the login fails, nothing is stored or changed.
  Write(script,
        fmt::format("printf 'nonsense\\n' | {} creds login claude --socket {} --scope agent "
                    "--name granted --policy-profile granted\n",
                    ralphctl_, socket_));
  ProgramStreams bad = RunProgramStreams({"sh", script});
  EXPECT_NE(bad.exit, 0);
  EXPECT_NE(bad.err.find("login failed"), std::string::npos) << bad.err;
  EXPECT_FALSE(*store->Has(*creds::AccountId::Make("claude", creds::Scope::kAgent, "granted")));
  EXPECT_EQ(LiveFiles(), 0u);
}

// The companion client's login: `ralphctl --remote` over the HTTPS API
// (the login job's terminal is the API's WebSocket), the code pasted there.
TEST_F(CredentialTest, ALoginOverTheHttpsApiIsCapturedEncrypted) {
  std::string port = StartWithApi({"--agent-program", "claude=/opt/ralph-tests/ralph-login-standin",
                                   "--creds-live-dir", live_});
  std::string identity = work_ + "/host-identity";
  std::string url = PairRemote(port, identity);
  std::string script = work_ + "/login.sh";
  Write(script, fmt::format("printf 'STANDIN-h77\\n' | {} --remote {} --identity {} creds login "
                            "claude --scope tenant --name acme --policy-profile granted\n",
                            ralphctl_, url, identity));
  ProgramStreams login = RunProgramStreams({"sh", script});
  EXPECT_EQ(login.exit, 0) << login.out << login.err;
  // What the login printed before the terminal attached (the URL and the
  // device code come first; over HTTPS the attach is often later) is
  // replayed on it, once, and what follows the paste comes after.
  size_t shown = login.out.find("https://login.standin.invalid/oauth/authorize");
  ASSERT_NE(shown, std::string::npos) << login.out;
  EXPECT_EQ(login.out.find("https://login.standin.invalid/oauth/authorize", shown + 1),
            std::string::npos)
      << login.out;
  EXPECT_NE(login.out.find("Device code: ABCD-1234"), std::string::npos) << login.out;
  EXPECT_GT(login.out.find("Login successful"), shown) << login.out;
  EXPECT_NE(login.err.find("logged in: claude/tenant/acme stored"), std::string::npos) << login.err;
  auto store = Store();
  ASSERT_NE(store, nullptr);
  auto stored = store->Get(*creds::AccountId::Make("claude", creds::Scope::kTenant, "acme"));
  ASSERT_TRUE(stored) << stored.error().ToString();
  EXPECT_EQ(json::parse(*stored)["claudeAiOauth"]["refreshToken"], "standin-refresh-1-h77");
  EXPECT_FALSE(AnyFileHas(state_, "standin-refresh"));
  EXPECT_EQ(LiveFiles(), 0u);
  json logins = AuditRows("creds.login");
  ASSERT_EQ(logins.size(), 1u) << logins.dump();
  EXPECT_EQ(logins[0]["details"]["result"], "captured");
}

}  // namespace
}  // namespace ralph::ralphd

namespace ralph::ralphd {
namespace {

TEST_F(CredentialTest, ADaemonKilledWhileAJobHoldsAnAccountWritesItsLiveCopyBackOnRestart) {
  Seed(Global(), "standin-refresh-1-seed");
  uint64_t job = SubmitAgent("granted", "never");
  ASSERT_TRUE(WaitFor([&] { return ServerLog().size() == 1; })) << Read(server_ + "/log");
  // The job's refresh is in the live copy only.
  ASSERT_EQ(LiveFiles(), 1u);
  EXPECT_EQ(json::parse(*Store()->Get(Global()))["claudeAiOauth"]["refreshToken"],
            "standin-refresh-1-seed");
  StopDaemon(SIGKILL);
  StartDaemon(2, {"--agent-program", "claude=/opt/ralph-tests/ralph-login-standin",
                  "--creds-live-dir", live_});
  EXPECT_EQ(Show(job)["state"], "lost");
  // Written back before anything else ran, and nothing left in the clear.
  EXPECT_EQ(json::parse(*Store()->Get(Global()))["claudeAiOauth"]["refreshToken"],
            "standin-refresh-2-seed");
  EXPECT_EQ(LiveFiles(), 0u);
  json recovered = AuditRows("creds.recover");
  ASSERT_EQ(recovered.size(), 1u) << recovered.dump();
  EXPECT_EQ(recovered[0]["details"]["account"], "claude/global/default");
  EXPECT_EQ(recovered[0]["details"]["written_back"], true);
  // The next job presents the rotated token.
  uint64_t next = SubmitAgent("granted");
  EXPECT_EQ(WaitOver(next)["state"], "succeeded");
  EXPECT_EQ(ServerLog().back(), "standin-refresh-2-seed -> standin-refresh-3-seed");
}

}  // namespace
}  // namespace ralph::ralphd
