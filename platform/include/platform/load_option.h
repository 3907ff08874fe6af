// EFI_LOAD_OPTION (Boot####) encoding and decoding, and the BootOrder /
// BootNext / BootCurrent helpers. Implemented with libefiboot/libefivar.
//
// The device path RalphOS writes is always
//   HD(<partition>,GPT,<partition GUID>,<start LBA>,<size LBA>)/File(<path>)
// which is what efibootmgr makes for a file on a GPT partition. Options made
// by anyone else (the firmware's own entries, a foreign OS) parse with
// `file` empty and `hard_drive` unset when their device path has another
// shape; they are kept, never rewritten.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "platform/efi_vars.h"
#include "platform/result.h"

namespace ralph {

inline constexpr uint32_t kLoadOptionActive = 0x1;

struct HardDriveNode {
  uint32_t partition_number = 0;  // 1-based GPT entry number
  uint64_t start_lba = 0;
  uint64_t size_lba = 0;
  std::array<uint8_t, 16> partition_guid{};  // EFI_GUID memory order
  friend bool operator==(const HardDriveNode&, const HardDriveNode&) = default;
};

struct LoadOption {
  uint32_t attributes = kLoadOptionActive;
  std::string description;  // "RalphOS A"
  std::optional<HardDriveNode> hard_drive;
  std::string file;                  // "\EFI\ralph\a.efi"; empty if none
  std::vector<uint8_t> device_path;  // the raw device path list, as stored
  std::vector<uint8_t> optional_data;
};

// Encodes an EFI_LOAD_OPTION with the HD()/File() device path above.
// kInvalidArgument when hard_drive is unset, file is empty or not an
// absolute backslash path in printable ASCII, or the description is not
// UTF-8 within the Basic Multilingual Plane (UCS-2).
Result<std::vector<uint8_t>> EncodeLoadOption(const LoadOption& option);
// Decodes any EFI_LOAD_OPTION; kCorrupt when the bytes are not one.
Result<LoadOption> DecodeLoadOption(std::span<const uint8_t> data);

// The device path in UEFI text form, as efibootmgr prints it:
// "HD(1,GPT,<guid>,0x800,0x1000)/File(\EFI\ralph\a.efi)". kCorrupt when the
// bytes are not a device path. For status displays and logs.
Result<std::string> FormatDevicePath(std::span<const uint8_t> device_path);

// "Boot0003" for 3.
std::string BootEntryName(uint16_t number);
// 3 for "Boot0003"; nullopt for anything else (BootOrder, BootNext, Boot00G1).
std::optional<uint16_t> ParseBootEntryName(std::string_view name);

// BootOrder is an array of little-endian uint16; BootNext and BootCurrent
// are a single one. kCorrupt on odd lengths.
Result<std::vector<uint16_t>> DecodeBootOrder(std::span<const uint8_t> data);
std::vector<uint8_t> EncodeBootOrder(std::span<const uint16_t> order);
Result<uint16_t> DecodeBootNumber(std::span<const uint8_t> data);
std::vector<uint8_t> EncodeBootNumber(uint16_t number);

}  // namespace ralph
