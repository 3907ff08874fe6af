// dm-verity for the read-only root images (SYSTEM_A, SYSTEM_B, RECOVERY):
// the parameters ralph-mkimage puts on a UKI's command line (inside the
// image the firmware verifies), their parser, and the device-mapper target
// early boot opens a root through.
//
// One format only: hash format version 1 (cryptsetup's default), SHA-256,
// 4096-byte data and hash blocks, a 32-byte salt, no verity superblock (all
// of it is on the command line). The hash tree lives on the same partition
// as the data, at `hash_offset` bytes, right after the (4 KiB padded) image:
//
//   | squashfs, zero-padded to 4 KiB | hash tree (veritysetup format) | unused |
//   0                       data_blocks * 4096 = hash_offset
//
// Command-line keys (all four or none; docs/image.md "Verified roots"):
//   ralph.verity.roothash=<64 hex>   the tree's root hash
//   ralph.verity.salt=<64 hex>       the salt every block hash starts with
//   ralph.verity.data_blocks=<n>     4 KiB blocks the mapping exposes
//   ralph.verity.hash_offset=<bytes> where the tree starts (4 KiB aligned)
//
// The mapping is opened with the device-mapper ioctls directly (no
// libdevmapper, no veritysetup in the initrd): three ioctls on
// /dev/mapper/control, the table line is the kernel's documented verity
// format, and nothing is added to the initrd but dm-mod and dm-verity. No
// optional arguments: a block whose hash does not match is an I/O error to
// the reader (the kernel's default; never ignore_corruption).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "platform/sha256.h"

namespace ralph {

class BlockDeviceInterface;

inline constexpr uint64_t kVerityBlockSize = 4096;

struct VerityParams {
  Sha256Digest root_hash{};
  Sha256Digest salt{};
  uint64_t data_blocks = 0;
  uint64_t hash_offset = 0;  // bytes; a multiple of kVerityBlockSize, >= data_blocks * 4096

  bool operator==(const VerityParams&) const = default;
};

// The ralph.verity.* words of a kernel command line. nullopt when none of
// the four keys is there; kInvalidArgument naming the key when one is
// repeated, malformed or missing while others are there, or when the tree
// would overlap the data.
Result<std::optional<VerityParams>> ParseVerityCmdline(std::string_view cmdline);
// The four words, space-separated, in the order above.
std::string RenderVerityCmdline(const VerityParams& params);

// The hash tree of the first `data_blocks` 4 KiB blocks of `device`, computed
// in userspace exactly as veritysetup stores it (format 1: every hash is
// SHA-256(salt || block), a hash block holds 128 hashes and is zero-padded,
// the top level first): `tree` is what belongs at hash_offset. What the
// OTA writer and recovery check a slot with before trusting it; the kernel
// does the same per block at read time.
struct VerityTree {
  Sha256Digest root_hash{};
  std::vector<uint8_t> tree;
};
Result<VerityTree> ComputeVerityTree(BlockDeviceInterface& device, uint64_t data_blocks,
                                     const Sha256Digest& salt);
// The bytes of the tree ComputeVerityTree makes over `data_blocks` blocks
// (0 for a single block: its hash is the root hash). Recovery uses it to
// know where a slot image ends (the squashfs, then its tree).
uint64_t VerityTreeBytes(uint64_t data_blocks);
// Checks `device` against `params`: the data hashes to the root hash and the
// stored tree is the computed one. kVerificationFailed naming which (the
// root hash: the data or the parameters are wrong; the tree: the data is
// right but dm-verity would refuse it); kInvalidArgument when the device is
// too small for the data and tree.
Result<void> CheckVerity(BlockDeviceInterface& device, const VerityParams& params);

// The verity target's table parameters for a data/hash device `major:minor`
// (kernel Documentation/admin-guide/device-mapper/verity.rst).
std::string VerityTableParams(const VerityParams& params, uint32_t major, uint32_t minor);

// Maps `device` (a block device holding data and tree) through dm-verity as
// the read-only device-mapper device `name`, and returns the path of a block
// device node for it (/dev/mapper/<name>, made here: the initrd runs no
// udev). Needs dm-mod and dm-verity loaded. On failure nothing is left
// mapped. The root hash is checked by the kernel when blocks are read, not
// here: a wrong one makes every read an I/O error.
Result<std::string> OpenVerityDevice(const std::string& name, const std::string& device,
                                     const VerityParams& params);
// Removes the mapping `name` (and the node OpenVerityDevice made).
Result<void> CloseVerityDevice(const std::string& name);

}  // namespace ralph
