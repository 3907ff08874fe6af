// ralphd's performance targets, each next to a peer measured in the same run
// (docs/benchmarks.md keeps the figures):
//
//   ralphd_bench api [requests] [connections] [rounds]
//       GET /v1/status over mutual TLS with keep-alive (https_load.h) against
//       the real ralphd (--api-listen 127.0.0.1:0, a client paired the way
//       the tests pair) and against nginx serving the same JSON as a static
//       file with the device's certificate, TLS 1.3 and ssl_verify_client on
//       with the device CA; rounds alternate the two. Targets: requests/s
//       >= 0.5x nginx, p99 <= 2x nginx.
//   ralphd_bench submit [runs]
//       POST /v1/jobs of `/bin/echo hi` to its first job.output event on
//       GET /v1/events, against `ralph-sandbox run --no-network` of the same
//       command to its first stdout byte, interleaved. Target: median <= 1.5x.
//   ralphd_bench rss [jobs]
//       ralphd's VmRSS idle (no API, then with it), and with `jobs` jobs
//       running (`sleep`). Target: idle <= 16 MiB.
//   ralphd_bench all
//
// Run as root from the build tree (build/bin/ralphd_bench); nginx comes from
// the Debian package (scripts/setup.sh).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "https_load.h"
#include "services/ralphd/api/client.h"
#include "tests/support/bench_stats.h"
#include "tests/support/run_program.h"
#include "tests/support/wait_for.h"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using ralph::testing::Median;
using ralph::testing::ProgramStreams;
using ralph::testing::RunProgramStreams;
using ralph::testing::StartProgram;
using ralph::testing::StartServing;
using ralph::testing::WaitFor;
namespace api = ralph::ralphd::api;

std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void Write(const std::string& path, const std::string& text, mode_t mode = 0600) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd >= 0) {
    (void)!::write(fd, text.data(), text.size());
    ::close(fd);
  }
}
[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "ralphd_bench: %s\n", why.c_str());
  std::exit(1);
}
uint64_t RssKib(pid_t pid) {
  std::istringstream status(Read(fmt::format("/proc/{}/status", pid)));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}
// CPU seconds (user + system) of `pid` and its children listed by the kernel
// (nginx's workers), from /proc.
double CpuSeconds(pid_t pid) {
  double total = 0;
  std::vector<pid_t> pids = {pid};
  std::istringstream children(Read(fmt::format("/proc/{}/task/{}/children", pid, pid)));
  for (pid_t child; children >> child;) pids.push_back(child);
  for (pid_t p : pids) {
    std::string stat = Read(fmt::format("/proc/{}/stat", p));
    size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(stat.substr(paren + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    total += static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  return total;
}

std::string Load() {
  return Read("/proc/loadavg").substr(0, 14);
}

// A real ralphd on a temp state dir, with the test policy (a default
// profile that binds the host's /usr) over a merged-/usr base.
class Ralphd {
 public:
  Ralphd(std::string bin, std::string work, bool with_api, int max_running)
      : bin_(std::move(bin)), work_(std::move(work)) {
    RunProgramStreams({"sh", "-c",
                       fmt::format("mkdir -p {0}/base/usr {0}/base/etc && for l in bin lib lib64 "
                                   "sbin; do ln -sfn usr/$l {0}/base/$l; done",
                                   work_)});
    std::vector<std::string> argv = {
        bin_ + "/ralphd", "--state-dir",   state(),
        "--socket",       socket(),        "--job-root",
        work_ + "/base",  "--max-running", std::to_string(max_running)};
    if (with_api) {
      argv.push_back("--api-listen");
      argv.push_back("127.0.0.1:0");
    }
    std::string why;
    pid_ = StartServing(argv, socket(), &why);
    if (pid_ <= 0) Die(why);
    Write(work_ + "/policy.xml", R"(<policy format="1">
  <profile name="default">
    <limits memory="256MiB" pids="64" timeout="5m"/>
    <mount source="/usr" destination="/usr"/>
  </profile>
</policy>
)");
    ProgramStreams set = Ctl({"policy", "set", work_ + "/policy.xml"});
    if (set.exit != 0) Die("policy set: " + set.err);
  }
  ~Ralphd() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  // ralphctl WORD --socket S [--json] REST... (options after the first word).
  ProgramStreams Ctl(std::vector<std::string> args, bool json = false) {
    std::vector<std::string> options = {"--socket", socket()};
    if (json) options.push_back("--json");
    args.insert(args.begin() + 1, options.begin(), options.end());
    args.insert(args.begin(), bin_ + "/ralphctl");
    return RunProgramStreams(args);
  }
  std::string state() const { return work_ + "/var"; }
  std::string socket() const { return work_ + "/ralphd.sock"; }
  pid_t pid() const { return pid_; }

 private:
  std::string bin_, work_;
  pid_t pid_ = -1;
};

// Pairs like the tests: `ralphctl pair`, then the client library.
api::ClientCredentials Pair(Ralphd& ralphd) {
  ProgramStreams offer = ralphd.Ctl({"pair"}, /*json=*/true);
  json parsed = json::parse(offer.out, nullptr, false);
  if (offer.exit != 0 || parsed.is_discarded()) Die("ralphctl pair: " + offer.err);
  auto credentials = api::PairWithDevice(parsed.value("pairing", ""), "bench");
  if (!credentials) Die("pairing: " + credentials.error().ToString());
  return *credentials;
}

// nginx as an unprivileged temp instance on a free port: the same
// certificate, key and client verification as ralphd's API.
class Nginx {
 public:
  Nginx(const std::string& work, const std::string& identity, const std::string& body) {
    std::string dir = work + "/nginx";
    RunProgramStreams({"mkdir", "-p", dir + "/html/v1", dir + "/logs", dir + "/tmp"});
    RunProgramStreams({"chown", "-R", "nobody:nogroup", dir});
    Write(dir + "/html/v1/status", body, 0644);
    port_ = FreePort();
    std::string config = fmt::format(R"(worker_processes 2;
user nobody nogroup;
pid {0}/nginx.pid;
error_log {0}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {0}/tmp; proxy_temp_path {0}/tmp; fastcgi_temp_path {0}/tmp;
  uwsgi_temp_path {0}/tmp; scgi_temp_path {0}/tmp;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{1} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {2}/device.crt;
    ssl_certificate_key {2}/device.key;
    ssl_client_certificate {2}/ca.crt;
    ssl_verify_client on;
    root {0}/html;
    default_type application/json;
  }}
}}
)",
                                     dir, port_, identity);
    Write(dir + "/nginx.conf", config, 0644);
    pid_ = StartProgram({"/usr/sbin/nginx", "-p", dir, "-c", dir + "/nginx.conf", "-g",
                         "daemon off; master_process on;"});
    if (pid_ <= 0) Die("cannot start nginx");
    bool up = WaitFor([&] {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in address{.sin_family = AF_INET, .sin_port = htons(port_), .sin_addr = {}};
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
      ::close(fd);
      return ok;
    });
    if (!up) Die("nginx never listened: " + Read(dir + "/logs/error.log"));
  }
  ~Nginx() {
    ::kill(pid_, SIGQUIT);
    ::waitpid(pid_, nullptr, 0);
  }
  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  static uint16_t FreePort() {
    ProgramStreams run = RunProgramStreams(
        {"python3", "-c",
         "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"});
    return static_cast<uint16_t>(std::atoi(run.out.c_str()));
  }
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

void PrintLoad(const char* who, const ralph::bench::LoadResult& r, double cpu_seconds) {
  std::printf(
      "  %-6s %9.0f req/s  p50 %7.0f us  p90 %7.0f us  p99 %7.0f us  max %7.0f us  %5.0f us "
      "CPU/request  (%lu ok, %lu failed, %zu-byte body)\n",
      who, r.rps, r.p50_us, r.p90_us, r.p99_us, r.max_us,
      cpu_seconds * 1e6 / static_cast<double>(r.requests + r.failures),
      static_cast<unsigned long>(r.requests), static_cast<unsigned long>(r.failures),
      r.reply_bytes);
}

void Api(const std::string& bin, const std::string& work, uint64_t requests, int connections,
         int rounds) {
  std::printf(
      "api: GET /v1/status, %lu requests over %d keep-alive TLS 1.3 connections, 2 "
      "client threads (load %s)\n",
      static_cast<unsigned long>(requests), connections, Load().c_str());
  Ralphd ralphd(bin, work, /*with_api=*/true, 2);
  api::ClientCredentials credentials = Pair(ralphd);
  std::string identity = ralphd.state() + "/api/identity";
  Write(work + "/client.crt", credentials.cert_pem);
  Write(work + "/client.key", credentials.key_pem);
  uint16_t ralphd_port =
      static_cast<uint16_t>(std::atoi(Read(ralphd.state() + "/api/port").c_str()));
  // nginx serves what ralphd answers, byte for byte in size.
  auto connection =
      api::ApiConnection::Connect({.address = fmt::format("127.0.0.1:{}", ralphd_port),
                                   .device_spki = credentials.device_spki,
                                   .credentials = credentials});
  if (!connection) Die(connection.error().ToString());
  auto status = (*connection)->Request("GET", "/v1/status");
  if (!status || status->status != 200) Die("GET /v1/status failed");
  Nginx nginx(work, identity, status->body);
  ralph::bench::LoadOptions options{.cert_file = work + "/client.crt",
                                    .key_file = work + "/client.key",
                                    .connections = connections,
                                    .requests = requests};
  std::vector<double> ratio_rps, ratio_p99;
  for (int round = 0; round < rounds; ++round) {
    options.port = nginx.port();
    double cpu = CpuSeconds(nginx.pid());
    auto peer = ralph::bench::RunLoad(options);
    if (!peer) Die("nginx: " + peer.error().ToString());
    double peer_cpu = CpuSeconds(nginx.pid()) - cpu;
    options.port = ralphd_port;
    cpu = CpuSeconds(ralphd.pid());
    auto ours = ralph::bench::RunLoad(options);
    if (!ours) Die("ralphd: " + ours.error().ToString());
    double our_cpu = CpuSeconds(ralphd.pid()) - cpu;
    std::printf(" round %d\n", round + 1);
    PrintLoad("nginx", *peer, peer_cpu);
    PrintLoad("ralphd", *ours, our_cpu);
    ratio_rps.push_back(ours->rps / peer->rps);
    ratio_p99.push_back(ours->p99_us / peer->p99_us);
    std::printf("  ralphd/nginx: requests/s %.2fx (target >= 0.5), p99 %.2fx (target <= 2)\n",
                ratio_rps.back(), ratio_p99.back());
  }
  std::printf(" median of %d rounds: requests/s %.2fx, p99 %.2fx nginx (load %s)\n", rounds,
              Median(ratio_rps), Median(ratio_p99), Load().c_str());
}

// Milliseconds from fork to the first byte on the child's stdout.
double FirstByte(const std::vector<std::string>& argv) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) Die("pipe");
  auto start = Clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipe_fds[1], 1);
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  char byte;
  double ms = -1;
  if (::read(pipe_fds[0], &byte, 1) == 1) {
    ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  }
  char rest[256];
  while (::read(pipe_fds[0], rest, sizeof rest) > 0) {
  }
  ::close(pipe_fds[0]);
  ::waitpid(pid, nullptr, 0);
  return ms;
}

void Submit(const std::string& bin, const std::string& work, int runs) {
  std::printf(
      "submit: /bin/echo hi, submit to first output event (API, mutual TLS) vs "
      "ralph-sandbox run --no-network to first stdout byte, %d runs each, interleaved "
      "(load %s)\n",
      runs, Load().c_str());
  Ralphd ralphd(bin, work, /*with_api=*/true, 2);
  api::ClientCredentials credentials = Pair(ralphd);
  uint16_t port = static_cast<uint16_t>(std::atoi(Read(ralphd.state() + "/api/port").c_str()));
  api::ClientOptions client{.address = fmt::format("127.0.0.1:{}", port),
                            .device_spki = credentials.device_spki,
                            .credentials = credentials};
  auto requests = api::ApiConnection::Connect(client);
  auto events = api::ApiConnection::Connect(client);
  if (!requests || !events) Die("connecting to the API");
  auto status = (*requests)->Request("GET", "/v1/status");
  json parsed = json::parse(status->body);
  if (!(*events)->OpenEvents(parsed.value("last_event_seq", uint64_t{0}))) Die("events");
  std::string sandbox_state = work + "/sandbox-state";
  // Passable (not listable) by the jobs' mapped uids, like ralphd's own.
  ::mkdir(sandbox_state.c_str(), 0711);
  std::vector<std::string> peer = {bin + "/ralph-sandbox",
                                   "run",
                                   "--rootfs",
                                   work + "/base",
                                   "--ro-bind",
                                   "/usr:/usr",
                                   "--state-dir",
                                   sandbox_state,
                                   "--no-network",
                                   "--",
                                   "/bin/echo",
                                   "hi"};
  std::vector<double> ours, theirs;
  for (int run = 0; run < runs; ++run) {
    theirs.push_back(FirstByte(peer));
    auto start = Clock::now();
    auto submitted = (*requests)->Request("POST", "/v1/jobs", R"({"argv":["/bin/echo","hi"]})");
    if (!submitted || submitted->status != 200) Die("submit failed");
    uint64_t id = json::parse(submitted->body).value("id", uint64_t{0});
    while (true) {
      auto event = (*events)->NextEvent();
      if (!event) Die("event stream: " + event.error().ToString());
      if (event->type != "job.output") continue;
      json data = json::parse(event->data, nullptr, false);
      if (data.value("job", uint64_t{0}) == id) break;
    }
    ours.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    // The job's end, so runs do not overlap.
    WaitFor([&] {
      ProgramStreams show = ralphd.Ctl({"job", "show", std::to_string(id)}, /*json=*/true);
      return show.out.find("\"succeeded\"") != std::string::npos;
    });
  }
  double a = Median(ours), b = Median(theirs);
  std::printf("  ralphd submit -> first output event   median %7.2f ms\n", a);
  std::printf("  ralph-sandbox run -> first byte       median %7.2f ms\n", b);
  std::printf("  ratio %.2fx (target <= 1.5) (load %s)\n", a / b, Load().c_str());
}

void Rss(const std::string& bin, const std::string& work, int jobs) {
  std::printf("rss: ralphd VmRSS (load %s)\n", Load().c_str());
  {
    Ralphd ralphd(bin, work + "/noapi", /*with_api=*/false, 2);
    std::this_thread::sleep_for(std::chrono::seconds(1));
    std::printf("  idle, no API:   %6.1f MiB (target <= 16)\n", RssKib(ralphd.pid()) / 1024.0);
  }
  Ralphd ralphd(bin, work + "/api", /*with_api=*/true, jobs);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  uint64_t idle = RssKib(ralphd.pid());
  std::printf("  idle, with API: %6.1f MiB (target <= 16)\n", idle / 1024.0);
  for (int i = 0; i < jobs; ++i) {
    ProgramStreams run = ralphd.Ctl({"job", "run", "--detach", "--", "/bin/sleep", "3600"});
    if (run.exit != 0) Die("job run: " + run.err);
  }
  bool all = WaitFor(
      [&] {
        ProgramStreams status = ralphd.Ctl({"status"}, /*json=*/true);
        json parsed = json::parse(status.out, nullptr, false);
        return !parsed.is_discarded() && parsed["jobs"].value("running", 0) == jobs;
      },
      std::chrono::seconds(300));
  uint64_t busy = RssKib(ralphd.pid());
  std::printf("  %d jobs running%s: %6.1f MiB, %.0f KiB per job over idle\n", jobs,
              all ? "" : " (not all started)", busy / 1024.0,
              static_cast<double>(busy - std::min(busy, idle)) / jobs);
}

}  // namespace

int main(int argc, char** argv) {
  if (::geteuid() != 0) Die("run as root");
  // Each line as it is measured, also into a file.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string self = std::filesystem::canonical("/proc/self/exe").parent_path();
  std::string what = argc > 1 ? argv[1] : "all";
  auto arg = [&](int i, long fallback) { return argc > i ? std::atol(argv[i]) : fallback; };
  std::string work = fmt::format("/var/tmp/ralphd-bench-{}", ::getpid());
  ::mkdir(work.c_str(), 0755);
  if (what == "api" || what == "all") {
    Api(self, work + "/api", static_cast<uint64_t>(arg(2, 20000)), static_cast<int>(arg(3, 16)),
        static_cast<int>(arg(4, 3)));
  }
  if (what == "submit" || what == "all")
    Submit(self, work + "/submit", static_cast<int>(arg(2, 50)));
  if (what == "rss" || what == "all") Rss(self, work + "/rss", static_cast<int>(arg(2, 100)));
  RunProgramStreams(
      {"sh", "-c",
       fmt::format("grep -o ' {}/[^ ]*' /proc/self/mounts | sort -r | xargs -r umount "
                   "-l; rm -rf {}",
                   work, work)});
  return 0;
}
