// Reading the facts recovery decides from (recovery/decide.h) that are not
// the slot manager's: what a slot partition holds, and whether a bundle can
// be restored from. Each works on an interface or a path, so the tests run
// them on fake block devices and bundles made by the bundle library.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "boot/slot_state.h"
#include "drivers/block_device.h"
#include "platform/result.h"
#include "recovery/decide.h"
#include "services/ota/installer.h"

namespace ralph::recovery {

// Bytes a squashfs image occupies at the start of `slot`: the superblock's
// bytes_used (offset 40) rounded up to 4 KiB, as mksquashfs pads its output
// and so as the bundle carries it. kCorrupt when the device holds no
// squashfs superblock ("no squashfs magic (found 00000000)") or the image
// would not fit the device; I/O errors as read.
Result<uint64_t> SquashfsImageSize(BlockDeviceInterface& slot);
// Bytes a slot image occupies: the padded squashfs and the dm-verity hash
// tree right after it (drivers/verity.h; what ralph-mkimage exports and a
// bundle carries, so what the OTA writer's recorded digest covers). The
// squashfs alone when the tree would not fit the device.
Result<uint64_t> SlotImageSize(BlockDeviceInterface& slot);

// What `slot` holds against its `record`. The image size comes from the
// squashfs superblock, or from `factory` when the recorded digest is the
// factory bundle's (its exact payload size). `device` null: kUnreadable
// with `open_problem` as the detail.
SlotFacts CheckSlotContent(boot::Slot slot, BlockDeviceInterface* device,
                           const std::string& open_problem,
                           const std::optional<boot::SlotRecord>& record,
                           const BundleFacts& factory);

// Opens `path` and verifies its signature against `keyring_path` (file or
// directory of PEM certificates); the manifest must be a system bundle for
// `identity` (empty arch: this machine's). Never fails: what went wrong is
// the health and detail.
BundleFacts CheckBundle(const std::string& path, const std::string& keyring_path,
                        const ota::DeviceIdentity& identity);

}  // namespace ralph::recovery
