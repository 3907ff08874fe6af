// ralph-test-bomb: the resource bombs and network probes the sandbox e2e
// test runs inside `ralph-sandbox run` in the guest (test images only;
// ralph-mkimage adds it with --test-agent). Statically linked, so the
// sandbox's base needs nothing but this one file bound in.
//   ralph-test-bomb memory     touches 16 MiB chunks until killed; reaching
//                              4 GiB (no limit) exits 1
//   ralph-test-bomb fork <N>   forks sleeping children until fork fails;
//                              exits 0 when it failed before N children
//   ralph-test-bomb hello      prints a line (the sandbox still works)
//   ralph-test-bomb connect ADDR:PORT...
//                              TCP connects (3 s each), one line per target:
//                              "<target> connected: <first line read>",
//                              "<target> timed out" or "<target> failed: <error>";
//                              IPv6 as [ADDR]:PORT; exits 0
//   ralph-test-bomb dns NAME   an A query to the first nameserver of
//                              /etc/resolv.conf over UDP (3 s), prints
//                              "dns NAME: rcode <n> answers <n>" or
//                              "dns NAME: timed out"; exits 0
// Plain libc only (no getaddrinfo): a static binary cannot load NSS modules.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr int kTimeoutMs = 3000;

// "192.0.2.2:80" or "[fd00::1]:80".
bool ParseTarget(const std::string& text, sockaddr_storage* address, socklen_t* length) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = text.substr(0, colon);
  int port = std::atoi(text.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return false;
  std::memset(address, 0, sizeof(*address));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(address);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(*v6);
    return inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6->sin6_addr) == 1;
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(address);
  v4->sin_family = AF_INET;
  v4->sin_port = htons(static_cast<uint16_t>(port));
  *length = sizeof(*v4);
  return inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1;
}

void Connect(const std::string& target) {
  sockaddr_storage address;
  socklen_t length = 0;
  if (!ParseTarget(target, &address, &length)) {
    std::printf("%s failed: not ADDR:PORT\n", target.c_str());
    return;
  }
  int fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    std::printf("%s failed: socket: %s\n", target.c_str(), std::strerror(errno));
    return;
  }
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&address), length);
  if (rc != 0 && errno != EINPROGRESS) {
    std::printf("%s failed: %s\n", target.c_str(), std::strerror(errno));
    close(fd);
    return;
  }
  pollfd p{fd, POLLOUT, 0};
  if (rc != 0 && poll(&p, 1, kTimeoutMs) == 0) {
    std::printf("%s timed out\n", target.c_str());
    close(fd);
    return;
  }
  int error = 0;
  socklen_t error_length = sizeof(error);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_length);
  if (error != 0) {
    std::printf("%s failed: %s\n", target.c_str(), std::strerror(error));
    close(fd);
    return;
  }
  char line[256] = {};
  p = {fd, POLLIN, 0};
  ssize_t n = poll(&p, 1, kTimeoutMs) == 1 ? read(fd, line, sizeof(line) - 1) : -1;
  if (n < 0) n = 0;
  line[n] = 0;
  if (char* newline = std::strchr(line, '\n')) *newline = 0;
  std::printf("%s connected: %s\n", target.c_str(), line);
  close(fd);
}

void Dns(const std::string& name) {
  FILE* resolv = std::fopen("/etc/resolv.conf", "re");
  char server[64] = {};
  char line[256];
  while (resolv && std::fgets(line, sizeof(line), resolv)) {
    if (std::sscanf(line, "nameserver %63s", server) == 1) break;
  }
  if (resolv) std::fclose(resolv);
  sockaddr_storage address;
  socklen_t length = 0;
  std::string target =
      std::strchr(server, ':') ? "[" + std::string(server) + "]:53" : std::string(server) + ":53";
  if (!server[0] || !ParseTarget(target, &address, &length)) {
    std::printf("dns %s: no nameserver in /etc/resolv.conf\n", name.c_str());
    return;
  }
  // Header: id 0x5242, RD, one question; then QNAME, QTYPE A, QCLASS IN.
  unsigned char query[300] = {0x52, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  size_t at = 12;
  size_t start = 0;
  while (start <= name.size() && at + 70 < sizeof(query)) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    query[at++] = static_cast<unsigned char>(dot - start);
    std::memcpy(query + at, name.data() + start, dot - start);
    at += dot - start;
    start = dot + 1;
  }
  query[at++] = 0;
  const unsigned char tail[] = {0, 1, 0, 1};
  std::memcpy(query + at, tail, sizeof(tail));
  at += sizeof(tail);
  int fd = socket(address.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || sendto(fd, query, at, 0, reinterpret_cast<sockaddr*>(&address), length) < 0) {
    std::printf("dns %s: send to %s: %s\n", name.c_str(), server, std::strerror(errno));
    if (fd >= 0) close(fd);
    return;
  }
  pollfd p{fd, POLLIN, 0};
  unsigned char answer[512];
  ssize_t n = poll(&p, 1, kTimeoutMs) == 1 ? recv(fd, answer, sizeof(answer), 0) : -1;
  close(fd);
  if (n < 12) {
    std::printf("dns %s: timed out\n", name.c_str());
    return;
  }
  std::printf("dns %s: rcode %d answers %d\n", name.c_str(), answer[3] & 0x0f,
              (answer[6] << 8) | answer[7]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  if (std::strcmp(argv[1], "connect") == 0 && argc >= 3) {
    for (int i = 2; i < argc; ++i) {
      Connect(argv[i]);
      std::fflush(stdout);
    }
    return 0;
  }
  if (std::strcmp(argv[1], "dns") == 0 && argc == 3) {
    Dns(argv[2]);
    return 0;
  }
  if (std::strcmp(argv[1], "memory") == 0) {
    constexpr size_t kChunk = size_t{16} << 20;
    size_t total = 0;
    while (total < (size_t{4} << 30)) {
      void* p = mmap(nullptr, kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        std::printf("mmap failed after %zu MiB: %s\n", total >> 20, std::strerror(errno));
        return 1;
      }
      std::memset(p, 1, kChunk);
      total += kChunk;
    }
    std::printf("allocated %zu MiB: no memory limit\n", total >> 20);
    return 1;
  }
  if (std::strcmp(argv[1], "fork") == 0 && argc == 3) {
    long limit = std::strtol(argv[2], nullptr, 10);
    long children = 0;
    int err = 0;
    for (;;) {
      pid_t pid = fork();
      if (pid < 0) {
        err = errno;
        break;
      }
      if (pid == 0) {
        pause();
        _exit(0);
      }
      if (++children >= limit) break;
    }
    std::printf("forked %ld children, then: %s\n", children, err ? std::strerror(err) : "none");
    std::fflush(stdout);
    return children < limit ? 0 : 1;
  }
  if (std::strcmp(argv[1], "hello") == 0) {
    std::printf("hello from the sandbox, pid %d\n", static_cast<int>(getpid()));
    return 0;
  }
  return 2;
}
