#include "recovery/probe.h"

#include <fmt/format.h>

#include <array>

#include "drivers/verity.h"
#include "platform/arch.h"
#include "platform/sha256.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/bundle/byte_source.h"
#include "services/ota/bundle/signature.h"

namespace ralph::recovery {

namespace {

constexpr uint64_t kSquashfsPad = 4096;
constexpr size_t kSuperblockBytes = 96;

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

Result<uint64_t> SquashfsImageSize(BlockDeviceInterface& slot) {
  if (slot.size() < kSuperblockBytes) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("{} bytes: too small for a squashfs superblock", slot.size()));
  }
  std::array<uint8_t, kSuperblockBytes> head{};
  TRY_CTX(slot.ReadAt(0, head), "reading the superblock");
  if (!(head[0] == 'h' && head[1] == 's' && head[2] == 'q' && head[3] == 's')) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("no squashfs magic (found {:02x}{:02x}{:02x}{:02x})", head[0],
                                   head[1], head[2], head[3]));
  }
  uint64_t used = ReadLe64(head.data() + 40);
  if (used < kSuperblockBytes || used > slot.size()) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("squashfs superblock says {} bytes used, the partition has {}",
                                   used, slot.size()));
  }
  uint64_t padded = (used + kSquashfsPad - 1) / kSquashfsPad * kSquashfsPad;
  return padded > slot.size() ? used : padded;
}

Result<uint64_t> SlotImageSize(BlockDeviceInterface& slot) {
  uint64_t squashfs = TRY(SquashfsImageSize(slot));
  if (squashfs % kVerityBlockSize != 0) return squashfs;
  uint64_t with_tree = squashfs + VerityTreeBytes(squashfs / kVerityBlockSize);
  return with_tree > slot.size() ? squashfs : with_tree;
}

SlotFacts CheckSlotContent(boot::Slot slot, BlockDeviceInterface* device,
                           const std::string& open_problem,
                           const std::optional<boot::SlotRecord>& record,
                           const BundleFacts& factory) {
  SlotFacts facts;
  facts.slot = slot;
  facts.record = record;
  if (device == nullptr) {
    facts.content = SlotContent::kUnreadable;
    facts.detail = open_problem;
    return facts;
  }
  auto size = SlotImageSize(*device);
  if (!size) {
    facts.content = size.error().code() == ErrorCode::kCorrupt ? SlotContent::kNotAnImage
                                                               : SlotContent::kUnreadable;
    facts.detail = size.error().ToString();
    return facts;
  }
  static const Sha256Digest kNone{};
  if (!record || record->digest == kNone) {
    facts.content = SlotContent::kUnverified;
    facts.detail = fmt::format("squashfs image and hash tree of {} bytes", *size);
    return facts;
  }
  uint64_t length = *size;
  if (factory.health == BundleHealth::kValid && record->digest == factory.rootfs_sha256 &&
      factory.rootfs_size <= device->size()) {
    length = factory.rootfs_size;
  }
  auto digest = HashRange(*device, 0, length);
  if (!digest) {
    facts.content = SlotContent::kUnreadable;
    facts.detail = digest.error().ToString();
    return facts;
  }
  if (*digest == record->digest) {
    facts.content = SlotContent::kMatches;
    facts.detail = fmt::format("sha256 {} over {} bytes", DigestToHex(*digest), length);
  } else {
    facts.content = SlotContent::kMismatch;
    facts.detail = fmt::format("sha256 {} over {} bytes, recorded {}", DigestToHex(*digest), length,
                               DigestToHex(record->digest));
  }
  return facts;
}

BundleFacts CheckBundle(const std::string& path, const std::string& keyring_path,
                        const ota::DeviceIdentity& identity) {
  BundleFacts facts;
  facts.path = path;
  auto source = ota::FileSource::Open(path);
  if (!source) {
    facts.health = source.error().code() == ErrorCode::kNotFound ? BundleHealth::kMissing
                                                                 : BundleHealth::kInvalid;
    facts.detail = source.error().ToString();
    return facts;
  }
  auto keyring = ota::Keyring::Load(keyring_path);
  if (!keyring) {
    facts.health = BundleHealth::kInvalid;
    facts.detail = keyring.error().WithContext("loading the keyring").ToString();
    return facts;
  }
  auto opened = ota::OpenBundle(**source, *keyring);
  if (!opened) {
    facts.health = BundleHealth::kInvalid;
    facts.detail = opened.error().ToString();
    return facts;
  }
  const ota::Manifest& manifest = opened->manifest;
  std::string arch = identity.arch.empty() ? std::string(arch::Name()) : identity.arch;
  const ota::Payload* rootfs = manifest.Find(ota::PayloadType::kSystemImage);
  if (manifest.kind != ota::BundleKind::kSystem || rootfs == nullptr ||
      manifest.Find(ota::PayloadType::kUki) == nullptr) {
    facts.health = BundleHealth::kIncompatible;
    facts.detail = fmt::format("a {} bundle, not a system bundle with an image and a UKI",
                               ota::BundleKindName(manifest.kind));
    return facts;
  }
  if (manifest.product != identity.product || manifest.arch != arch) {
    facts.health = BundleHealth::kIncompatible;
    facts.detail = fmt::format("for {} on {}, this is {} on {}", manifest.product, manifest.arch,
                               identity.product, arch);
    return facts;
  }
  facts.health = BundleHealth::kValid;
  facts.version = manifest.version;
  facts.rootfs_sha256 = rootfs->sha256;
  facts.rootfs_size = rootfs->size;
  facts.detail = fmt::format("signed by {}", opened->signer.subject);
  return facts;
}

}  // namespace ralph::recovery
