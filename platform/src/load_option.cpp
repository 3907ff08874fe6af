#include "platform/load_option.h"

// libefiboot's headers use C99 flexible arrays and GNU statement expressions;
// they compile as C++ with g++ but are not warning-clean under -Wpedantic.
extern "C" {
#include <efiboot.h>
}

#include <cstring>

#include <fmt/format.h>

#include "efivar_handles.h"
#include "platform/hex.h"

namespace ralph {
namespace {

// EFI_LOAD_OPTION (UEFI spec 2.10, section 3.1.3):
//   UINT32 Attributes; UINT16 FilePathListLength; CHAR16 Description[];
//   EFI_DEVICE_PATH_PROTOCOL FilePathList[]; UINT8 OptionalData[];
constexpr size_t kFixedHeaderSize = 6;
// EFI_DEVICE_PATH_PROTOCOL header: Type, SubType, UINT16 Length.
constexpr size_t kNodeHeaderSize = 4;
// Hard Drive Media Device Path: header + UINT32 PartitionNumber + UINT64
// PartitionStart + UINT64 PartitionSize + 16-byte signature + format +
// signature type (UEFI spec 10.3.5.1).
constexpr size_t kHardDriveNodeSize = 42;

uint16_t ReadLe16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | p[1] << 8);
}
uint32_t ReadLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}
uint64_t ReadLe64(const uint8_t* p) {
  return static_cast<uint64_t>(ReadLe32(p)) | static_cast<uint64_t>(ReadLe32(p + 4)) << 32;
}

Error Corrupt(std::string message) {
  return Error::Make(ErrorCode::kCorrupt, fmt::format("invalid load option: {}", message));
}

void AppendUtf8(std::string& out, uint32_t code_point) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xc0 | code_point >> 6));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  } else {
    out.push_back(static_cast<char>(0xe0 | code_point >> 12));
    out.push_back(static_cast<char>(0x80 | (code_point >> 6 & 0x3f)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  }
}

// UCS-2 (what UEFI calls CHAR16; no surrogate pairs) to UTF-8, up to the
// first NUL or the end.
Result<std::string> Ucs2ToUtf8(const uint8_t* data, size_t bytes, std::string_view what) {
  if (bytes % 2 != 0) return Corrupt(fmt::format("{} has an odd length of {} bytes", what, bytes));
  std::string out;
  for (size_t i = 0; i < bytes; i += 2) {
    uint16_t c = ReadLe16(data + i);
    if (c == 0) break;
    if (c >= 0xd800 && c <= 0xdfff) {
      return Corrupt(fmt::format("{} holds a UTF-16 surrogate (0x{:04x}), not UCS-2", what, c));
    }
    AppendUtf8(out, c);
  }
  return out;
}

// UTF-8 to UCS-2 code units (no NUL). kInvalidArgument for malformed UTF-8
// or characters outside the Basic Multilingual Plane, which UCS-2 cannot hold.
Result<std::vector<uint16_t>> Utf8ToUcs2(std::string_view text, std::string_view what) {
  std::vector<uint16_t> out;
  for (size_t i = 0; i < text.size();) {
    auto c = static_cast<unsigned char>(text[i]);
    uint32_t code_point;
    size_t length;
    if (c < 0x80) {
      code_point = c;
      length = 1;
    } else if ((c & 0xe0) == 0xc0) {
      code_point = c & 0x1f;
      length = 2;
    } else if ((c & 0xf0) == 0xe0) {
      code_point = c & 0x0f;
      length = 3;
    } else {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("{} \"{}\": byte {} is not UTF-8 for a UCS-2 character", what, text, i));
    }
    if (i + length > text.size()) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("{} \"{}\": truncated UTF-8 sequence", what, text));
    }
    for (size_t k = 1; k < length; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) {
        return Error::Make(
            ErrorCode::kInvalidArgument,
            fmt::format("{} \"{}\": bad UTF-8 continuation byte at {}", what, text, i + k));
      }
      code_point = code_point << 6 | (next & 0x3f);
    }
    if ((length == 2 && code_point < 0x80) || (length == 3 && code_point < 0x800) ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("{} \"{}\": invalid UTF-8 at byte {}", what, text, i));
    }
    out.push_back(static_cast<uint16_t>(code_point));
    i += length;
  }
  return out;
}

struct DevicePathShape {
  std::optional<HardDriveNode> hard_drive;
  std::string file;
};

// Walks the device path list with bounds checks of our own (libefivar's
// efidp_next_node trusts the node lengths) and returns the RalphOS shape
// HD(GPT)/File/End when that is what it is; empty fields otherwise.
Result<DevicePathShape> WalkDevicePath(std::span<const uint8_t> path) {
  struct Node {
    uint8_t type;
    uint8_t subtype;
    std::span<const uint8_t> bytes;
  };
  std::vector<Node> nodes;
  size_t at = 0;
  bool ended = false;
  while (at < path.size()) {
    if (path.size() - at < kNodeHeaderSize) {
      return Corrupt(fmt::format("device path node at byte {} is cut off after {} bytes", at,
                                 path.size() - at));
    }
    // efidp_header is packed, so reading it from any byte offset is fine; this
    // is how libefivar itself walks a device path held in a byte buffer.
    const_efidp node = reinterpret_cast<const_efidp>(path.data() + at);
    ssize_t length = efidp_node_size(node);
    if (length < static_cast<ssize_t>(kNodeHeaderSize)) {
      return Corrupt(fmt::format("device path node at byte {} has length {}, less than its header",
                                 at, ReadLe16(path.data() + at + 2)));
    }
    auto node_length = static_cast<size_t>(length);
    if (node_length > path.size() - at) {
      return Corrupt(fmt::format(
          "device path node at byte {} (type 0x{:02x}) claims {} bytes but only {} remain", at,
          path[at], node_length, path.size() - at));
    }
    Node parsed{static_cast<uint8_t>(efidp_type(node)), static_cast<uint8_t>(efidp_subtype(node)),
                path.subspan(at, node_length)};
    at += node_length;
    if (parsed.type == EFIDP_END_TYPE && parsed.subtype == EFIDP_END_ENTIRE) {
      ended = true;
      break;
    }
    nodes.push_back(parsed);
  }
  if (!ended) return Corrupt("device path has no End Entire node");
  if (at != path.size()) {
    return Corrupt(fmt::format("{} bytes follow the device path's End node inside its length",
                               path.size() - at));
  }

  DevicePathShape shape;
  if (nodes.size() != 2) return shape;
  const Node& hd = nodes[0];
  const Node& file = nodes[1];
  if (hd.type != EFIDP_MEDIA_TYPE || hd.subtype != EFIDP_MEDIA_HD ||
      file.type != EFIDP_MEDIA_TYPE || file.subtype != EFIDP_MEDIA_FILE) {
    return shape;
  }
  if (hd.bytes.size() != kHardDriveNodeSize) {
    return Corrupt(fmt::format("hard drive node has {} bytes, expected {}", hd.bytes.size(),
                               kHardDriveNodeSize));
  }
  const uint8_t* p = hd.bytes.data() + kNodeHeaderSize;
  uint8_t format = p[36];
  uint8_t signature_type = p[37];
  if (format != EFIDP_HD_FORMAT_GPT || signature_type != EFIDP_HD_SIGNATURE_GUID) return shape;
  HardDriveNode node;
  node.partition_number = ReadLe32(p);
  node.start_lba = ReadLe64(p + 4);
  node.size_lba = ReadLe64(p + 12);
  std::memcpy(node.partition_guid.data(), p + 20, 16);
  std::string name = TRY(Ucs2ToUtf8(file.bytes.data() + kNodeHeaderSize,
                                    file.bytes.size() - kNodeHeaderSize, "file path node"));
  shape.hard_drive = node;
  shape.file = std::move(name);
  return shape;
}

Result<void> CheckFilePath(const std::string& file) {
  if (file.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument, "load option has no file path");
  }
  if (file.front() != '\\' || file.find('/') != std::string::npos) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("load option file path \"{}\" must be absolute with "
                                   "backslashes, like \\EFI\\ralph\\a.efi",
                                   file));
  }
  for (unsigned char c : file) {
    if (c < 0x20 || c >= 0x80) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("load option file path \"{}\" must be printable ASCII", file));
    }
  }
  return {};
}

}  // namespace

Result<std::vector<uint8_t>> EncodeLoadOption(const LoadOption& option) {
  if (!option.hard_drive) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("load option \"{}\" has no hard drive node", option.description));
  }
  TRY(CheckFilePath(option.file));
  if (option.description.find('\0') != std::string::npos) {
    return Error::Make(ErrorCode::kInvalidArgument, "load option description contains NUL");
  }
  const HardDriveNode& hd = *option.hard_drive;

  // Each efidp_make_* returns the size it needs when given no buffer.
  std::array<uint8_t, 16> signature = hd.partition_guid;
  std::string file = option.file;
  ssize_t hd_size = efidp_make_hd(nullptr, 0, hd.partition_number, hd.start_lba, hd.size_lba,
                                  signature.data(), EFIDP_HD_FORMAT_GPT, EFIDP_HD_SIGNATURE_GUID);
  ssize_t file_size = efidp_make_file(nullptr, 0, file.data());
  ssize_t end_size =
      efidp_make_generic(nullptr, 0, EFIDP_END_TYPE, EFIDP_END_ENTIRE, sizeof(efidp_header));
  if (hd_size < 0 || file_size < 0 || end_size < 0) {
    efivar::ClearErrorStack();
    return Error::FromErrno(ErrorCode::kInternal, "sizing the device path", errno);
  }
  std::vector<uint8_t> path(static_cast<size_t>(hd_size + file_size + end_size));
  uint8_t* cursor = path.data();
  if (efidp_make_hd(cursor, hd_size, hd.partition_number, hd.start_lba, hd.size_lba,
                    signature.data(), EFIDP_HD_FORMAT_GPT, EFIDP_HD_SIGNATURE_GUID) != hd_size ||
      efidp_make_file(cursor + hd_size, file_size, file.data()) != file_size ||
      efidp_make_generic(cursor + hd_size + file_size, end_size, EFIDP_END_TYPE, EFIDP_END_ENTIRE,
                         sizeof(efidp_header)) != end_size) {
    efivar::ClearErrorStack();
    return Error::FromErrno(ErrorCode::kInternal, "building the device path", errno);
  }
  if (path.size() > UINT16_MAX) {
    return Error::Make(ErrorCode::kInvalidArgument, "device path longer than 65535 bytes");
  }

  // libefiboot 37 converts the UTF-8 description to UCS-2 itself, but gets
  // three-byte sequences wrong (U+2192 comes out as U+0992). So it is given
  // an ASCII placeholder of the same length, and our own UCS-2 is put in its
  // place afterwards; the layout does not change.
  std::vector<uint16_t> ucs2 = TRY(Utf8ToUcs2(option.description, "load option description"));
  std::string description(ucs2.size(), '?');
  auto* desc = reinterpret_cast<unsigned char*>(description.data());
  auto* dp = reinterpret_cast<efidp>(path.data());
  std::vector<uint8_t> optional = option.optional_data;
  uint8_t* optional_ptr = optional.empty() ? nullptr : optional.data();
  ssize_t size =
      efi_loadopt_create(nullptr, 0, option.attributes, dp, static_cast<ssize_t>(path.size()), desc,
                         optional_ptr, optional.size());
  if (size <= 0) {
    efivar::ClearErrorStack();
    return Error::FromErrno(ErrorCode::kInternal, "sizing the load option", errno);
  }
  std::vector<uint8_t> out(static_cast<size_t>(size));
  if (efi_loadopt_create(out.data(), size, option.attributes, dp, static_cast<ssize_t>(path.size()),
                         desc, optional_ptr, optional.size()) != size) {
    efivar::ClearErrorStack();
    return Error::FromErrno(ErrorCode::kInternal, "building the load option", errno);
  }
  if (out.size() < kFixedHeaderSize + 2 * (ucs2.size() + 1)) {
    return Error::Make(ErrorCode::kInternal, "libefiboot made a load option without description");
  }
  for (size_t i = 0; i < ucs2.size(); ++i) {
    out[kFixedHeaderSize + 2 * i] = static_cast<uint8_t>(ucs2[i] & 0xff);
    out[kFixedHeaderSize + 2 * i + 1] = static_cast<uint8_t>(ucs2[i] >> 8);
  }
  return out;
}

Result<LoadOption> DecodeLoadOption(std::span<const uint8_t> data) {
  // Structure first, with our own bounds checks: libefiboot's accessors
  // assume a well-formed option.
  if (data.size() < kFixedHeaderSize) {
    return Corrupt(
        fmt::format("{} bytes is shorter than the 6-byte header (attributes + "
                    "device path length)",
                    data.size()));
  }
  uint16_t path_length = ReadLe16(data.data() + 4);
  size_t desc_end = 0;
  for (size_t i = kFixedHeaderSize; i + 1 < data.size(); i += 2) {
    if (data[i] == 0 && data[i + 1] == 0) {
      desc_end = i + 2;
      break;
    }
  }
  if (desc_end == 0) return Corrupt("the description has no terminating NUL");
  if (path_length == 0) return Corrupt("the device path is empty (length 0)");
  if (desc_end + path_length > data.size()) {
    return Corrupt(fmt::format(
        "device path length {} runs past the end of the {}-byte option (description ends at {})",
        path_length, data.size(), desc_end));
  }
  std::span<const uint8_t> path = data.subspan(desc_end, path_length);
  DevicePathShape shape = TRY(WalkDevicePath(path));

  // Now libefiboot's accessors are safe on these bytes. They take non-const
  // pointers but do not write through them.
  std::vector<uint8_t> copy(data.begin(), data.end());
  auto* opt = reinterpret_cast<efi_load_option*>(copy.data());
  auto limit = static_cast<ssize_t>(copy.size());
  if (!efi_loadopt_is_valid(opt, copy.size())) {
    efivar::ClearErrorStack();
    return Corrupt("libefiboot rejects its device path");
  }
  LoadOption option;
  option.attributes = efi_loadopt_attrs(opt);
  // efi_loadopt_desc converts to UTF-8 into a buffer libefiboot owns and
  // frees on the next call: copy it out at once.
  const unsigned char* desc = efi_loadopt_desc(opt, limit);
  if (!desc) {
    efivar::ClearErrorStack();
    return Corrupt("the description is not valid UCS-2");
  }
  option.description = reinterpret_cast<const char*>(desc);
  efidp dp = efi_loadopt_path(opt, limit);
  uint16_t libefiboot_path_length = efi_loadopt_pathlen(opt, limit);
  if (!dp || libefiboot_path_length != path_length) {
    efivar::ClearErrorStack();
    return Error::Make(ErrorCode::kInternal, "libefiboot disagrees on the device path bounds");
  }
  option.device_path.assign(path.begin(), path.end());
  option.hard_drive = shape.hard_drive;
  option.file = std::move(shape.file);
  unsigned char* optional = nullptr;
  size_t optional_size = 0;
  if (efi_loadopt_optional_data(opt, copy.size(), &optional, &optional_size) < 0) {
    efivar::ClearErrorStack();
    return Corrupt("the optional data bounds are invalid");
  }
  if (optional && optional_size > 0)
    option.optional_data.assign(optional, optional + optional_size);
  return option;
}

Result<std::string> FormatDevicePath(std::span<const uint8_t> device_path) {
  TRY(WalkDevicePath(device_path));
  std::vector<uint8_t> copy(device_path.begin(), device_path.end());
  auto dp = reinterpret_cast<const_efidp>(copy.data());
  auto limit = static_cast<ssize_t>(copy.size());
  ssize_t needed = efidp_format_device_path(nullptr, 0, dp, limit);
  if (needed < 0) {
    efivar::ClearErrorStack();
    return Corrupt("libefivar cannot format the device path");
  }
  std::string text(static_cast<size_t>(needed) + 1, '\0');
  if (efidp_format_device_path(text.data(), text.size(), dp, limit) < 0) {
    efivar::ClearErrorStack();
    return Corrupt("libefivar cannot format the device path");
  }
  text.resize(std::strlen(text.c_str()));
  return text;
}

std::string BootEntryName(uint16_t number) {
  return fmt::format("Boot{:04X}", number);
}

std::optional<uint16_t> ParseBootEntryName(std::string_view name) {
  // UEFI spec 3.3: "Boot####" with #### four upper-case hex digits.
  if (name.size() != 8 || !name.starts_with("Boot")) return std::nullopt;
  uint16_t number = 0;
  for (char c : name.substr(4)) {
    int digit = HexDigitValue(c);
    if (digit < 0 || (c >= 'a' && c <= 'f')) return std::nullopt;
    number = static_cast<uint16_t>(number << 4 | digit);
  }
  return number;
}

Result<std::vector<uint16_t>> DecodeBootOrder(std::span<const uint8_t> data) {
  if (data.size() % 2 != 0) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("BootOrder has an odd length of {} bytes", data.size()));
  }
  std::vector<uint16_t> order;
  order.reserve(data.size() / 2);
  for (size_t i = 0; i < data.size(); i += 2) order.push_back(ReadLe16(data.data() + i));
  return order;
}

std::vector<uint8_t> EncodeBootOrder(std::span<const uint16_t> order) {
  std::vector<uint8_t> out;
  out.reserve(order.size() * 2);
  for (uint16_t n : order) {
    out.push_back(static_cast<uint8_t>(n & 0xff));
    out.push_back(static_cast<uint8_t>(n >> 8));
  }
  return out;
}

Result<uint16_t> DecodeBootNumber(std::span<const uint8_t> data) {
  if (data.size() != 2) {
    return Error::Make(
        ErrorCode::kCorrupt,
        fmt::format("a boot number (BootNext/BootCurrent) must be 2 bytes, got {}", data.size()));
  }
  return ReadLe16(data.data());
}

std::vector<uint8_t> EncodeBootNumber(uint16_t number) {
  return {static_cast<uint8_t>(number & 0xff), static_cast<uint8_t>(number >> 8)};
}

}  // namespace ralph
