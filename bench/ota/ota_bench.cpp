// OTA benchmark, every figure measured side by side in one run, as ratios:
//   1. full install of an N MiB image into a loop-device slot with all
//      hashing and verification on, vs `dd oflag=direct conv=fsync` of the
//      same image to the same slot (target: >= 0.90 of dd's throughput);
//   2. adaptive update with 5 % of the chunks changed: bytes written (target
//      <= 10 % of a full install) and wall time (target >= 5x faster); and
//      its floor: a bare read + SHA-256 of the whole slot on two threads;
//   3. peak RSS of the installing process for a 4 GiB image (sparse source;
//      target < 64 MiB);
//   4. the same image installed by RAUC (Debian rauc 1.8, plain bundle, a
//      custom bootloader backend, `rauc service` on a private D-Bus):
//      our time / RAUC's.
// Everything lives in a fresh directory under /var/tmp (a real disk, not
// tmpfs) and is removed at the end; loop devices are detached on every path.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "drivers/gpt.h"
#include "platform/arch.h"
#include "platform/cli.h"
#include "platform/efivar_store.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/installer.h"
#include "tests/support/bench_stats.h"
#include "tests/support/loop_device.h"

extern char** environ;

namespace ralph::ota {
namespace {

using ralph::testing::LoadAverage;
using ralph::testing::Median;

constexpr uint64_t kMiB = 1024 * 1024;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "ota_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(Result<T> result, const std::string& what) {
  if (!result) Die(what + ": " + result.error().ToString());
  return std::move(*result);
}

void MustOk(Result<void> result, const std::string& what) {
  if (!result) Die(what + ": " + result.error().ToString());
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string Run(const std::vector<std::string>& argv) {
  return Must(ralph::testing::RunCommand(argv), argv[0]);
}

double TimeCommand(const std::vector<std::string>& argv) {
  auto start = std::chrono::steady_clock::now();
  Run(argv);
  return Seconds(start);
}

void WriteRandomFile(const std::string& path, uint64_t size, uint32_t seed) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> block(kMiB / 8);
  for (uint64_t done = 0; done < size; done += kMiB) {
    for (auto& w : block) w = rng();
    out.write(reinterpret_cast<const char*>(block.data()),
              static_cast<std::streamsize>(std::min<uint64_t>(kMiB, size - done)));
  }
}

// Copies `from` to `to`, then rewrites `percent` % of its 1 MiB chunks.
uint64_t ChangeChunks(const std::string& from, const std::string& to, int percent, uint32_t seed) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
  uint64_t chunks = std::filesystem::file_size(to) / kMiB;
  std::vector<uint64_t> order(chunks);
  for (uint64_t i = 0; i < chunks; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  uint64_t changed = chunks * percent / 100;
  std::fstream f(to, std::ios::binary | std::ios::in | std::ios::out);
  std::vector<char> data(kMiB);
  for (uint64_t k = 0; k < changed; ++k) {
    for (auto& c : data) c = static_cast<char>(rng());
    f.seekp(static_cast<std::streamoff>(order[k] * kMiB));
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  return changed;
}

// The floor under an adaptive install: it must read the whole slot and
// SHA-256 every chunk. This does only that: O_DIRECT 4 MiB reads of the
// first `size` bytes of `device`, SHA-256 per 1 MiB chunk, on two threads
// (the machine's cores), nothing else.
double ReadAndHashSeconds(const std::string& device, uint64_t size) {
  constexpr uint64_t kRequest = 4 * kMiB;
  std::atomic<uint64_t> next{0};
  auto start = std::chrono::steady_clock::now();
  auto work = [&] {
    UniqueFd fd(::open(device.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    if (!fd) Die("opening " + device);
    void* memory =
        ::mmap(nullptr, kRequest, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) Die("mmap");
    ::madvise(memory, kRequest, MADV_HUGEPAGE);
    auto* buffer = static_cast<uint8_t*>(memory);
    Sha256 hasher = Must(Sha256::Create(), "sha256");
    for (uint64_t at = next.fetch_add(kRequest); at < size; at = next.fetch_add(kRequest)) {
      size_t length = static_cast<size_t>(std::min(kRequest, size - at));
      if (::pread(fd.get(), buffer, length, static_cast<off_t>(at)) !=
          static_cast<ssize_t>(length)) {
        Die("reading " + device);
      }
      for (size_t c = 0; c < length; c += kMiB) {
        MustOk(hasher.Reset(), "sha256");
        MustOk(
            hasher.Update(std::span<const uint8_t>(buffer + c, std::min<size_t>(kMiB, length - c))),
            "sha256");
        Must(hasher.Finish(), "sha256");
      }
    }
    ::munmap(memory, kRequest);
  };
  std::thread other(work);
  work();
  other.join();
  return Seconds(start);
}

// The installer's hook points, in order; the time spent before each one is
// that phase's share (opening + planning, writing + fsync, re-read
// verification, ESP, activation).
constexpr std::array<std::string_view, 5> kPhasePoints = {"begin-write", "flushed", "verified",
                                                          "esp-written", "finish-write"};
constexpr std::array<std::string_view, 5> kPhaseNames = {"open+plan", "write+fsync", "verify",
                                                         "esp", "activate"};

struct ChildReport {
  uint64_t bytes_written = 0;
  std::array<double, kPhasePoints.size()> phase_seconds{};
};

struct ChildResult {
  double seconds = 0;
  uint64_t bytes_written = 0;
  long max_rss_kib = 0;
  double cpu_seconds = 0;  // user + system of the installing process
  std::array<double, kPhasePoints.size()> phase_seconds{};
};

std::string PhaseBreakdown(const ChildResult& r) {
  std::string out;
  for (size_t i = 0; i < kPhaseNames.size(); ++i) {
    out += fmt::format("{}{} {:.2f}", i ? ", " : "", kPhaseNames[i], r.phase_seconds[i]);
  }
  return out;
}

// Installs in a child process (so its peak RSS is its own), booted from A.
ChildResult InstallInChild(EfiVarStoreInterface& vars, const DiskLayout& layout,
                           const InstallOptions& options) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) Die("pipe");
  auto start = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipe_fds[0]);
    auto manager = boot::SlotManager::Create(vars, layout, "ralph.slot=a");
    if (!manager) ::_exit(2);
    ChildReport child;
    auto last = std::chrono::steady_clock::now();
    InstallOptions timed = options;
    timed.hook = [&](std::string_view point) {
      auto it = std::find(kPhasePoints.begin(), kPhasePoints.end(), point);
      if (it == kPhasePoints.end()) return;
      auto now = std::chrono::steady_clock::now();
      child.phase_seconds[static_cast<size_t>(it - kPhasePoints.begin())] =
          std::chrono::duration<double>(now - last).count();
      last = now;
    };
    auto report = Install(timed, *manager, layout);
    if (!report) {
      std::fprintf(stderr, "install: %s\n", report.error().ToString().c_str());
      ::_exit(1);
    }
    child.bytes_written = report->stats.bytes_written;
    if (::write(pipe_fds[1], &child, sizeof(child)) != sizeof(child)) ::_exit(3);
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  ChildResult result;
  ChildReport child;
  if (::read(pipe_fds[0], &child, sizeof(child)) == sizeof(child)) {
    result.bytes_written = child.bytes_written;
    result.phase_seconds = child.phase_seconds;
  }
  ::close(pipe_fds[0]);
  int status = 0;
  struct rusage usage {};
  if (::wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    Die("install child failed");
  }
  result.seconds = Seconds(start);
  result.max_rss_kib = usage.ru_maxrss;
  result.cpu_seconds = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  return result;
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) {
    Die("spawn " + argv[0]);
  }
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

int Main(int argc, char** argv) {
  uint64_t size_mib = 1024;
  int runs = 3;
  uint64_t rss_gib = 4;
  bool with_rauc = true;
  bool with_rss = true;
  bool with_adaptive = true;
  std::string kinds = "buffered,direct";
  cli::Parser parser("ota_bench",
                     "usage: ota_bench [--size-mib N] [--runs R] [--rss-gib G] "
                     "[--kinds buffered,direct] [--no-adaptive] [--no-rss] [--no-rauc]\n");
  std::optional<std::string> size_text, runs_text, rss_text;
  bool no_rauc = false, no_rss = false, no_adaptive = false;
  parser.Option("--size-mib", &size_text);
  parser.Option("--runs", &runs_text);
  parser.Option("--rss-gib", &rss_text);
  parser.Option("--kinds", &kinds);
  parser.Flag("--no-rauc", &no_rauc);
  parser.Flag("--no-rss", &no_rss);
  parser.Flag("--no-adaptive", &no_adaptive);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;
  with_rauc = !no_rauc;
  with_rss = !no_rss;
  with_adaptive = !no_adaptive;
  auto number = [&](const std::optional<std::string>& text, std::string_view flag,
                    uint64_t* out) -> bool {
    if (!text) return true;
    char* end = nullptr;
    *out = std::strtoull(text->c_str(), &end, 10);
    if (end != text->c_str() && *end == '\0') return true;
    parser.UsageError(fmt::format("{} takes a number, not '{}'", flag, *text));
    return false;
  };
  uint64_t runs_value = static_cast<uint64_t>(runs);
  if (!number(size_text, "--size-mib", &size_mib) || !number(runs_text, "--runs", &runs_value) ||
      !number(rss_text, "--rss-gib", &rss_gib)) {
    return cli::kExitUsage;
  }
  runs = static_cast<int>(runs_value);
  std::string dir = Must(Result<std::string>(std::string(std::getenv("RALPH_BENCH_DIR"))), "dir");
  std::string efivars = std::getenv("EFIVARFS_PATH");
  auto path = [&](const std::string& name) { return dir + "/" + name; };
  uint64_t size = size_mib * kMiB;
  uint64_t rss_size = with_rss ? rss_gib * 1024 * kMiB : 0;
  bool want_buffered = kinds.find("buffered") != std::string::npos;
  bool want_direct = kinds.find("direct") != std::string::npos;
  if (!want_buffered && !want_direct) Die("--kinds: name buffered, direct or both");

  std::printf("ota_bench: %llu MiB image, %d runs each, working in %s\n",
              static_cast<unsigned long long>(size_mib), runs, dir.c_str());
  // Keys: a self-signed release certificate with the code-signing usage.
  Run({"openssl",
       "req",
       "-x509",
       "-newkey",
       "ec",
       "-pkeyopt",
       "ec_paramgen_curve:P-256",
       "-nodes",
       "-keyout",
       path("key.pem"),
       "-out",
       path("cert.pem"),
       "-days",
       "30",
       "-subj",
       "/CN=ota bench",
       "-addext",
       "extendedKeyUsage=codeSigning",
       "-addext",
       "keyUsage=digitalSignature"});
  WriteRandomFile(path("v2.img"), size, 2);
  WriteRandomFile(path("old.img"), size, 1);
  WriteRandomFile(path("uki.efi"), kMiB, 9);
  uint64_t changed = ChangeChunks(path("v2.img"), path("v3.img"), 5, 3);
  if (with_rss) Run({"truncate", "-s", std::to_string(rss_size), path("sparse.img")});
  auto bundle = [&](const std::string& image, Version version, const std::string& out) {
    CreateOptions o;
    o.cert_path = path("cert.pem");
    o.key_path = path("key.pem");
    o.version = version;
    o.product = "ralphos";
    o.arch = std::string(arch::Name());
    o.rootfs_path = image;
    o.uki_path = path("uki.efi");
    o.output_path = out;
    Must(CreateBundle(o), "creating " + out);
  };
  bundle(path("v2.img"), {2, 0, 0}, path("v2.rbundle"));
  bundle(path("v3.img"), {3, 0, 0}, path("v3.rbundle"));
  if (with_rss) bundle(path("sparse.img"), {4, 0, 0}, path("sparse.rbundle"));

  uint64_t slot_b = std::max(size, rss_size) + 16 * kMiB;
  GptSpec spec;
  spec.partitions = {{"EFI", 64 * kMiB, PartitionType::kEfiSystem},
                     {"SYSTEM_A", size + 16 * kMiB, PartitionType::kLinuxRootX86_64},
                     {"SYSTEM_B", slot_b, PartitionType::kLinuxRootX86_64},
                     {"VAR", 4 * kMiB, PartitionType::kLinuxVar},
                     {"RECOVERY", 4 * kMiB, PartitionType::kLinuxFilesystem}};
  uint64_t disk_size = 64 * kMiB + size + slot_b + 64 * kMiB;
  Must(CreateGptImage(path("disk.img"), disk_size, spec), "creating the disk image");
  auto loop = Must(ralph::testing::LoopDevice::Attach(path("disk.img")), "losetup");
  DiskLayout layout = Must(ProbeDisk(loop.device()), "probing the disk");
  std::string slot_a_dev = layout.Find(kPartSystemA)->device;
  std::string slot_b_dev = layout.Find(kPartSystemB)->device;
  Run({"mkfs.vfat", "-F", "32", "-n", "ESP", layout.Find(kPartEfi)->device});
  auto vars = Must(LibefivarStore::Open(), "EFI variable store");
  {
    auto manager = Must(boot::SlotManager::Create(*vars, layout, "ralph.slot=a"), "slot manager");
    Must(manager.Repair(), "provisioning slot A");
  }
  InstallOptions options;
  options.keyring_path = path("cert.pem");
  options.lock_path = path("ota.lock");
  options.status_path = path("status.json");
  options.work_dir = dir;
  auto fill_b = [&](const std::string& image) {
    Run({"dd", "if=" + image, "of=" + slot_b_dev, "bs=1M", "oflag=direct", "conv=fsync",
         "status=none"});
  };
  // Warm the page cache for both readers alike.
  Run({"cat", path("v2.img"), path("v2.rbundle"), path("old.img")});
  std::printf("load average at start: %s\n", LoadAverage().c_str());
  double mb = static_cast<double>(size) / 1e6;

  // 1 + 2 on each kind of target. The peer is dd with the same 1 MiB
  // block size our writes use, O_DIRECT, one fsync at the end (the issue's
  // `dd oflag=direct`), onto the same slot device:
  //   - loop device over a file in the page cache (losetup's default): a
  //     RAM-speed device whose flush writes the file back, CPU-bound;
  //   - the same loop device with --direct-io=on: O_DIRECT onto the backing
  //     file's disk and flushes that reach it, as a real disk behaves.
  struct KindResult {
    double ours = 0, dd = 0, adaptive = 0, floor = 0;
    uint64_t full_written = 0, adaptive_written = 0;
    long rss_kib = 0;
    bool measured = false;
  };
  auto measure = [&](const char* kind) {
    KindResult k;
    std::vector<double> dd_times, our_times, adaptive_times;
    std::printf("\n== target: %s ==\n", kind);
    for (int r = 0; r < runs; ++r) {
      fill_b(path("old.img"));
      dd_times.push_back(TimeCommand({"dd", "if=" + path("v2.img"), "of=" + slot_b_dev, "bs=1M",
                                      "oflag=direct", "conv=fsync", "status=none"}));
      fill_b(path("old.img"));
      options.source = path("v2.rbundle");
      ChildResult full = InstallInChild(*vars, layout, options);
      our_times.push_back(full.seconds);
      std::printf("   full run %d: %.2f s (%s; CPU %.2f s); dd %.2f s\n", r + 1, full.seconds,
                  PhaseBreakdown(full).c_str(), full.cpu_seconds, dd_times.back());
      k.rss_kib = std::max(k.rss_kib, full.max_rss_kib);
      k.full_written = full.bytes_written;
    }
    k.dd = Median(dd_times);
    k.ours = Median(our_times);
    k.measured = true;
    std::printf(
        "1. full install, %llu MiB, all verification on: ralph %.2f s (%.0f MB/s), "
        "`dd bs=1M oflag=direct conv=fsync` %.2f s (%.0f MB/s); throughput ralph/dd = %.2f "
        "(target >= 0.90)\n",
        static_cast<unsigned long long>(size_mib), k.ours, mb / k.ours, k.dd, mb / k.dd,
        k.dd / k.ours);
    if (!with_adaptive) return k;
    // 2. Adaptive: slot B holds v2; install v3 (5 % of chunks differ).
    for (int r = 0; r < runs; ++r) {
      options.source = path("v2.rbundle");
      InstallInChild(*vars, layout, options);  // back to v2 (rewrites the 5 %)
      options.source = path("v3.rbundle");
      ChildResult adaptive = InstallInChild(*vars, layout, options);
      adaptive_times.push_back(adaptive.seconds);
      std::printf("   adaptive run %d: %.2f s (%s; CPU %.2f s)\n", r + 1, adaptive.seconds,
                  PhaseBreakdown(adaptive).c_str(), adaptive.cpu_seconds);
      k.adaptive_written = adaptive.bytes_written;
    }
    k.adaptive = Median(adaptive_times);
    std::vector<double> floor_times;
    for (int r = 0; r < runs; ++r) floor_times.push_back(ReadAndHashSeconds(slot_b_dev, size));
    k.floor = Median(floor_times);
    std::printf(
        "2. adaptive update, %llu of %llu chunks changed: wrote %.1f MiB = %.1f %% of a full "
        "install (target <= 10 %%); %.2f s (%.0f MB/s of image) vs full %.2f s = %.1fx faster "
        "(target >= 5x)\n",
        static_cast<unsigned long long>(changed), static_cast<unsigned long long>(size / kMiB),
        static_cast<double>(k.adaptive_written) / kMiB,
        100.0 * static_cast<double>(k.adaptive_written) / static_cast<double>(k.full_written),
        k.adaptive, mb / k.adaptive, k.ours, k.ours / k.adaptive);
    std::printf(
        "   floor: read + SHA-256 of the whole slot on 2 threads (O_DIRECT 4 MiB reads), nothing "
        "else: %.2f s; adaptive / floor = %.2f; the most speed-up that floor allows: full / "
        "floor = %.1fx\n",
        k.floor, k.adaptive / k.floor, k.ours / k.floor);
    return k;
  };
  KindResult buffered;
  KindResult direct;
  if (want_buffered) buffered = measure("loop device, buffered backing file (losetup default)");
  if (want_direct) {
    Run({"losetup", "--direct-io=on", loop.device()});
    direct = measure("loop device, --direct-io=on (disk-like)");
    Run({"losetup", "--direct-io=off", loop.device()});
  }
  double our_s = buffered.ours;
  long full_rss = std::max(buffered.rss_kib, direct.rss_kib);

  // 3. Peak RSS, 4 GiB image, every chunk written (the sparse source is all
  // zeros, which a fresh slot already holds, so adaptive would skip it all).
  ChildResult big;
  if (with_rss) {
    options.source = path("sparse.rbundle");
    options.mode = WriteOptions::Mode::kFull;
    big = InstallInChild(*vars, layout, options);
    options.mode = WriteOptions::Mode::kAdaptive;
    std::printf(
        "\n3. peak RSS of the installer: %.1f MiB for a %llu GiB image (%.1f s, %.0f MB/s), "
        "%.1f MiB for %llu MiB (target < 64 MiB)\n",
        big.max_rss_kib / 1024.0, static_cast<unsigned long long>(rss_gib), big.seconds,
        static_cast<double>(rss_size) / 1e6 / big.seconds, full_rss / 1024.0,
        static_cast<unsigned long long>(size_mib));
  }

  // 4. RAUC.
  double rauc_s = 0;
  if (with_rauc && buffered.measured) {
    std::filesystem::create_directory(path("rauc-in"));
    std::filesystem::create_hard_link(path("v2.img"), path("rauc-in/rootfs.img"));
    WriteText(path("rauc-in/manifest.raucm"),
              "[update]\ncompatible=ralph-bench\nversion=2.0.0\n[bundle]\nformat=plain\n"
              "[image.rootfs]\nfilename=rootfs.img\n");
    Run({"rauc", "bundle", "--cert", path("cert.pem"), "--key", path("key.pem"),
         "--mksquashfs-args=-noI -noD -noF -noX", path("rauc-in"), path("v2.raucb")});
    WriteText(path("backend.sh"),
              "#!/bin/sh\n# RAUC custom bootloader backend: state in files.\n"
              "d=\"$(dirname \"$0\")/bootstate\"; mkdir -p \"$d\"\n"
              "case \"$1\" in\n"
              "  get-primary) cat \"$d/primary\" 2>/dev/null || echo A ;;\n"
              "  set-primary) echo \"$2\" > \"$d/primary\" ;;\n"
              "  get-state) cat \"$d/state-$2\" 2>/dev/null || echo good ;;\n"
              "  set-state) echo \"$3\" > \"$d/state-$2\" ;;\n"
              "  get-current) echo A ;;\n  *) exit 1 ;;\nesac\n");
    std::filesystem::permissions(path("backend.sh"), std::filesystem::perms::owner_all);
    WriteText(path("system.conf"),
              fmt::format("[system]\ncompatible=ralph-bench\nbootloader=custom\n"
                          "[handlers]\nbootloader-custom-backend={}\n"
                          "[keyring]\npath={}\ncheck-purpose=any\n"
                          "[slot.rootfs.0]\ndevice={}\ntype=raw\nbootname=A\n"
                          "[slot.rootfs.1]\ndevice={}\ntype=raw\nbootname=B\n",
                          path("backend.sh"), path("cert.pem"), slot_a_dev, slot_b_dev));
    WriteText(path("bus.conf"),
              fmt::format("<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus "
                          "Configuration 1.0//EN\" "
                          "\"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                          "<busconfig><listen>unix:path={}</listen><auth>EXTERNAL</auth>"
                          "<policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>"
                          "<allow send_destination=\"*\" eavesdrop=\"true\"/>"
                          "<allow eavesdrop=\"true\"/></policy></busconfig>\n",
                          path("bus")));
    pid_t bus =
        Spawn({"dbus-daemon", "--nofork", "--config-file=" + path("bus.conf")}, path("bus.log"));
    for (int i = 0; i < 100 && !std::filesystem::exists(path("bus")); ++i) {
      ::usleep(20000);
    }
    ::setenv("DBUS_SYSTEM_BUS_ADDRESS", ("unix:path=" + path("bus")).c_str(), 1);
    pid_t service =
        Spawn({"rauc", "service", "--conf=" + path("system.conf"), "--override-boot-slot=A"},
              path("rauc-service.log"));
    ::sleep(1);
    std::vector<double> rauc_times;
    for (int r = 0; r < runs; ++r) {
      fill_b(path("old.img"));
      rauc_times.push_back(TimeCommand({"rauc", "install", path("v2.raucb")}));
    }
    ::kill(service, SIGTERM);
    ::waitpid(service, nullptr, 0);
    ::kill(bus, SIGTERM);
    ::waitpid(bus, nullptr, 0);
    rauc_s = Median(rauc_times);
    std::printf(
        "\n4. RAUC 1.8 (plain bundle, raw slot, custom backend; loop device, buffered backing): "
        "%.2f s (%.0f MB/s) vs ralph %.2f s; ralph/RAUC time = %.2f\n   runs: %s s\n",
        rauc_s, mb / rauc_s, our_s, our_s / rauc_s,
        fmt::format("{:.2f}", fmt::join(rauc_times, " ")).c_str());
  }

  std::printf("\nsummary (%llu MiB image, medians of %d runs; load average at end: %s)\n",
              static_cast<unsigned long long>(size_mib), runs, LoadAverage().c_str());
  for (const auto& [name, k] :
       {std::pair<const char*, const KindResult&>{"loop, buffered", buffered},
        {"loop, direct-io", direct}}) {
    if (!k.measured) continue;
    if (!with_adaptive) {
      std::printf("  %-16s full %4.0f MB/s, dd %4.0f MB/s, ralph/dd %.2f (>= 0.90)\n", name,
                  mb / k.ours, mb / k.dd, k.dd / k.ours);
      continue;
    }
    std::printf(
        "  %-16s full %4.0f MB/s, dd %4.0f MB/s, ralph/dd %.2f (>= 0.90) | adaptive 5 %%: "
        "%.1f %% written (<= 10 %%), %.1fx faster (>= 5x; read+hash floor allows %.1fx)\n",
        name, mb / k.ours, mb / k.dd, k.dd / k.ours,
        100.0 * static_cast<double>(k.adaptive_written) / static_cast<double>(k.full_written),
        k.ours / k.adaptive, k.ours / k.floor);
  }
  if (with_rss) {
    std::printf("  peak RSS %.1f MiB for %llu GiB (< 64 MiB)\n", big.max_rss_kib / 1024.0,
                static_cast<unsigned long long>(rss_gib));
  }
  if (rauc_s > 0) std::printf("  ralph/RAUC time %.2f\n", our_s / rauc_s);
  return 0;
}

}  // namespace
}  // namespace ralph::ota

int main(int argc, char** argv) {
  // libefivar takes EFIVARFS_PATH before main(): set it and re-exec once.
  if (!std::getenv("RALPH_BENCH_DIR")) {
    std::string pattern = "/var/tmp/ralph-ota-bench-XXXXXX";
    if (!::mkdtemp(pattern.data())) return 1;
    std::filesystem::create_directory(pattern + "/efivars");
    ::setenv("RALPH_BENCH_DIR", pattern.c_str(), 1);
    ::setenv("EFIVARFS_PATH", (pattern + "/efivars/").c_str(), 1);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::execv("/proc/self/exe", argv);
      std::perror("execv");
      ::_exit(1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::error_code ec;
    std::filesystem::remove_all(pattern, ec);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  }
  return ralph::ota::Main(argc, argv);
}
