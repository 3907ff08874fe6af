#include "test_topology.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ldns/ldns.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace ralph::sandbox::testing {
namespace {

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "test topology: %s: %s\n", what.c_str(), strerror(errno));
  _exit(99);
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string ReadAll(int fd) {
  std::string out;
  char buffer[4096];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

socklen_t MakeAddress(const std::string& text, uint16_t port, sockaddr_storage& storage) {
  std::memset(&storage, 0, sizeof(storage));
  auto* in = reinterpret_cast<sockaddr_in*>(&storage);
  if (inet_pton(AF_INET, text.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    return sizeof(sockaddr_in);
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET6, text.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return sizeof(sockaddr_in6);
  }
  return 0;
}

std::string AddressText(const sockaddr_storage& storage) {
  char buffer[INET6_ADDRSTRLEN] = {};
  if (storage.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, buffer,
              sizeof(buffer));
  } else {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], buffer, sizeof(buffer));
    } else {
      inet_ntop(AF_INET6, &in6->sin6_addr, buffer, sizeof(buffer));
    }
  }
  return buffer;
}

uint16_t PortOf(const sockaddr_storage& storage) {
  return ntohs(storage.ss_family == AF_INET
                   ? reinterpret_cast<const sockaddr_in*>(&storage)->sin_port
                   : reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
}

int DualStackSocket(int type, uint16_t port) {
  int fd = socket(AF_INET6, type | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("world socket");
  int zero = 0;
  int one = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in6 any{};
  any.sin6_family = AF_INET6;
  any.sin6_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0) Die("world bind");
  if (type == SOCK_STREAM && listen(fd, 64) != 0) Die("world listen");
  return fd;
}

std::string RcodeName(int rcode) {
  switch (rcode) {
    case 0: return "NOERROR";
    case 1: return "FORMERR";
    case 2: return "SERVFAIL";
    case 3: return "NXDOMAIN";
    case 4: return "NOTIMP";
    case 5: return "REFUSED";
  }
  return fmt::format("RCODE{}", rcode);
}

// The fake upstream resolver's zone.
std::vector<std::string> WorldRecords(const std::string& name, ldns_rr_type type) {
  if (name == "api.allowed.test." && type == LDNS_RR_TYPE_A) {
    return {"api.allowed.test. 2 IN A 203.0.113.10"};
  }
  if (name == "api.allowed.test." && type == LDNS_RR_TYPE_AAAA) {
    return {"api.allowed.test. 2 IN AAAA 2001:db8:1::10"};
  }
  if (name == "meta.allowed.test." && type == LDNS_RR_TYPE_A) {
    return {"meta.allowed.test. 60 IN A 169.254.169.254"};
  }
  if (name == fmt::format("{}.", kGitHostName) && type == LDNS_RR_TYPE_A) {
    return {fmt::format("{}. 60 IN A {}", kGitHostName, kGitHostAddress)};
  }
  // The coding agents' API hosts, each vendor on its own test host (the
  // agent egress tests: a job reaches its own tool's host, not another's).
  for (const AgentHost& host : kAgentHosts) {
    if (name == fmt::format("{}.", host.name) && type == LDNS_RR_TYPE_A) {
      return {fmt::format("{}. 60 IN A {}", host.name, host.address)};
    }
  }
  return {};
}

void WorldAnswerDns(int fd, int log_fd) {
  uint8_t buffer[4096];
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  ssize_t n =
      recvfrom(fd, buffer, sizeof(buffer), 0, reinterpret_cast<sockaddr*>(&peer), &peer_len);
  if (n <= 0) return;
  ldns_pkt* query = nullptr;
  if (ldns_wire2pkt(&query, buffer, static_cast<size_t>(n)) != LDNS_STATUS_OK) {
    WriteAll(log_fd, "dns <malformed>\n");
    return;
  }
  ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(query), 0);
  char* name = question ? ldns_rdf2str(ldns_rr_owner(question)) : nullptr;
  std::string name_text = name ? name : "";
  free(name);
  ldns_rr_type type = question ? ldns_rr_get_type(question) : LDNS_RR_TYPE_A;
  WriteAll(log_fd, fmt::format("dns {} {}\n", name_text, static_cast<int>(type)));
  ldns_pkt_set_qr(query, true);
  ldns_pkt_set_aa(query, true);
  std::vector<std::string> records = WorldRecords(name_text, type);
  if (records.empty()) ldns_pkt_set_rcode(query, LDNS_RCODE_NXDOMAIN);
  for (const std::string& text : records) {
    ldns_rr* rr = nullptr;
    if (ldns_rr_new_frm_str(&rr, text.c_str(), 0, nullptr, nullptr) == LDNS_STATUS_OK) {
      ldns_pkt_push_rr(query, LDNS_SECTION_ANSWER, rr);
    }
  }
  uint8_t* wire = nullptr;
  size_t size = 0;
  if (ldns_pkt2wire(&wire, query, &size) == LDNS_STATUS_OK) {
    if (sendto(fd, wire, size, 0, reinterpret_cast<sockaddr*>(&peer), peer_len) < 0) {
      WriteAll(log_fd, fmt::format("dns-send-failed {}\n", strerror(errno)));
    }
    free(wire);
  } else {
    WriteAll(log_fd, "dns-encode-failed\n");
  }
  ldns_pkt_free(query);
}

[[noreturn]] void WorldMain(int ready_fd, int go_fd, const std::string& log_path) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (unshare(CLONE_NEWNET) != 0) Die("world unshare");
  int log_fd = open(log_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (log_fd < 0) Die("world log");
  std::vector<pollfd> fds;
  for (uint16_t port : {22, 80, 443, 8080}) {
    fds.push_back({DualStackSocket(SOCK_STREAM, port), POLLIN, 0});
  }
  WriteAll(ready_fd, "r");
  // Bound to the resolver's own address, once it exists: a wildcard UDP
  // socket answers from whatever source routing picks, and resolvers (ours
  // included) drop answers that do not come from the address they asked.
  char go = 0;
  if (read(go_fd, &go, 1) != 1) Die("world: no go");
  close(go_fd);
  int dns = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in dns_address{};
  dns_address.sin_family = AF_INET;
  dns_address.sin_port = htons(53);
  inet_pton(AF_INET, "198.51.100.53", &dns_address.sin_addr);
  if (bind(dns, reinterpret_cast<sockaddr*>(&dns_address), sizeof(dns_address)) != 0) {
    Die("world bind dns");
  }
  fds.push_back({dns, POLLIN, 0});
  WriteAll(ready_fd, "g");
  close(ready_fd);
  for (;;) {
    if (poll(fds.data(), fds.size(), -1) < 0) continue;
    for (pollfd& p : fds) {
      if (!(p.revents & POLLIN)) continue;
      if (p.fd == dns) {
        WorldAnswerDns(dns, log_fd);
        continue;
      }
      sockaddr_storage peer{};
      socklen_t peer_len = sizeof(peer);
      int client = accept4(p.fd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_CLOEXEC);
      if (client < 0) continue;
      sockaddr_storage local{};
      socklen_t local_len = sizeof(local);
      getsockname(client, reinterpret_cast<sockaddr*>(&local), &local_len);
      WriteAll(log_fd, fmt::format("tcp {} {} from {}\n", AddressText(local), PortOf(local),
                                   AddressText(peer)));
      WriteAll(client, "hello\n");
      close(client);
    }
  }
}

void CloseAllExcept(std::initializer_list<int> keep) {
  std::vector<int> fds;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') fds.push_back(atoi(entry->d_name));
    }
    closedir(dir);
  }
  for (int fd : fds) {
    if (fd > 2 && std::find(keep.begin(), keep.end(), fd) == keep.end()) close(fd);
  }
}

}  // namespace

void EnterPrivateNetns() {
  if (geteuid() != 0) {
    fprintf(stderr, "sandbox_net tests need root (network namespaces, nftables)\n");
    _exit(1);
  }
  if (unshare(CLONE_NEWNET) != 0) Die("unshare(CLONE_NEWNET) for the test host");
  if (Shell("ip link set lo up") != 0) {
    fprintf(stderr, "`ip` failed: the tests need iproute2 and nftables (scripts/setup.sh)\n");
    _exit(1);
  }
}

int Shell(const std::string& command) {
  int status = system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ShellOutput(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "re");
  if (!pipe) return out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  return out;
}

World* World::Start() {
  auto* world = new World();
  world->log_path_ = fmt::format("/tmp/ralph-net-world-{}.log", getpid());
  world->veth_ = fmt::format("wv{}", getpid());
  int log_fd = open(world->log_path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (log_fd < 0) Die("creating the world log");
  close(log_fd);
  int ready[2];
  int go[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0) Die("pipe");
  pid_t pid = fork();
  if (pid < 0) Die("fork world");
  if (pid == 0) {
    close(ready[0]);
    close(go[1]);
    WorldMain(ready[1], go[0], world->log_path_);
  }
  close(ready[1]);
  close(go[0]);
  world->pid_ = pid;
  char ready_byte = 0;
  if (read(ready[0], &ready_byte, 1) != 1 || ready_byte != 'r') Die("world did not start");

  const std::string& v = world->veth_;
  std::string in_world = fmt::format("nsenter -t {} -n", pid);
  std::vector<std::string> commands = {
      fmt::format("ip link add {} type veth peer name eth0 netns {}", v, pid),
      fmt::format("ip addr add 192.0.2.1/24 dev {}", v),
      fmt::format("ip -6 addr add 2001:db8:ffff::1/64 dev {} nodad", v),
      fmt::format("ip link set {} up", v),
      in_world + " ip link set lo up",
      in_world + " ip link set eth0 up",
      in_world + " ip addr add 192.0.2.2/24 dev eth0",
      in_world + " ip -6 addr add 2001:db8:ffff::2/64 dev eth0 nodad",
      in_world + " ip route add default via 192.0.2.1",
      in_world + " ip -6 route add default via 2001:db8:ffff::1",
  };
  for (const char* address : {"203.0.113.10", "203.0.113.20", "198.51.100.53", "169.254.169.254",
                              "100.100.100.200", "10.9.9.9", kGitHostAddress}) {
    commands.push_back(fmt::format("{} ip addr add {}/32 dev lo", in_world, address));
  }
  for (const AgentHost& host : kAgentHosts) {
    std::string add = fmt::format("{} ip addr add {}/32 dev lo", in_world, host.address);
    if (std::find(commands.begin(), commands.end(), add) == commands.end()) commands.push_back(add);
  }
  for (const char* address : {"2001:db8:1::10", "2001:db8:1::20", "fd00:ec2::254"}) {
    commands.push_back(fmt::format("{} ip -6 addr add {}/128 dev lo", in_world, address));
  }
  for (const char* prefix : {"203.0.113.0/24", "198.51.100.0/24", "169.254.169.254/32",
                             "100.100.100.200/32", "10.9.9.0/24"}) {
    commands.push_back(fmt::format("ip route add {} via 192.0.2.2", prefix));
  }
  for (const char* prefix : {"2001:db8:1::/64", "fd00:ec2::/64"}) {
    commands.push_back(fmt::format("ip -6 route add {} via 2001:db8:ffff::2", prefix));
  }
  for (const std::string& command : commands) {
    if (Shell(command) != 0) Die("world setup: " + command);
  }
  WriteAll(go[1], "g");
  close(go[1]);
  if (ReadAll(ready[0]) != "g") Die("world DNS did not start");
  close(ready[0]);
  return world;
}

World::~World() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  unlink(log_path_.c_str());
}

std::vector<std::string> World::Log() const {
  std::ifstream in(log_path_);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

void World::ClearLog() {
  // The world appends with O_APPEND, so truncating here is safe.
  if (truncate(log_path_.c_str(), 0) != 0) Die("truncating the world log");
}

pid_t World::Spawn(const std::string& command) const {
  std::string target = std::to_string(pid_);
  pid_t pid = fork();
  if (pid < 0) Die("fork");
  if (pid == 0) {
    execlp("nsenter", "nsenter", "-t", target.c_str(), "-n", "sh", "-c", command.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

bool World::SawAny(const std::string& needle) const {
  for (const std::string& line : Log()) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

std::string ProbeConnect(const std::string& address, uint16_t port) {
  sockaddr_storage storage;
  socklen_t len = MakeAddress(address, port, storage);
  if (len == 0) return "failed:bad address";
  int fd = socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fmt::format("failed:socket {}", strerror(errno));
  if (connect(fd, reinterpret_cast<sockaddr*>(&storage), len) != 0 && errno != EINPROGRESS) {
    std::string out = fmt::format("failed:connect {}", strerror(errno));
    close(fd);
    return out;
  }
  pollfd p{fd, POLLOUT, 0};
  if (poll(&p, 1, 1500) != 1) {
    close(fd);
    return "failed:timeout";
  }
  int error = 0;
  socklen_t error_len = sizeof(error);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_len);
  if (error != 0) {
    close(fd);
    return fmt::format("failed:connect {}", strerror(error));
  }
  p = {fd, POLLIN, 0};
  std::string data;
  if (poll(&p, 1, 1500) == 1) {
    char buffer[64];
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) data.assign(buffer, static_cast<size_t>(n));
  }
  close(fd);
  while (!data.empty() && data.back() == '\n') data.pop_back();
  return "connected:" + data;
}

std::string ProbeResolve(const std::string& server, const std::string& name, int type, bool tcp) {
  ldns_pkt* query = nullptr;
  if (ldns_pkt_query_new_frm_str(&query, name.c_str(), static_cast<ldns_rr_type>(type),
                                 LDNS_RR_CLASS_IN, LDNS_RD) != LDNS_STATUS_OK) {
    return "failed:building the query";
  }
  ldns_pkt_set_id(query, 0x4242);
  uint8_t* wire = nullptr;
  size_t size = 0;
  ldns_pkt2wire(&wire, query, &size);
  ldns_pkt_free(query);
  std::string message(reinterpret_cast<char*>(wire), size);
  free(wire);

  sockaddr_storage storage;
  socklen_t len = MakeAddress(server, 53, storage);
  int fd = socket(storage.ss_family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
  timeval timeout{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&storage), len) != 0) {
    std::string out = fmt::format("failed:connect {}", strerror(errno));
    close(fd);
    return out;
  }
  std::string answer;
  if (tcp) {
    std::string framed;
    framed.push_back(static_cast<char>(size >> 8));
    framed.push_back(static_cast<char>(size & 0xff));
    framed += message;
    WriteAll(fd, framed);
    uint8_t length[2];
    if (recv(fd, length, 2, MSG_WAITALL) != 2) {
      close(fd);
      return "failed:no answer";
    }
    answer.resize(static_cast<size_t>(length[0] << 8 | length[1]));
    if (recv(fd, answer.data(), answer.size(), MSG_WAITALL) !=
        static_cast<ssize_t>(answer.size())) {
      close(fd);
      return "failed:short answer";
    }
  } else {
    send(fd, message.data(), message.size(), 0);
    char buffer[4096];
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) {
      close(fd);
      return "failed:no answer";
    }
    answer.assign(buffer, static_cast<size_t>(n));
  }
  close(fd);
  ldns_pkt* pkt = nullptr;
  if (ldns_wire2pkt(&pkt, reinterpret_cast<const uint8_t*>(answer.data()), answer.size()) !=
      LDNS_STATUS_OK) {
    return "failed:unparsable answer";
  }
  std::string out = "rcode:" + RcodeName(ldns_pkt_get_rcode(pkt));
  if (ldns_pkt_id(pkt) != 0x4242) out += " wrong-id";
  ldns_rr_list* records = ldns_pkt_answer(pkt);
  for (size_t i = 0; i < ldns_rr_list_rr_count(records); ++i) {
    ldns_rr* rr = ldns_rr_list_rr(records, i);
    ldns_rr_type record_type = ldns_rr_get_type(rr);
    if (record_type != LDNS_RR_TYPE_A && record_type != LDNS_RR_TYPE_AAAA) continue;
    char* text = ldns_rdf2str(ldns_rr_rdf(rr, 0));
    out += fmt::format(" {} {}", record_type == LDNS_RR_TYPE_A ? "A" : "AAAA", text);
    free(text);
  }
  ldns_pkt_free(pkt);
  return out;
}

std::string ProbeUdpFlood(const std::string& address, uint16_t port, int count) {
  sockaddr_storage storage;
  socklen_t len = MakeAddress(address, port, storage);
  int fd = socket(storage.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fmt::format("failed:socket {}", strerror(errno));
  int sent = 0;
  for (int i = 0; i < count; ++i) {
    if (sendto(fd, "x", 1, 0, reinterpret_cast<sockaddr*>(&storage), len) == 1) ++sent;
  }
  close(fd);
  return fmt::format("sent {}", sent);
}

std::string ProbePing(const std::string& address) {
  sockaddr_storage storage;
  socklen_t len = MakeAddress(address, 0, storage);
  bool v4 = storage.ss_family == AF_INET;
  int fd = socket(storage.ss_family, SOCK_RAW | SOCK_CLOEXEC,
                  v4 ? static_cast<int>(IPPROTO_ICMP) : static_cast<int>(IPPROTO_ICMPV6));
  if (fd < 0) return fmt::format("failed:raw socket {}", strerror(errno));
  uint8_t packet[16] = {};
  packet[0] = v4 ? ICMP_ECHO : ICMP6_ECHO_REQUEST;
  packet[4] = 0x12;  // id
  packet[5] = 0x34;
  packet[7] = 1;  // sequence
  if (v4) {
    // The ICMPv4 checksum is ours to compute; the kernel fills ICMPv6's.
    uint32_t sum = 0;
    for (size_t i = 0; i < sizeof(packet); i += 2) sum += (packet[i] << 8) | packet[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    uint16_t checksum = static_cast<uint16_t>(~sum);
    packet[2] = static_cast<uint8_t>(checksum >> 8);
    packet[3] = static_cast<uint8_t>(checksum & 0xff);
  }
  if (sendto(fd, packet, sizeof(packet), 0, reinterpret_cast<sockaddr*>(&storage), len) < 0) {
    std::string out = fmt::format("failed:sendto {}", strerror(errno));
    close(fd);
    return out;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) != 1) continue;
    uint8_t reply[1500];
    ssize_t n = recv(fd, reply, sizeof(reply), 0);
    if (n <= 0) continue;
    // IPv4 raw sockets deliver the IP header; ICMPv6 ones do not.
    size_t offset = v4 ? static_cast<size_t>(reply[0] & 0x0f) * 4 : 0;
    if (static_cast<size_t>(n) <= offset) continue;
    if (reply[offset] == (v4 ? ICMP_ECHOREPLY : ICMP6_ECHO_REPLY)) {
      close(fd);
      return "reply";
    }
  }
  close(fd);
  return "no-reply";
}

JobProcess JobProcess::Fork(std::function<std::string(const JobContext&)> probe) {
  int go[2];
  int out[2];
  if (pipe2(go, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) Die("pipe");
  pid_t pid = fork();
  if (pid < 0) Die("fork job");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // Without exec, O_CLOEXEC does nothing: drop every inherited fd (other
    // jobs' pipes among them, which would keep their readers from EOF).
    CloseAllExcept({go[0], out[1]});
    if (unshare(CLONE_NEWNET) != 0) _exit(98);
    WriteAll(out[1], "r");
    std::string context_text = ReadAll(go[0]);
    if (context_text.empty()) _exit(0);  // killed before running
    std::istringstream words(context_text);
    JobContext context;
    words >> context.resolver_v4 >> context.resolver_v6;
    WriteAll(out[1], probe(context));
    _exit(0);
  }
  close(go[0]);
  close(out[1]);
  JobProcess job;
  job.pid_ = pid;
  job.go_fd_ = go[1];
  job.out_fd_ = out[0];
  char ready = 0;
  if (read(job.out_fd_, &ready, 1) != 1 || ready != 'r') Die("job did not start");
  return job;
}

JobProcess::JobProcess(JobProcess&& other) noexcept
    : pid_(other.pid_), go_fd_(other.go_fd_), out_fd_(other.out_fd_) {
  other.pid_ = -1;
  other.go_fd_ = -1;
  other.out_fd_ = -1;
}

JobProcess::~JobProcess() {
  Kill();
}

std::string JobProcess::Go(const JobContext& context) {
  WriteAll(go_fd_, fmt::format("{} {}\n", context.resolver_v4,
                               context.resolver_v6.empty() ? "-" : context.resolver_v6));
  close(go_fd_);
  go_fd_ = -1;
  std::string output = ReadAll(out_fd_);
  close(out_fd_);
  out_fd_ = -1;
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
  return output;
}

void JobProcess::Kill() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  if (go_fd_ >= 0) close(go_fd_);
  if (out_fd_ >= 0) close(out_fd_);
  go_fd_ = out_fd_ = -1;
}

void RecordingSink::OnNetEvent(const NetEvent& event) {
  std::lock_guard lock(mutex_);
  events_.push_back(event);
  changed_.notify_all();
}

bool RecordingSink::WaitFor(const std::function<bool(const NetEvent&)>& match) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, std::chrono::seconds(5), [&] {
    for (const NetEvent& event : events_) {
      if (match(event)) return true;
    }
    return false;
  });
}

std::vector<NetEvent> RecordingSink::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

std::string RecordingSink::Dump() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const NetEvent& e : events_) {
    out += fmt::format("  [{}] {} {}:{} proto={} {}\n", e.job_id,
                       e.verdict == NetVerdict::kAllowed ? "allowed" : "denied", e.destination,
                       e.port, static_cast<int>(e.protocol), e.reason);
  }
  return out;
}

ResourceCounts CountResources() {
  ResourceCounts counts;
  if (struct if_nameindex* list = if_nameindex()) {
    for (struct if_nameindex* entry = list; entry->if_index != 0; ++entry) ++counts.interfaces;
    if_freenameindex(list);
  }
  std::istringstream tables(ShellOutput("nft list tables"));
  std::string line;
  while (std::getline(tables, line)) {
    if (line.rfind("table ", 0) == 0) ++counts.nft_tables;
  }
  char own[64] = {};
  if (readlink("/proc/thread-self/ns/net", own, sizeof(own) - 1) < 0) own[0] = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      ++counts.fds;
      char target[256] = {};
      std::string path = fmt::format("/proc/self/fd/{}", entry->d_name);
      if (readlink(path.c_str(), target, sizeof(target) - 1) > 0 &&
          std::string_view(target).starts_with("net:[") && std::string_view(target) != own) {
        ++counts.foreign_netns_refs;
      }
    }
    closedir(dir);
    --counts.fds;  // the directory being read
  }
  if (DIR* dir = opendir("/proc/self/task")) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      ++counts.threads;
      char target[64] = {};
      std::string path = fmt::format("/proc/self/task/{}/ns/net", entry->d_name);
      if (readlink(path.c_str(), target, sizeof(target) - 1) > 0 &&
          std::string_view(target) != own) {
        ++counts.foreign_netns_refs;
      }
    }
    closedir(dir);
  }
  return counts;
}

std::string ToString(const ResourceCounts& c) {
  return fmt::format("interfaces={} nft_tables={} fds={} threads={} foreign_netns_refs={}",
                     c.interfaces, c.nft_tables, c.fds, c.threads, c.foreign_netns_refs);
}

}  // namespace ralph::sandbox::testing
