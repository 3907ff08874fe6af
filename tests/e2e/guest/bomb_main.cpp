// ralph-test-bomb: the resource bombs the sandbox e2e test runs inside
// `ralph-sandbox run` in the guest (test images only; ralph-mkimage adds it
// with --test-agent). Statically linked, so the sandbox's base needs nothing
// but this one file bound in.
//   ralph-test-bomb memory     touches 16 MiB chunks until killed; reaching
//                              4 GiB (no limit) exits 1
//   ralph-test-bomb fork <N>   forks sleeping children until fork fails;
//                              exits 0 when it failed before N children
//   ralph-test-bomb hello      prints a line (the sandbox still works)
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
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
