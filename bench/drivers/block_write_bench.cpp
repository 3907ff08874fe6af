// Writing a slot image into a partition of a disk image and verifying it by
// re-reading: BlockDevice (O_DIRECT, 1 MiB bounce buffer, fdatasync, SHA-256
// of the re-read range) against what a user would do by hand:
//   dd if=slot.img of=disk.img bs=1M seek=<slot offset> oflag=direct,seek_bytes
//      conv=notrunc,fsync
//   dd if=disk.img bs=1M skip=<slot offset> count=<size> iflag=direct,skip_bytes,count_bytes
//      | sha256sum
// Both run in this one process invocation, alternating, several rounds; the
// output is each side's median and the ratio.
//
//   bench_block_write [dir] [MiB]   (default /tmp, 256)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "drivers/block_device.h"
#include "drivers/disk.h"
#include "drivers/gpt.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"
#include "tests/support/bench_stats.h"

namespace {

using ralph::testing::Median;

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1024 * 1024;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

int Fail(const std::string& what) {
  fmt::print(stderr, "bench_block_write: {}\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string base = argc > 1 ? argv[1] : "/tmp";
  uint64_t mib = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 256;
  if (mib == 0) return Fail("size must be positive");
  std::string dir = base + fmt::format("/ralph-bench-block-{}", ::getpid());
  std::filesystem::create_directories(dir);
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  } cleanup{dir};

  std::string image = dir + "/disk.img";
  std::string source = dir + "/slot.img";
  ralph::GptSpec spec;
  spec.partitions = {{"SYSTEM_A", mib * kMiB, ralph::PartitionType::kLinuxFilesystem, {}},
                     {"VAR", 0, ralph::PartitionType::kLinuxVar, {}}};
  auto layout = ralph::CreateGptImage(image, (mib + 16) * kMiB, spec);
  if (!layout) return Fail(layout.error().ToString());
  const ralph::PartitionInfo& slot = *layout->Find("SYSTEM_A");

  std::vector<uint8_t> payload(mib * kMiB);
  std::mt19937_64 generator(42);
  for (size_t i = 0; i < payload.size(); i += 8) {
    uint64_t value = generator();
    std::memcpy(payload.data() + i, &value, std::min<size_t>(8, payload.size() - i));
  }
  {
    ralph::UniqueFd fd(::open(source.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd ||
        ::write(fd.get(), payload.data(), payload.size()) != static_cast<ssize_t>(payload.size())) {
      return Fail("writing the source image");
    }
  }
  auto expected = ralph::Sha256::Of(payload);
  if (!expected) return Fail(expected.error().ToString());
  std::string expected_hex = ralph::DigestToHex(*expected);

  std::vector<double> ours;
  std::vector<double> peer;
  constexpr int kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    auto start = Clock::now();
    {
      auto device = ralph::BlockDevice::OpenRange(image, slot.offset_bytes(), slot.size_bytes());
      if (!device) return Fail(device.error().ToString());
      if (!(*device)->direct_io()) return Fail("O_DIRECT not available in " + base);
      constexpr size_t kChunk = 4 * kMiB;
      for (size_t at = 0; at < payload.size(); at += kChunk) {
        size_t n = std::min(kChunk, payload.size() - at);
        auto written = (*device)->WriteAt(at, std::span(payload).subspan(at, n));
        if (!written) return Fail(written.error().ToString());
      }
      auto flushed = (*device)->Flush();
      if (!flushed) return Fail(flushed.error().ToString());
      auto verified = ralph::VerifyRange(**device, 0, payload.size(), *expected);
      if (!verified) return Fail(verified.error().ToString());
    }
    ours.push_back(Seconds(Clock::now() - start));

    start = Clock::now();
    std::string write = fmt::format(
        "dd if={} of={} bs=1M seek={} oflag=direct,seek_bytes conv=notrunc,fsync status=none",
        source, image, slot.offset_bytes());
    std::string read = fmt::format(
        "dd if={} bs=1M skip={} count={} iflag=direct,skip_bytes,count_bytes status=none | "
        "sha256sum",
        image, slot.offset_bytes(), payload.size());
    if (std::system(write.c_str()) != 0) return Fail("dd write failed");
    FILE* pipe = ::popen(read.c_str(), "r");
    if (!pipe) return Fail("popen");
    char digest[65] = {};
    size_t got = std::fread(digest, 1, 64, pipe);
    ::pclose(pipe);
    if (got != 64 || expected_hex != digest) return Fail("dd + sha256sum digest mismatch");
    peer.push_back(Seconds(Clock::now() - start));
  }
  double ours_median = Median(ours);
  double peer_median = Median(peer);
  fmt::print(
      "write {} MiB into a partition of an image + fsync + re-read SHA-256 verify, median "
      "of {} rounds ({}):\n",
      mib, kRounds, base);
  fmt::print("  ralph BlockDevice (O_DIRECT)     {:7.3f} s  {:7.1f} MiB/s\n", ours_median,
             static_cast<double>(mib) / ours_median);
  fmt::print("  dd oflag=direct + dd | sha256sum {:7.3f} s  {:7.1f} MiB/s\n", peer_median,
             static_cast<double>(mib) / peer_median);
  fmt::print("  ratio ralph/dd time: {:.2f}\n", ours_median / peer_median);
  return 0;
}
