// The bundle file: header + manifest + CMS signature + payloads.
//
//   offset 0   header (64 bytes, little-endian):
//                0  magic "RALPHBDL"
//                8  u32 format version (1)
//               12  u32 header size (64)
//               16  u64 manifest length
//               24  u64 signature length
//               32  32 reserved bytes, zero
//   offset 64  manifest (XML, manifest.h), exactly `manifest length` bytes
//   then       signature (DER CMS, detached, over the exact manifest bytes)
//   then       payloads at the 4 KiB-aligned offsets the manifest gives,
//              ascending; the file ends where the last payload ends.
//
// The header is not signed; it only locates the manifest and signature, and
// anything it gets wrong makes the signature check fail. Everything else is
// covered by the signature (the manifest) or by the manifest's digests
// (payloads).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "platform/result.h"
#include "services/ota/bundle/byte_source.h"
#include "services/ota/bundle/manifest.h"
#include "services/ota/bundle/signature.h"

namespace ralph::ota {

inline constexpr std::array<uint8_t, 8> kBundleMagic = {'R', 'A', 'L', 'P', 'H', 'B', 'D', 'L'};
inline constexpr uint32_t kBundleFormatVersion = 1;
inline constexpr uint32_t kBundleHeaderSize = 64;
inline constexpr uint64_t kMaxSignatureSize = 1u << 20;

struct BundleHeader {
  uint32_t format_version = kBundleFormatVersion;
  uint64_t manifest_length = 0;
  uint64_t signature_length = 0;

  uint64_t manifest_offset() const { return kBundleHeaderSize; }
  uint64_t signature_offset() const { return kBundleHeaderSize + manifest_length; }
  uint64_t signature_end() const { return signature_offset() + signature_length; }
};

std::array<uint8_t, kBundleHeaderSize> EncodeBundleHeader(const BundleHeader& header);
// kCorrupt on a bad magic, unknown version, non-zero reserved bytes, lengths
// over their limits, or manifest + signature running past `file_size`.
Result<BundleHeader> DecodeBundleHeader(std::span<const uint8_t> bytes, uint64_t file_size);

// Checks that the manifest's payloads lie in the file: after the signature,
// and the last one ending exactly at `file_size` (a shorter file is
// "truncated", a longer one has trailing data). kCorrupt otherwise.
Result<void> CheckPayloadBounds(const Manifest& manifest, const BundleHeader& header,
                                uint64_t file_size);

struct OpenedBundle {
  BundleHeader header;
  std::vector<uint8_t> manifest_bytes;
  std::vector<uint8_t> signature;
  Manifest manifest;  // parsed only after the signature verified
  SignerInfo signer;
};

// Reads the header, manifest and signature from `source`, verifies the
// signature against `keyring` BEFORE parsing the manifest, then parses it and
// checks payload bounds against the source size. Payload bytes are not read.
Result<OpenedBundle> OpenBundle(ByteSourceInterface& source, const Keyring& keyring);

// Same, without a keyring: the signature is not verified (for `ralph-bundle
// info` without --keyring). The signer is read but not trusted.
Result<OpenedBundle> OpenBundleUnverified(ByteSourceInterface& source);

struct CreateOptions {
  std::string cert_path;
  std::string key_path;
  std::string extra_certs_path;  // optional intermediates
  Version version;
  std::string product;
  std::string arch;
  std::optional<Version> install_from;
  std::optional<Version> raise_minimum_to;
  // kSystem: rootfs_path and uki_path; kAgentImage: agent_image_path.
  BundleKind kind = BundleKind::kSystem;
  std::string rootfs_path;
  std::string uki_path;
  std::string agent_image_path;
  uint32_t chunk_size = kDefaultChunkSize;
  std::string output_path;
  // The CMS signingTime (seconds since the epoch); unset: now. See
  // SignDetached: reproducible factory bundles.
  std::optional<int64_t> signing_time;
};

// Builds a bundle: hashes each payload in chunks (bounded memory), writes the
// signed manifest and copies the payloads. Writes to output_path + ".tmp" and
// renames on success.
Result<Manifest> CreateBundle(const CreateOptions& options);

}  // namespace ralph::ota
