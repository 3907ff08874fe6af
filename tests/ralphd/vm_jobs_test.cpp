// VM jobs through the real ralphd (--job-image, --vm-guest): real QEMU
// microVMs under TCG booting the guest image the build made
// (ralph_vm_guest_image), driven over ralphd's socket exactly as namespace
// jobs are. The same job spec as a namespace job and as a VM job gives the
// same output, exit status and record (but the `isolation` field); a VM
// job's pty takes input and resizes; cancel and the timeout end it; what a
// VM job cannot have yet (a workspace, a mount, a network, less isolation
// than its profile) is refused naming the field; a ralphd that cannot run
// VMs says why, in its status and its refusal; nothing of a VM job (QEMU,
// run directory, cgroup, mount) is left; a profile's pool boots ahead and
// hands each VM to one job; a daemon SIGKILLed mid-job leaves nothing
// once restarted.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "services/ralphd/commands.h"
#include "tests/support/run_program.h"
#include "tests/support/wait_for.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;
using ralph::testing::ProgramStreams;
using ralph::testing::RunProgramStreams;
using ralph::testing::WaitFor;
namespace fs = std::filesystem;

// A VM's boot under TCG on a loaded 2-core machine takes seconds to tens.
constexpr auto kVmJobLimit = std::chrono::minutes(5);

constexpr const char* kPolicy = R"(<policy format="1">
  <profile name="default">
    <limits memory="128MiB" pids="64" disk="32MiB" timeout="5m"/>
  </profile>
  <profile name="untrusted" isolation="vm">
    <limits memory="128MiB" pids="64" disk="32MiB" timeout="5m"/>
  </profile>
  <profile name="net">
    <limits memory="128MiB" disk="32MiB"/>
    <egress/>
  </profile>
  <profile name="mounts">
    <limits memory="128MiB" disk="32MiB"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
</policy>
)";

// One JSON line each way on a connection to ralphd's socket.
class Connection {
 public:
  explicit Connection(const std::string& socket) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{.sun_family = AF_UNIX, .sun_path = {}};
    socket.copy(address.sun_path, socket.size());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~Connection() {
    if (fd_ >= 0) ::close(fd_);
  }
  void Send(const json& frame) {
    std::string line = frame.dump() + "\n";
    ASSERT_EQ(::send(fd_, line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
  }
  json Call(const json& frame) {
    Send(frame);
    return Next();
  }
  // The next frame; null at the end.
  json Next() {
    std::string line;
    char c;
    while (::read(fd_, &c, 1) == 1 && c != '\n') line += c;
    if (line.empty()) return json();
    return json::parse(line, nullptr, false);
  }
  // Reads frames until the output collected holds `text`; false at the
  // end or another frame (kept in last_).
  bool AwaitOutput(std::string_view text) {
    while (output_.find(text) == std::string::npos) {
      last_ = Next();
      if (!last_.is_object() || !last_.contains("output")) return false;
      output_ += Base64Decode(last_["output"].value("data_base64", ""), "data").value_or("");
    }
    return true;
  }
  const std::string& output() const { return output_; }
  const json& last() const { return last_; }

 private:
  int fd_ = -1;
  std::string output_;
  json last_;
};

class VmJobsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u) << "ralphd's tests need root";
    ASSERT_EQ(::access("/usr/bin/qemu-system-x86_64", X_OK), 0)
        << "qemu-system-x86_64 missing (package qemu-system-x86)";
    ASSERT_EQ(::access("/usr/bin/mksquashfs", X_OK), 0) << "mksquashfs missing (squashfs-tools)";
    ASSERT_EQ(::access("/usr/bin/busybox", X_OK), 0) << "busybox missing (package busybox)";
    const char* build = std::getenv("RALPH_BINARY_DIR");
    ASSERT_NE(build, nullptr) << "run through ctest (RALPH_BINARY_DIR)";
    build_ = build;
    guest_dir_ = build_ + "/sandbox-vm-guest";
    ASSERT_TRUE(fs::exists(guest_dir_ + "/initrd.img"))
        << "build the target ralph_vm_guest_image first";
    suite_ = fmt::format("/tmp/ralphd-vm-test-{}", ::getpid());
    fs::create_directories(suite_ + "/base/bin");
    fs::create_directories(suite_ + "/base/etc");
    fs::create_directories(suite_ + "/base/work");
    fs::copy_file("/usr/bin/busybox", suite_ + "/base/bin/busybox");
    for (const char* applet :
         {"sh", "echo", "cat", "sleep", "stty", "ls", "id", "hostname", "true"}) {
      fs::create_symlink("busybox", suite_ + "/base/bin/" + applet);
    }
    std::ofstream(suite_ + "/base/etc/motd") << "a base file\n";
    image_ = suite_ + "/base.squashfs";
    ProgramStreams made = RunProgramStreams({"mksquashfs", suite_ + "/base", image_, "-noappend",
                                             "-quiet", "-no-progress", "-all-root"});
    ASSERT_EQ(made.exit, 0) << made.err;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(suite_, ec);
  }

  void SetUp() override {
    work_ = fmt::format("{}/case{}", suite_, counter_++);
    state_ = work_ + "/var";
    socket_ = work_ + "/ralphd.sock";
    fs::create_directories(work_);
    StartDaemon({"--job-image", image_, "--vm-guest", guest_dir_});
    std::ofstream(work_ + "/policy.xml") << kPolicy;
    ProgramStreams set = Ctl({"policy", "set", work_ + "/policy.xml"});
    ASSERT_EQ(set.exit, 0) << set.err;
  }

  void TearDown() override {
    StopDaemon();
    RunProgramStreams({"sh", "-c",
                       fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r "
                                   "umount -l; rm -rf {}",
                                   work_, work_)});
  }

  void StartDaemon(std::vector<std::string> extra) {
    std::vector<std::string> argv = {build_ + "/bin/ralphd", "--state-dir", state_, "--socket",
                                     socket_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string why;
    daemon_ = ralph::testing::StartServing(argv, socket_, &why);
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
    args.insert(args.begin() + 1, {"--socket", socket_, "--json"});
    args.insert(args.begin(), build_ + "/bin/ralphctl");
    return RunProgramStreams(args);
  }
  json CtlJson(std::vector<std::string> args) {
    ProgramStreams run = Ctl(std::move(args));
    EXPECT_EQ(run.exit, 0) << run.err;
    json out = json::parse(run.out, nullptr, false);
    return out.is_discarded() ? json::object() : out;
  }

  json Submit(const json& body) {
    Connection connection(socket_);
    return connection.Call({{"verb", "POST"}, {"path", "/v1/jobs"}, {"body", body}});
  }
  uint64_t SubmitOk(const json& body) {
    json reply = Submit(body);
    EXPECT_TRUE(reply.value("ok", false)) << reply.dump();
    return reply.value("ok", false) ? reply["body"]["id"].get<uint64_t>() : 0;
  }
  json Show(uint64_t id) { return CtlJson({"job", "show", std::to_string(id)}); }
  json WaitOver(uint64_t id) {
    json job;
    EXPECT_TRUE(WaitFor(
        [&] {
          job = Show(id);
          std::string state = job.value("state", "");
          return state != "queued" && state != "running" && state != "created" && !state.empty();
        },
        kVmJobLimit))
        << job.dump();
    return job;
  }
  // The stream's bytes (ralphctl writes them raw, --json or not).
  std::string Logs(uint64_t id, const char* stream) {
    return Ctl({"job", "logs", std::to_string(id), "--stream", stream}).out;
  }
  json AuditOf(uint64_t id, const std::string& type) {
    return CtlJson({"audit", "list", "--job", std::to_string(id), "--type", type});
  }

  // The daemon's QEMU processes (descendants of the daemon).
  std::set<pid_t> QemuPids() {
    std::set<pid_t> found;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream in(entry.path() / "cmdline");
      std::string cmdline(std::istreambuf_iterator<char>(in), {});
      std::string program = cmdline.substr(0, cmdline.find('\0'));
      if (program.find("qemu-system") != std::string::npos) {
        // The jail's QEMU names only jail paths; its parent chain leads to
        // the daemon. Any QEMU whose ancestor is the daemon is ours.
        for (pid_t pid = std::stoi(name); pid > 1;) {
          if (pid == daemon_) {
            found.insert(std::stoi(name));
            break;
          }
          std::ifstream stat(fmt::format("/proc/{}/stat", pid));
          std::string text(std::istreambuf_iterator<char>(stat), {});
          size_t paren = text.rfind(')');
          if (paren == std::string::npos) break;
          std::istringstream fields(text.substr(paren + 2));
          char state;
          fields >> state >> pid;
        }
      }
    }
    return found;
  }

  // What of the daemon's VMs is on the host: its QEMU processes, run
  // directories, its services' cgroups, mounts.
  std::string Leftovers() {
    std::string found;
    for (pid_t pid : QemuPids()) found += fmt::format("qemu {}; ", pid);
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(state_ + "/vm", ec)) {
      if (entry.path().filename().string().rfind("vm-", 0) == 0) {
        found += "run dir " + entry.path().string() + "; ";
      }
    }
    if (std::string cgroups = CgroupsOf(daemon_); !cgroups.empty()) found += "cgroups " + cgroups;
    std::ifstream mounts("/proc/self/mounts");
    for (std::string line; std::getline(mounts, line);) {
      if (line.find(" " + state_ + "/") != std::string::npos &&
          line.find("/images/") == std::string::npos) {
        found += "mount " + line + "; ";
      }
    }
    return found;
  }

  // Waits until the pool's one VM is booted and waiting; `status` is the
  // last status read.
  bool AwaitPooledVm(json& status) {
    return WaitFor(
        [&] {
          status = CtlJson({"status"});
          return status["vm"]["pools"][0]["waiting"] == 1;
        },
        kVmJobLimit);
  }

  // The test policy with a pool of one VM on the vm profile `untrusted`.
  void SetPooledPolicy() {
    std::string policy = kPolicy;
    const std::string profile = "<profile name=\"untrusted\" isolation=\"vm\">";
    policy.replace(policy.find(profile), profile.size(),
                   "<profile name=\"untrusted\" isolation=\"vm\" vm-pool=\"1\">");
    std::ofstream(work_ + "/pooled.xml") << policy;
    ProgramStreams set = Ctl({"policy", "set", work_ + "/pooled.xml"});
    ASSERT_EQ(set.exit, 0) << set.err;
  }

  // Stops the daemon (SIGTERM): none of `qemus` may outlive it, and none of
  // its run directories or its services' cgroups may stay.
  void StopAndExpectNothingLeft(const std::set<pid_t>& qemus) {
    pid_t daemon = daemon_;
    StopDaemon();
    for (pid_t pid : qemus) {
      std::ifstream cmdline(fmt::format("/proc/{}/cmdline", pid));
      std::string text(std::istreambuf_iterator<char>(cmdline), {});
      EXPECT_EQ(text.find("qemu-system"), std::string::npos)
          << "QEMU " << pid << " outlived ralphd";
    }
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(state_ + "/vm", ec)) {
      EXPECT_NE(entry.path().filename().string().rfind("vm-", 0), 0u) << entry.path();
    }
    EXPECT_EQ(CgroupsOf(daemon), "");
  }

  // The cgroups of ralphd `daemon`'s services (jobs' and pooled VMs').
  static std::string CgroupsOf(pid_t daemon) {
    return RunProgramStreams({"sh", "-c",
                              fmt::format("find /sys/fs/cgroup -mindepth 1 -type d -name "
                                          "'ralphd-*@{}.*' 2>/dev/null",
                                          daemon)})
        .out;
  }

  static inline std::string build_, guest_dir_, suite_, image_;
  static inline int counter_ = 0;
  std::string work_, state_, socket_;
  pid_t daemon_ = -1;
};

TEST_F(VmJobsTest, TheSameSpecGivesTheSameOutputAsANamespaceJobAndAVmJob) {
  json status = CtlJson({"status"});
  ASSERT_EQ(status["vm"]["available"], true) << status.dump();

  const json spec = {{"argv", {"sh", "-c", "echo out; cat /etc/motd; echo err >&2; id -u; exit 3"}},
                     {"limits", {{"memory_bytes", 64 << 20}}}};
  json as_namespaces = spec;
  as_namespaces["isolation"] = "namespaces";
  json as_vm = spec;
  as_vm["isolation"] = "vm";
  uint64_t ns_id = SubmitOk(as_namespaces);
  uint64_t vm_id = SubmitOk(as_vm);
  // A job under a vm profile is a VM job without asking.
  uint64_t profile_id = SubmitOk({{"argv", {"echo", "hello"}}, {"profile", "untrusted"}});
  ASSERT_TRUE(ns_id && vm_id && profile_id);

  json ns = WaitOver(ns_id);
  json vm = WaitOver(vm_id);
  EXPECT_EQ(ns["state"], "failed") << ns.dump();
  EXPECT_EQ(vm["state"], ns["state"]) << vm.dump();
  EXPECT_EQ(vm["exit_code"], 3);
  EXPECT_EQ(vm["exit_code"], ns["exit_code"]);
  EXPECT_EQ(vm["termination"], ns["termination"]);
  EXPECT_EQ(vm["reason"], ns["reason"]);
  EXPECT_EQ(ns["isolation"], "namespaces");
  EXPECT_EQ(vm["isolation"], "vm");
  EXPECT_EQ(Logs(ns_id, "stdout"), "out\na base file\n0\n");
  EXPECT_EQ(Logs(vm_id, "stdout"), Logs(ns_id, "stdout"));
  EXPECT_EQ(Logs(vm_id, "stderr"), "err\n");
  // The usage the guest measured, in the same fields.
  for (const char* field : {"wall_ms", "user_cpu_ms", "system_cpu_ms", "max_rss_kib",
                            "cgroup_cpu_ns", "memory_peak_bytes", "oom_kills"}) {
    EXPECT_TRUE(vm["usage"].contains(field)) << field << " " << vm.dump();
  }
  EXPECT_GT(vm["usage"]["wall_ms"].get<int64_t>(), 0) << vm.dump();
  EXPECT_GT(vm["usage"]["memory_peak_bytes"].get<int64_t>(), 0) << vm.dump();

  // The same audit rows: submitted (queued), each state, the files' record (which
  // says a VM job's files stay in its guest).
  for (uint64_t id : {ns_id, vm_id}) {
    EXPECT_EQ(AuditOf(id, "job.submit").size(), 1u) << id;
    std::vector<std::string> states;
    for (const json& row : AuditOf(id, "job.state")) {
      states.push_back(row["details"].value("state", ""));
    }
    EXPECT_EQ(states, (std::vector<std::string>{"running", "failed"})) << id;
    EXPECT_EQ(AuditOf(id, "job.files").size(), 1u) << id;
  }
  json files = AuditOf(vm_id, "job.files");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_NE(files[0]["details"].value("error", "").find("stay in its guest"), std::string::npos)
      << files.dump();

  json by_profile = WaitOver(profile_id);
  EXPECT_EQ(by_profile["state"], "succeeded") << by_profile.dump();
  EXPECT_EQ(by_profile["isolation"], "vm");
  EXPECT_EQ(Logs(profile_id, "stdout"), "hello\n");
  EXPECT_EQ(Leftovers(), "");
}

TEST_F(VmJobsTest, AVmJobsTerminalTakesInputAndResizes) {
  constexpr const char* kScript =
      "trap 'echo size:$(stty size)' WINCH; while :; do read l || continue; "
      "echo got:$l $(stty size); [ \"$l\" = quit ] && exit 7; done";
  uint64_t id = SubmitOk({{"argv", {"sh", "-c", kScript}},
                          {"isolation", "vm"},
                          {"tty", true},
                          {"columns", 100},
                          {"rows", 30}});
  ASSERT_NE(id, 0u);
  // Typed before the VM has booted: queued, then delivered in order.
  Connection attached(socket_);
  json reply = attached.Call(
      {{"verb", "GET"}, {"path", fmt::format("/v1/jobs/{}/terminal", id)}, {"attach", true}});
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  attached.Send({{"input_base64", Base64Encode("hello\n")}});
  ASSERT_TRUE(WaitFor([&] { return Show(id).value("state", "") == "running"; }, kVmJobLimit));
  ASSERT_TRUE(attached.AwaitOutput("got:hello 30 100"))
      << attached.output() << attached.last().dump();
  attached.Send({{"resize", {{"columns", 120}, {"rows", 40}}}});
  ASSERT_TRUE(attached.AwaitOutput("size:40 120")) << attached.output();
  attached.Send({{"input_base64", Base64Encode("quit\n")}});
  ASSERT_TRUE(attached.AwaitOutput("got:quit 40 120")) << attached.output();
  json closed = attached.Next();
  while (closed.is_object() && closed.contains("output")) closed = attached.Next();
  EXPECT_EQ(closed["closed"]["exit_status"], 7) << closed.dump();
  json job = WaitOver(id);
  EXPECT_EQ(job["exit_code"], 7) << job.dump();
  EXPECT_EQ(job["isolation"], "vm");
  EXPECT_EQ(Leftovers(), "");
}

TEST_F(VmJobsTest, CancelAndTimeoutEndAVmJob) {
  uint64_t cancelled =
      SubmitOk({{"argv", {"sh", "-c", "echo up; sleep 600"}}, {"isolation", "vm"}});
  uint64_t timed = SubmitOk({{"argv", {"sh", "-c", "echo up; sleep 600"}},
                             {"isolation", "vm"},
                             {"limits", {{"timeout_ms", 2000}}}});
  ASSERT_TRUE(cancelled && timed);
  // Cancel once its job runs in the guest (its first output is stored).
  ASSERT_TRUE(WaitFor([&] { return Logs(cancelled, "stdout") == "up\n"; }, kVmJobLimit));
  ProgramStreams cancel = Ctl({"job", "cancel", std::to_string(cancelled)});
  ASSERT_EQ(cancel.exit, 0) << cancel.err;
  json job = WaitOver(cancelled);
  EXPECT_EQ(job["state"], "cancelled") << job.dump();
  EXPECT_EQ(job["signal"], SIGKILL) << job.dump();
  json timeout = WaitOver(timed);
  EXPECT_EQ(timeout["state"], "timed-out") << timeout.dump();
  EXPECT_EQ(Logs(timed, "stdout"), "up\n");
  EXPECT_EQ(Leftovers(), "");
}

TEST_F(VmJobsTest, WhatAVmJobCannotHaveYetIsRefusedNamingTheField) {
  auto refused = [&](const json& body, std::string_view code, std::string_view text) {
    json reply = Submit(body);
    EXPECT_FALSE(reply.value("ok", true)) << reply.dump();
    EXPECT_EQ(reply["error"].value("code", ""), code) << reply.dump();
    std::string message = reply["error"].value("message", "");
    EXPECT_NE(message.find(text), std::string::npos) << message;
  };
  refused({{"argv", {"true"}}, {"isolation", "vm"}, {"profile", "net"}}, "unsupported",
          "network.enabled");
  refused({{"argv", {"true"}}, {"isolation", "vm"}, {"profile", "mounts"}}, "unsupported", "binds");
  refused({{"argv", {"true"}}, {"isolation", "namespaces"}, {"profile", "untrusted"}}, "refused",
          "isolation");
  // A workspace: the upload of a created VM job is refused, the job stays.
  uint64_t id = SubmitOk({{"argv", {"true"}}, {"isolation", "vm"}, {"start", false}});
  ASSERT_NE(id, 0u);
  ProgramStreams tar =
      RunProgramStreams({"sh", "-c", fmt::format("cd {} && echo x > f && tar cf ws.tar f", work_)});
  ASSERT_EQ(tar.exit, 0) << tar.err;
  std::ifstream in(work_ + "/ws.tar");
  std::string bytes(std::istreambuf_iterator<char>(in), {});
  Connection upload(socket_);
  json reply = upload.Call({{"verb", "PUT"},
                            {"path", fmt::format("/v1/jobs/{}/workspace", id)},
                            {"body_base64", Base64Encode(bytes)}});
  EXPECT_EQ(reply["error"].value("code", ""), "unsupported") << reply.dump();
  EXPECT_EQ(reply["error"].value("message", "").rfind("workspace: ", 0), 0u) << reply.dump();
  EXPECT_EQ(Show(id)["state"], "created");
  EXPECT_EQ(Show(id)["workspace_uploaded"], false);
}

TEST_F(VmJobsTest, ARalphdThatCannotRunVmsSaysWhy) {
  auto expect_refusal = [&](std::string_view why) {
    json status = CtlJson({"status"});
    EXPECT_EQ(status["vm"]["available"], false) << status.dump();
    EXPECT_NE(status["vm"].value("reason", "").find(why), std::string::npos) << status.dump();
    json reply = Submit({{"argv", {"true"}}, {"isolation", "vm"}});
    EXPECT_EQ(reply["error"].value("code", ""), "unsupported") << reply.dump();
    EXPECT_NE(reply["error"].value("message", "").find(why), std::string::npos) << reply.dump();
    // Namespace jobs run on.
    json job = WaitOver(SubmitOk({{"argv", {"true"}}}));
    EXPECT_EQ(job["state"], "succeeded") << job.dump();
  };
  StopDaemon();
  StartDaemon({"--job-image", image_});
  expect_refusal("--vm-guest");
  StopDaemon();
  StartDaemon({"--job-image", image_, "--vm-guest", work_ + "/no-such-guest"});
  expect_refusal("no-such-guest/vmlinuz");
  StopDaemon();
  fs::create_directories(work_ + "/root/bin");
  fs::copy_file("/usr/bin/busybox", work_ + "/root/bin/busybox");
  fs::create_symlink("busybox", work_ + "/root/bin/true");
  StartDaemon({"--job-root", work_ + "/root", "--vm-guest", guest_dir_});
  expect_refusal("--job-image");
}

TEST_F(VmJobsTest, APolicysPoolBootsAheadGivesEachVmOneJobAndIsDrainedAtShutdown) {
  ASSERT_NO_FATAL_FAILURE(SetPooledPolicy());
  // The loop serves on while the pool boots (off its thread).
  json status = CtlJson({"status"});
  ASSERT_EQ(status["vm"]["pools"].size(), 1u) << status.dump();
  EXPECT_EQ(status["vm"]["pools"][0]["profile"], "untrusted");
  EXPECT_EQ(status["vm"]["pools"][0]["size"], 1);
  ASSERT_TRUE(AwaitPooledVm(status)) << status.dump();
  std::set<pid_t> pooled = QemuPids();
  ASSERT_EQ(pooled.size(), 1u);

  // A job of the profile takes the waiting VM: its QEMU is the pooled one,
  // gone with the job; the pool boots another, never the used one again.
  uint64_t id =
      SubmitOk({{"argv", {"sh", "-c", "echo pooled; sleep 600"}}, {"profile", "untrusted"}});
  ASSERT_NE(id, 0u);
  ASSERT_TRUE(WaitFor([&] { return Logs(id, "stdout") == "pooled\n"; }, kVmJobLimit));
  status = CtlJson({"status"});
  EXPECT_EQ(status["vm"]["pools"][0]["taken"], 1) << status.dump();
  EXPECT_EQ(QemuPids().count(*pooled.begin()), 1u) << "the job runs in the pooled VM";
  ASSERT_EQ(Ctl({"job", "cancel", std::to_string(id)}).exit, 0);
  EXPECT_EQ(WaitOver(id)["state"], "cancelled");
  ASSERT_TRUE(AwaitPooledVm(status)) << status.dump();
  EXPECT_EQ(status["vm"]["pools"][0]["booted"], 2) << status.dump();
  std::set<pid_t> refilled = QemuPids();
  ASSERT_EQ(refilled.size(), 1u);
  EXPECT_EQ(refilled.count(*pooled.begin()), 0u) << "a used VM is never reused";

  // A plain job asking for vm is not the profile's: it boots its own and
  // leaves the pool alone.
  json plain = WaitOver(SubmitOk({{"argv", {"echo", "own"}}, {"isolation", "vm"}}));
  EXPECT_EQ(plain["state"], "succeeded") << plain.dump();
  EXPECT_EQ(CtlJson({"status"})["vm"]["pools"][0]["taken"], 1);

  // Shutdown drains it: no QEMU, run directory or cgroup of the daemon.
  StopAndExpectNothingLeft(refilled);
}

// RALPH_VM_JOBS_IN_A_ROW VM jobs one after another (default 5: each costs
// a TCG boot, seconds here; the issue's 100 are `RALPH_VM_JOBS_IN_A_ROW=100
// ctest -R ralphd_vm_test`), from a pool of one, then the daemon stops:
// no QEMU, run directory, cgroup or mount of them is left (a VM job has
// no network yet: QEMU's jail has an anonymous netns that dies with it).
TEST_F(VmJobsTest, VmJobsInARowLeaveNothingBehind) {
  size_t count = 5;
  if (const char* text = std::getenv("RALPH_VM_JOBS_IN_A_ROW")) count = std::stoul(text);
  ASSERT_NO_FATAL_FAILURE(SetPooledPolicy());
  for (size_t i = 0; i < count; ++i) {
    uint64_t id =
        SubmitOk({{"argv", {"sh", "-c", fmt::format("echo job {}", i)}}, {"profile", "untrusted"}});
    ASSERT_NE(id, 0u);
    json job = WaitOver(id);
    ASSERT_EQ(job["state"], "succeeded") << i << " " << job.dump();
    ASSERT_EQ(Logs(id, "stdout"), fmt::format("job {}\n", i));
  }
  json status = CtlJson({"status"});
  EXPECT_GE(status["vm"]["pools"][0]["taken"].get<size_t>(), 1u) << status.dump();
  // Only the pool's one waiting VM (and its run directory) is there.
  EXPECT_LE(QemuPids().size(), 1u);
  StopAndExpectNothingLeft(QemuPids());
  std::ifstream mounts("/proc/self/mounts");
  for (std::string line; std::getline(mounts, line);) {
    EXPECT_EQ(line.find(" " + state_ + "/vm"), std::string::npos) << line;
  }
}

// ralphd SIGKILLed with a VM job running and a pooled VM waiting: their
// QEMUs die with it (the jails' parent-death signal); the next ralphd marks
// the job lost and sweeps the dead one's run directories and its jails'
// cgroups, the pool's included (no job record names those).
TEST_F(VmJobsTest, ADaemonKilledMidJobLeavesNothingOnceRestarted) {
  ASSERT_NO_FATAL_FAILURE(SetPooledPolicy());
  json status;
  ASSERT_TRUE(AwaitPooledVm(status)) << status.dump();
  uint64_t id = SubmitOk({{"argv", {"sh", "-c", "echo up; sleep 600"}}, {"isolation", "vm"}});
  ASSERT_NE(id, 0u);
  ASSERT_TRUE(WaitFor([&] { return Logs(id, "stdout") == "up\n"; }, kVmJobLimit));
  std::set<pid_t> qemus = QemuPids();
  ASSERT_EQ(qemus.size(), 2u);  // the job's and the pool's
  const pid_t dead = daemon_;
  ::kill(daemon_, SIGKILL);
  int wait_status = 0;
  ::waitpid(daemon_, &wait_status, 0);
  daemon_ = -1;
  EXPECT_TRUE(WaitFor([&] {
    for (pid_t pid : qemus) {
      std::ifstream cmdline(fmt::format("/proc/{}/cmdline", pid));
      std::string text(std::istreambuf_iterator<char>(cmdline), {});
      if (text.find("qemu-system") != std::string::npos) return false;
    }
    return true;
  })) << "a QEMU outlived its ralphd";
  auto dead_cgroups = [&] { return CgroupsOf(dead); };
  // What the restart must sweep: the job's jail and the pool's.
  EXPECT_NE(dead_cgroups().find("ralphd-job"), std::string::npos) << dead_cgroups();
  EXPECT_NE(dead_cgroups().find("ralphd-pool"), std::string::npos) << dead_cgroups();

  StartDaemon({"--job-image", image_, "--vm-guest", guest_dir_});
  json job = Show(id);
  EXPECT_EQ(job["state"], "lost") << job.dump();
  EXPECT_EQ(dead_cgroups(), "");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(state_ + "/vm", ec)) {
    EXPECT_NE(entry.path().filename().string().rfind(fmt::format("vm-{}-", dead), 0), 0u)
        << entry.path();
  }
}

}  // namespace
}  // namespace ralph::ralphd
