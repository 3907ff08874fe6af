#include "drivers/verity.h"

#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "drivers/block_device.h"
#include "platform/hex.h"
#include "platform/unique_fd.h"

namespace ralph {
namespace {

constexpr std::string_view kPrefix = "ralph.verity.";
constexpr std::array<std::string_view, 4> kKeys = {"roothash", "salt", "data_blocks",
                                                   "hash_offset"};
constexpr const char* kControl = "/dev/mapper/control";
constexpr const char* kMapperDir = "/dev/mapper";

Result<uint64_t> ParseCount(std::string_view key, std::string_view text) {
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("kernel command line: {}{}={} is not a decimal number", kPrefix, key, text));
  }
  return value;
}

Result<Sha256Digest> ParseDigest(std::string_view key, std::string_view text) {
  Sha256Digest digest{};
  if (auto decoded = HexDecodeInto(text, digest); !decoded) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("kernel command line: {}{}: {}", kPrefix, key, decoded.error().message()));
  }
  return digest;
}

// A dm_ioctl request with room for `payload` bytes after the header.
struct DmRequest {
  std::vector<uint64_t> storage;  // 8-byte aligned, as the kernel expects
  dm_ioctl* io = nullptr;

  DmRequest(std::string_view name, size_t payload) {
    size_t size = sizeof(dm_ioctl) + payload;
    storage.assign((size + 7) / 8, 0);
    io = reinterpret_cast<dm_ioctl*>(storage.data());
    io->version[0] = DM_VERSION_MAJOR;
    io->version[1] = 0;
    io->version[2] = 0;
    io->data_size = static_cast<uint32_t>(storage.size() * 8);
    io->data_start = sizeof(dm_ioctl);
    std::memcpy(io->name, name.data(), name.size());
  }
  char* payload() { return reinterpret_cast<char*>(io) + sizeof(dm_ioctl); }
};

Result<void> DmCall(int control, unsigned long request, DmRequest& dm, std::string_view what) {
  if (::ioctl(control, request, dm.io) != 0) {
    return Error::FromErrno(fmt::format("device-mapper {} {}", what, dm.io->name), errno);
  }
  return {};
}

Result<UniqueFd> OpenControl() {
  UniqueFd control(::open(kControl, O_RDWR | O_CLOEXEC));
  if (!control) {
    return Error::FromErrno(
        fmt::format("open {} (is dm-mod loaded? it is in the initrd's module list)", kControl),
        errno);
  }
  return control;
}

}  // namespace

Result<std::optional<VerityParams>> ParseVerityCmdline(std::string_view cmdline) {
  std::array<std::optional<std::string>, kKeys.size()> values;
  std::istringstream words{std::string(cmdline)};
  for (std::string word; words >> word;) {
    if (word.rfind(kPrefix, 0) != 0) continue;
    std::string_view rest = std::string_view(word).substr(kPrefix.size());
    size_t eq = rest.find('=');
    std::string_view key = rest.substr(0, eq);
    size_t index = 0;
    while (index < kKeys.size() && kKeys[index] != key) ++index;
    if (index == kKeys.size() || eq == std::string_view::npos) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("kernel command line: {} is not one of {}{{{}}}=<value>", word,
                                     kPrefix, fmt::join(kKeys, ",")));
    }
    if (values[index]) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("kernel command line: {}{} is given twice", kPrefix, key));
    }
    values[index] = std::string(rest.substr(eq + 1));
  }
  size_t given = 0;
  for (const auto& value : values) given += value ? 1 : 0;
  if (given == 0) return std::optional<VerityParams>();
  for (size_t i = 0; i < kKeys.size(); ++i) {
    if (!values[i]) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("kernel command line: {}{} is missing (the verity "
                                     "parameters come as all four keys)",
                                     kPrefix, kKeys[i]));
    }
  }
  VerityParams params;
  params.root_hash = TRY(ParseDigest(kKeys[0], *values[0]));
  params.salt = TRY(ParseDigest(kKeys[1], *values[1]));
  params.data_blocks = TRY(ParseCount(kKeys[2], *values[2]));
  params.hash_offset = TRY(ParseCount(kKeys[3], *values[3]));
  if (params.data_blocks == 0) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("kernel command line: {}data_blocks=0 maps nothing", kPrefix));
  }
  if (params.hash_offset % kVerityBlockSize != 0 ||
      params.hash_offset / kVerityBlockSize < params.data_blocks) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("kernel command line: {}hash_offset={} is not a multiple of "
                    "{} at or after the {} data blocks",
                    kPrefix, params.hash_offset, kVerityBlockSize, params.data_blocks));
  }
  return std::optional<VerityParams>(params);
}

std::string RenderVerityCmdline(const VerityParams& params) {
  return fmt::format("{}roothash={} {}salt={} {}data_blocks={} {}hash_offset={}", kPrefix,
                     HexEncode(params.root_hash), kPrefix, HexEncode(params.salt), kPrefix,
                     params.data_blocks, kPrefix, params.hash_offset);
}

namespace {

constexpr uint64_t kHashesPerBlock = kVerityBlockSize / kSha256Size;

Result<Sha256Digest> SaltedHash(Sha256& hasher, const Sha256Digest& salt,
                                std::span<const uint8_t> block) {
  TRY(hasher.Reset());
  TRY(hasher.Update(salt));
  TRY(hasher.Update(block));
  return hasher.Finish();
}

}  // namespace

uint64_t VerityTreeBytes(uint64_t data_blocks) {
  uint64_t blocks = 0;
  for (uint64_t level = data_blocks; level > 1;) {
    level = (level + kHashesPerBlock - 1) / kHashesPerBlock;
    blocks += level;
  }
  return blocks * kVerityBlockSize;
}

Result<VerityTree> ComputeVerityTree(BlockDeviceInterface& device, uint64_t data_blocks,
                                     const Sha256Digest& salt) {
  if (data_blocks == 0) {
    return Error::Make(ErrorCode::kInvalidArgument, "a verity tree needs at least one data block");
  }
  if (device.size() / kVerityBlockSize < data_blocks) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("the device has {} bytes, not {} data blocks", device.size(), data_blocks));
  }
  Sha256 hasher = TRY(Sha256::Create());
  // levels[0]: the hash blocks over the data; each next level hashes the one
  // below until one block is left.
  std::vector<std::vector<uint8_t>> levels;
  std::vector<uint8_t> block(kVerityBlockSize);
  std::vector<uint8_t> current;
  constexpr uint64_t kChunkBlocks = 256;  // 1 MiB reads
  std::vector<uint8_t> chunk(kChunkBlocks * kVerityBlockSize);
  for (uint64_t first = 0; first < data_blocks; first += kChunkBlocks) {
    uint64_t count = std::min(kChunkBlocks, data_blocks - first);
    std::span<uint8_t> part(chunk.data(), count * kVerityBlockSize);
    TRY_CTX(device.ReadAt(first * kVerityBlockSize, part),
            fmt::format("reading data blocks {}..{}", first, first + count - 1));
    for (uint64_t i = 0; i < count; ++i) {
      Sha256Digest digest = TRY(SaltedHash(
          hasher, salt,
          std::span<const uint8_t>(part.data() + i * kVerityBlockSize, kVerityBlockSize)));
      current.insert(current.end(), digest.begin(), digest.end());
    }
  }
  VerityTree result;
  if (data_blocks == 1) {
    // No hash blocks at all: the kernel compares the one block's hash with
    // the root hash directly (zero levels), and so does veritysetup.
    std::copy(current.begin(), current.end(), result.root_hash.begin());
    return result;
  }
  for (;;) {
    current.resize((current.size() + kVerityBlockSize - 1) / kVerityBlockSize * kVerityBlockSize,
                   0);
    levels.push_back(current);
    if (current.size() == kVerityBlockSize) break;
    std::vector<uint8_t> above;
    for (size_t at = 0; at < current.size(); at += kVerityBlockSize) {
      Sha256Digest digest = TRY(SaltedHash(
          hasher, salt, std::span<const uint8_t>(current.data() + at, kVerityBlockSize)));
      above.insert(above.end(), digest.begin(), digest.end());
    }
    current = std::move(above);
  }
  result.root_hash = TRY(SaltedHash(hasher, salt, levels.back()));
  for (auto level = levels.rbegin(); level != levels.rend(); ++level) {
    result.tree.insert(result.tree.end(), level->begin(), level->end());
  }
  return result;
}

Result<void> CheckVerity(BlockDeviceInterface& device, const VerityParams& params) {
  VerityTree computed = TRY(ComputeVerityTree(device, params.data_blocks, params.salt));
  if (computed.root_hash != params.root_hash) {
    return Error::Make(
        ErrorCode::kVerificationFailed,
        fmt::format("the {} data blocks hash to root {}, not the expected {}", params.data_blocks,
                    HexEncode(computed.root_hash), HexEncode(params.root_hash)));
  }
  if (device.size() < params.hash_offset ||
      device.size() - params.hash_offset < computed.tree.size()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("the device has {} bytes: no room for the {}-byte hash tree at "
                                   "{}",
                                   device.size(), computed.tree.size(), params.hash_offset));
  }
  std::vector<uint8_t> stored(computed.tree.size());
  TRY_CTX(device.ReadAt(params.hash_offset, stored), "reading the stored hash tree");
  if (stored != computed.tree) {
    size_t at = 0;
    while (stored[at] == computed.tree[at]) ++at;
    return Error::Make(ErrorCode::kVerificationFailed,
                       fmt::format("the stored hash tree differs from the data's at byte {} "
                                   "(offset {}): dm-verity would refuse these blocks",
                                   at, params.hash_offset + at));
  }
  return {};
}

std::string VerityTableParams(const VerityParams& params, uint32_t major, uint32_t minor) {
  // <version> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
  // <num_data_blocks> <hash_start_block> <algorithm> <digest> <salt>
  return fmt::format("1 {0}:{1} {0}:{1} {2} {2} {3} {4} sha256 {5} {6}", major, minor,
                     kVerityBlockSize, params.data_blocks, params.hash_offset / kVerityBlockSize,
                     HexEncode(params.root_hash), HexEncode(params.salt));
}

Result<std::string> OpenVerityDevice(const std::string& name, const std::string& device,
                                     const VerityParams& params) {
  if (name.empty() || name.size() >= DM_NAME_LEN || name.find('/') != std::string::npos) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("'{}' is no device-mapper name", name));
  }
  struct stat st {};
  if (::stat(device.c_str(), &st) != 0)
    return Error::FromErrno(fmt::format("stat {}", device), errno);
  if (!S_ISBLK(st.st_mode)) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("{} is not a block device", device));
  }
  UniqueFd control = TRY(OpenControl());

  DmRequest create(name, 0);
  TRY(DmCall(control.get(), DM_DEV_CREATE, create, "create"));
  dev_t mapped = static_cast<dev_t>(create.io->dev);
  auto fail = [&](Error error) -> Result<std::string> {
    DmRequest remove(name, 0);
    IgnoreError(DmCall(control.get(), DM_DEV_REMOVE, remove, "remove"));
    return error.WithContext(fmt::format("mapping {} through dm-verity", device));
  };

  std::string table = VerityTableParams(params, ::major(st.st_rdev), ::minor(st.st_rdev));
  size_t spec_size = (sizeof(dm_target_spec) + table.size() + 1 + 7) / 8 * 8;
  DmRequest load(name, spec_size);
  load.io->target_count = 1;
  load.io->flags = DM_READONLY_FLAG;
  auto* spec = reinterpret_cast<dm_target_spec*>(load.payload());
  spec->sector_start = 0;
  spec->length = params.data_blocks * (kVerityBlockSize / 512);
  spec->next = static_cast<uint32_t>(spec_size);
  std::memcpy(spec->target_type, "verity", sizeof("verity"));
  std::memcpy(load.payload() + sizeof(dm_target_spec), table.c_str(), table.size() + 1);
  if (auto loaded = DmCall(control.get(), DM_TABLE_LOAD, load, "table load"); !loaded) {
    return fail(loaded.error().WithContext(
        "is dm-verity loaded, and do the parameters fit the partition?"));
  }
  DmRequest resume(name, 0);  // DM_DEV_SUSPEND without DM_SUSPEND_FLAG: activate the table
  if (auto resumed = DmCall(control.get(), DM_DEV_SUSPEND, resume, "resume"); !resumed) {
    return fail(resumed.error());
  }
  std::string node = fmt::format("{}/{}", kMapperDir, name);
  if (::mknod(node.c_str(), S_IFBLK | 0400, mapped) != 0) {
    return fail(Error::FromErrno(fmt::format("mknod {}", node), errno));
  }
  return node;
}

Result<void> CloseVerityDevice(const std::string& name) {
  UniqueFd control = TRY(OpenControl());
  std::string node = fmt::format("{}/{}", kMapperDir, name);
  if (::unlink(node.c_str()) != 0 && errno != ENOENT) {
    return Error::FromErrno(fmt::format("unlink {}", node), errno);
  }
  DmRequest remove(name, 0);
  return DmCall(control.get(), DM_DEV_REMOVE, remove, "remove");
}

}  // namespace ralph
