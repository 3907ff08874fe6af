// The bundle manifest: what a bundle contains and what it may be installed on.
//
// The manifest is XML (tinyxml2), signed as exact bytes (see signature.h), so
// the parser sees it only after the signature has been checked; it is still
// strict because it is also the fuzz target (tests/ota/fuzz): every element
// and attribute is known, every number is bounds-checked, and anything else
// is rejected with an error naming the offending element/attribute.
//
//   <?xml version="1.0" encoding="UTF-8"?>
//   <ralph-bundle format="1">
//     <version>1.4.0</version>
//     <compatible product="ralphos" arch="x86_64"/>
//     <minimum-version install-from="1.0.0" raise-to="1.2.0"/>   (optional)
//     <payload name="rootfs" type="system-image" offset="4096" size="..."
//              sha256="<64 hex>" chunk-size="1048576">
//       <chunk sha256="<64 hex>"/> ... one per chunk, in order
//     </payload>
//     <payload name="uki" type="uki" .../>
//   </ralph-bundle>
//
// An agent-image bundle (docs/ota.md "Agent-image bundles") says so in its
// root element, inside the signed bytes, and carries one payload:
//
//   <ralph-bundle format="1" kind="agent-image">
//     <version>2026.12.7</version>
//     <compatible product="ralphos" arch="x86_64"/>
//     <payload name="agent-image" type="agent-image" .../>
//   </ralph-bundle>
//
// A system bundle has no kind attribute (one spelling per meaning), so its
// bytes are what they were before agent-image bundles existed.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "platform/sha256.h"
#include "platform/version.h"

namespace ralph::ota {

inline constexpr uint32_t kManifestFormatVersion = 1;
// Chunk sizes are powers of two in this range (4 KiB keeps O_DIRECT aligned;
// 64 MiB bounds the writer's buffer).
inline constexpr uint32_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;
// Payload offsets in the bundle file are aligned to this.
inline constexpr uint64_t kPayloadAlignment = 4096;

using Digest = Sha256Digest;

// The manifest's versions: ralph::Version (platform/version.h), the same
// type as a slot record's.
using ::ralph::Version;

enum class PayloadType { kSystemImage, kUki, kAgentImage };
std::string_view PayloadTypeName(PayloadType type);

// What a bundle updates: the system (a slot: system image + UKI) or the
// agent image on VAR (one squashfs). The OS installer refuses an agent-image
// bundle and the agent-image installer a system bundle, each by name.
enum class BundleKind { kSystem, kAgentImage };
std::string_view BundleKindName(BundleKind kind);

struct Payload {
  std::string name;  // [a-z0-9-]{1,32}, unique within the bundle
  PayloadType type = PayloadType::kSystemImage;
  uint64_t offset = 0;  // byte offset in the bundle file, kPayloadAlignment-aligned
  uint64_t size = 0;    // bytes, > 0
  Digest sha256{};      // of the whole payload
  uint32_t chunk_size = kDefaultChunkSize;
  std::vector<Digest> chunks;  // SHA-256 of each chunk; the last may be short

  uint64_t ChunkCount() const { return (size + chunk_size - 1) / chunk_size; }
  // Size of chunk `index` (chunk_size, or the remainder for the last one).
  uint64_t ChunkLength(uint64_t index) const;
};

struct Manifest {
  uint32_t format = kManifestFormatVersion;
  BundleKind kind = BundleKind::kSystem;
  Version version;
  std::string product;  // compatible product, [A-Za-z0-9._-]{1,64}
  std::string arch;     // "x86_64" / "aarch64"
  // The running system must be at least this version to install the bundle.
  std::optional<Version> install_from;
  // On commit the device's anti-rollback minimum is raised to this (must not
  // exceed `version`).
  std::optional<Version> raise_minimum_to;
  std::vector<Payload> payloads;  // in file order (ascending offsets)

  // The payload of the given type; nullptr when absent.
  const Payload* Find(PayloadType type) const;
};

// Upper bound on the manifest size the parser accepts (a 64 GiB image with
// 1 MiB chunks needs ~6 MiB).
inline constexpr uint64_t kMaxManifestSize = 16u << 20;

// Parses and validates manifest bytes. kCorrupt with a message naming the
// element/attribute on any deviation from the format above: unknown element
// or attribute, missing required one, bad number, chunk count not matching
// size/chunk-size, unaligned/overlapping/descending offsets, duplicate names,
// a payload set that is not the kind's (system: one system-image and one uki;
// agent-image: one agent-image payload and nothing else).
Result<Manifest> ParseManifest(std::string_view xml);

// Serialises a manifest in the format above (deterministic output).
// kInvalidArgument when the manifest would not pass ParseManifest.
Result<std::string> SerializeManifest(const Manifest& manifest);

// Checks the semantic rules ParseManifest enforces (offsets, sizes, chunk
// counts, payload set). kCorrupt naming the first violation.
Result<void> ValidateManifest(const Manifest& manifest);

}  // namespace ralph::ota
