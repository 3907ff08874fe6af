// Unit tests of the pure parts of platform/: GUIDs, load options, BootOrder
// helpers, SHA-256, arch names.
#include <elf.h>
#include <linux/audit.h>
#include <sys/utsname.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "platform/arch.h"
#include "platform/efi_vars.h"
#include "platform/efivar_store.h"
#include "platform/load_option.h"
#include "platform/sha256.h"

namespace ralph {
namespace {

using ::testing::HasSubstr;

std::span<const uint8_t> Bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// ---- GUIDs ----

TEST(EfiGuidTest, ParsesIntoEfiMemoryOrder) {
  auto guid = EfiGuid::Parse("8be4df61-93ca-11d2-aa0d-00e098032b8c");
  ASSERT_TRUE(guid) << guid.error().ToString();
  const std::array<uint8_t, 16> expected = {0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11,
                                            0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c};
  EXPECT_EQ(guid->bytes, expected);
  EXPECT_EQ(*guid, kEfiGlobalGuid);
}

TEST(EfiGuidTest, RoundTripsAndLowerCases) {
  auto guid = EfiGuid::Parse("DCD30AB3-2C38-49F0-8BB2-FF7AE2F8390D");
  ASSERT_TRUE(guid);
  EXPECT_EQ(*guid, kRalphVendorGuid);
  EXPECT_EQ(guid->ToString(), "dcd30ab3-2c38-49f0-8bb2-ff7ae2f8390d");
  EXPECT_EQ(kEfiGlobalGuid.ToString(), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
  EXPECT_NE(kEfiGlobalGuid, kRalphVendorGuid);
}

TEST(EfiGuidTest, RejectsBadInputNamingTheProblem) {
  struct Case {
    std::string text;
    std::string why;
  };
  const Case cases[] = {
      {"", "expected 36 characters"},
      {"8be4df61-93ca-11d2-aa0d-00e098032b8", "got 35"},
      {"8be4df61-93ca-11d2-aa0d-00e098032b8c0", "got 37"},
      {"8be4df61x93ca-11d2-aa0d-00e098032b8c", "expected '-' at position 8"},
      {"8be4df61-93ca-11d2-aa0d-00e098032bzc", "'z' at position 34 is not a hex digit"},
      {"{be4df61-93ca-11d2-aa0d-00e098032b8c", "'{' at position 0"},
  };
  for (const Case& c : cases) {
    auto guid = EfiGuid::Parse(c.text);
    ASSERT_FALSE(guid) << c.text;
    EXPECT_EQ(guid.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(guid.error().message(), HasSubstr(c.why)) << c.text;
    EXPECT_THAT(guid.error().message(), HasSubstr("invalid GUID"));
  }
}

// Without EFIVARFS_PATH, the store is the machine's efivarfs; a machine
// booted without UEFI (like a CI container) gets a clear kUnsupported.
TEST(LibefivarStoreTest, OpenWithoutAStoreIsUnsupported) {
  ASSERT_EQ(std::getenv("EFIVARFS_PATH"), nullptr) << "run this test without EFIVARFS_PATH";
  auto store = LibefivarStore::Open();
  if (std::filesystem::exists("/sys/firmware/efi/efivars")) {
    ASSERT_TRUE(store) << store.error().ToString();
    EXPECT_EQ((*store)->path(), "/sys/firmware/efi/efivars/");
    EXPECT_TRUE((*store)->is_efivarfs());
  } else {
    ASSERT_FALSE(store);
    EXPECT_EQ(store.error().code(), ErrorCode::kUnsupported);
    EXPECT_THAT(store.error().message(), HasSubstr("EFIVARFS_PATH is unset"));
  }
}

// ---- load options ----

LoadOption RalphOption() {
  LoadOption option;
  option.description = "RalphOS A";
  HardDriveNode hd;
  hd.partition_number = 1;
  hd.start_lba = 2048;
  hd.size_lba = 204800;
  for (int i = 0; i < 16; ++i) hd.partition_guid[i] = static_cast<uint8_t>(0xa0 + i);
  option.hard_drive = hd;
  option.file = "\\EFI\\ralph\\a.efi";
  return option;
}

TEST(LoadOptionTest, EncodeDecodeRoundTrip) {
  LoadOption option = RalphOption();
  option.optional_data = {1, 2, 3, 4, 5};
  auto bytes = EncodeLoadOption(option);
  ASSERT_TRUE(bytes) << bytes.error().ToString();
  auto decoded = DecodeLoadOption(*bytes);
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_EQ(decoded->attributes, kLoadOptionActive);
  EXPECT_EQ(decoded->description, "RalphOS A");
  ASSERT_TRUE(decoded->hard_drive);
  EXPECT_EQ(*decoded->hard_drive, *option.hard_drive);
  EXPECT_EQ(decoded->file, "\\EFI\\ralph\\a.efi");
  EXPECT_EQ(decoded->optional_data, option.optional_data);
  // HD node (42) + File node (4 + UCS-2 "\EFI\ralph\a.efi" with NUL = 34) + End (4).
  EXPECT_EQ(decoded->device_path.size(), 42u + 38u + 4u);
  // Re-encoding what was decoded gives the same bytes.
  auto again = EncodeLoadOption(*decoded);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *bytes);
}

TEST(LoadOptionTest, NonAsciiDescriptionRoundTrips) {
  LoadOption option = RalphOption();
  option.description = "RalphOS \u00c4 \u2192 B";  // Latin-1 and a BMP arrow
  auto bytes = EncodeLoadOption(option);
  ASSERT_TRUE(bytes) << bytes.error().ToString();
  // UCS-2 in the option: "RalphOS " then U+00C4.
  EXPECT_EQ((*bytes)[6 + 8 * 2], 0xc4);
  EXPECT_EQ((*bytes)[6 + 8 * 2 + 1], 0x00);
  auto decoded = DecodeLoadOption(*bytes);
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_EQ(decoded->description, option.description);
}

TEST(LoadOptionTest, EncodesTheEfibootmgrByteLayout) {
  LoadOption option = RalphOption();
  option.attributes = 0;  // inactive
  auto bytes = EncodeLoadOption(option);
  ASSERT_TRUE(bytes);
  const std::vector<uint8_t>& b = *bytes;
  // Attributes, then FilePathListLength = 84, then "RalphOS A" in UCS-2 + NUL.
  ASSERT_GE(b.size(), 6u + 20u + 84u);
  EXPECT_EQ(b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24, 0);
  EXPECT_EQ(b[4] | b[5] << 8, 84);
  EXPECT_EQ(b[6], 'R');
  EXPECT_EQ(b[7], 0);
  EXPECT_EQ(b[6 + 9 * 2], 0);
  EXPECT_EQ(b[6 + 9 * 2 + 1], 0);
  size_t dp = 6 + 20;
  // HD node: type 4, subtype 1, length 42, partition 1, start 2048, format GPT,
  // signature type GUID.
  EXPECT_EQ(b[dp], 0x04);
  EXPECT_EQ(b[dp + 1], 0x01);
  EXPECT_EQ(b[dp + 2], 42);
  EXPECT_EQ(b[dp + 4], 1);
  EXPECT_EQ(b[dp + 8] | b[dp + 9] << 8, 2048);
  EXPECT_EQ(b[dp + 24], 0xa0);
  EXPECT_EQ(b[dp + 40], 0x02);
  EXPECT_EQ(b[dp + 41], 0x02);
  // File node.
  EXPECT_EQ(b[dp + 42], 0x04);
  EXPECT_EQ(b[dp + 43], 0x04);
  EXPECT_EQ(b[dp + 46], '\\');
  // End Entire.
  EXPECT_EQ(b[dp + 80], 0x7f);
  EXPECT_EQ(b[dp + 81], 0xff);
  EXPECT_EQ(b.size(), dp + 84);  // no optional data
  auto text = FormatDevicePath(std::span(b).subspan(dp, 84));
  ASSERT_TRUE(text) << text.error().ToString();
  EXPECT_THAT(*text, HasSubstr("HD(1,GPT,"));
  EXPECT_THAT(*text, HasSubstr("0x800"));
  EXPECT_THAT(*text, HasSubstr("File(\\EFI\\ralph\\a.efi)"));
}

TEST(LoadOptionTest, EncodeRejectsIncompleteOptions) {
  LoadOption no_hd = RalphOption();
  no_hd.hard_drive.reset();
  auto a = EncodeLoadOption(no_hd);
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(a.error().message(), HasSubstr("no hard drive node"));

  LoadOption no_file = RalphOption();
  no_file.file.clear();
  auto b = EncodeLoadOption(no_file);
  ASSERT_FALSE(b);
  EXPECT_THAT(b.error().message(), HasSubstr("no file path"));

  LoadOption slashes = RalphOption();
  slashes.file = "/EFI/ralph/a.efi";
  auto c = EncodeLoadOption(slashes);
  ASSERT_FALSE(c);
  EXPECT_THAT(c.error().message(), HasSubstr("must be absolute with backslashes"));

  LoadOption emoji = RalphOption();
  emoji.description = "Ralph \U0001F600";  // outside the BMP: no UCS-2 for it
  auto d = EncodeLoadOption(emoji);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(d.error().message(), HasSubstr("is not UTF-8 for a UCS-2 character"));

  LoadOption broken = RalphOption();
  broken.description = "Ralph \xc3";
  auto e = EncodeLoadOption(broken);
  ASSERT_FALSE(e);
  EXPECT_THAT(e.error().message(), HasSubstr("truncated UTF-8 sequence"));
}

// Appends a UCS-2 string with NUL.
void AppendUcs2(std::vector<uint8_t>& out, std::string_view text) {
  for (char c : text) {
    out.push_back(static_cast<uint8_t>(c));
    out.push_back(0);
  }
  out.push_back(0);
  out.push_back(0);
}

void AppendNode(std::vector<uint8_t>& out, uint8_t type, uint8_t subtype,
                std::vector<uint8_t> payload) {
  uint16_t length = static_cast<uint16_t>(4 + payload.size());
  out.push_back(type);
  out.push_back(subtype);
  out.push_back(static_cast<uint8_t>(length & 0xff));
  out.push_back(static_cast<uint8_t>(length >> 8));
  out.insert(out.end(), payload.begin(), payload.end());
}

// A load option laid out by hand the way efibootmgr/firmware store one:
// attributes, path length, description, the device path, optional data.
std::vector<uint8_t> HandMadeOption(uint32_t attributes, std::string_view description,
                                    const std::vector<uint8_t>& path,
                                    const std::vector<uint8_t>& optional) {
  std::vector<uint8_t> out;
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(attributes >> (8 * i)));
  out.push_back(static_cast<uint8_t>(path.size() & 0xff));
  out.push_back(static_cast<uint8_t>(path.size() >> 8));
  AppendUcs2(out, description);
  out.insert(out.end(), path.begin(), path.end());
  out.insert(out.end(), optional.begin(), optional.end());
  return out;
}

// OVMF's "UEFI Shell"-style entry: FvVol(guid)/FvFile(guid), plus a PXE
// entry PciRoot(0)/Pci(2,0)/MAC(...): foreign shapes that must decode with
// no hard drive and no file, the raw path kept.
TEST(LoadOptionTest, DecodesForeignDevicePathsWithoutRewriting) {
  std::vector<uint8_t> fv_path;
  std::vector<uint8_t> guid_a(16, 0x11), guid_b(16, 0x22);
  AppendNode(fv_path, 0x04, 0x07, guid_a);  // PIWG firmware volume
  AppendNode(fv_path, 0x04, 0x06, guid_b);  // PIWG firmware file
  AppendNode(fv_path, 0x7f, 0xff, {});
  std::vector<uint8_t> optional = {0x4e, 0xac, 0x08, 0x81, 0x11, 0x9f};
  auto bytes =
      HandMadeOption(kLoadOptionActive | 0x8 /* HIDDEN */, "EFI Internal Shell", fv_path, optional);
  auto decoded = DecodeLoadOption(bytes);
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_EQ(decoded->description, "EFI Internal Shell");
  EXPECT_EQ(decoded->attributes, kLoadOptionActive | 0x8);
  EXPECT_FALSE(decoded->hard_drive);
  EXPECT_TRUE(decoded->file.empty());
  EXPECT_EQ(decoded->device_path, fv_path);
  EXPECT_EQ(decoded->optional_data, optional);

  std::vector<uint8_t> pxe_path;
  AppendNode(pxe_path, 0x02, 0x01, {0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0});  // PciRoot(0)
  AppendNode(pxe_path, 0x01, 0x01, {0x00, 0x02});                          // Pci(2,0)
  std::vector<uint8_t> mac(32, 0);
  mac[0] = 0x52;
  mac[1] = 0x54;
  mac.push_back(0x01);                    // if type
  AppendNode(pxe_path, 0x03, 0x0b, mac);  // MAC
  AppendNode(pxe_path, 0x7f, 0xff, {});
  auto pxe = DecodeLoadOption(HandMadeOption(1, "UEFI PXEv4", pxe_path, {}));
  ASSERT_TRUE(pxe) << pxe.error().ToString();
  EXPECT_EQ(pxe->description, "UEFI PXEv4");
  EXPECT_FALSE(pxe->hard_drive);
  EXPECT_TRUE(pxe->file.empty());
  EXPECT_EQ(pxe->device_path, pxe_path);
  EXPECT_TRUE(pxe->optional_data.empty());
  auto text = FormatDevicePath(pxe->device_path);
  ASSERT_TRUE(text) << text.error().ToString();
  EXPECT_THAT(*text, HasSubstr("PciRoot(0x0)"));
}

// An MBR-signature HD node with a File node is a valid option, but not the
// GPT shape RalphOS writes: kept raw, not interpreted.
TEST(LoadOptionTest, MbrHardDriveIsNotOurShape) {
  std::vector<uint8_t> path;
  std::vector<uint8_t> hd(38, 0);
  hd[0] = 1;      // partition 1
  hd[36] = 0x01;  // PCAT (MBR)
  hd[37] = 0x01;  // MBR signature
  AppendNode(path, 0x04, 0x01, hd);
  std::vector<uint8_t> file;
  AppendUcs2(file, "\\EFI\\debian\\shimx64.efi");
  AppendNode(path, 0x04, 0x04, file);
  AppendNode(path, 0x7f, 0xff, {});
  auto decoded = DecodeLoadOption(HandMadeOption(1, "debian", path, {}));
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_FALSE(decoded->hard_drive);
  EXPECT_TRUE(decoded->file.empty());
  EXPECT_EQ(decoded->device_path, path);
}

TEST(LoadOptionTest, TruncatedOptionsAreCorruptWithAReason) {
  auto good = EncodeLoadOption(RalphOption());
  ASSERT_TRUE(good);
  struct Case {
    size_t length;
    std::string why;
  };
  const Case cases[] = {
      {0, "shorter than the 6-byte header"},
      {5, "shorter than the 6-byte header"},
      {6, "no terminating NUL"},
      {12, "no terminating NUL"},
      {26, "runs past the end"},
      {26 + 50, "runs past the end"},
      {good->size() - 1, "runs past the end"},
  };
  for (const Case& c : cases) {
    auto decoded = DecodeLoadOption(std::span(*good).first(c.length));
    ASSERT_FALSE(decoded) << "length " << c.length;
    EXPECT_EQ(decoded.error().code(), ErrorCode::kCorrupt);
    EXPECT_THAT(decoded.error().message(), HasSubstr(c.why)) << "length " << c.length;
    EXPECT_THAT(decoded.error().message(), HasSubstr("invalid load option"));
  }
}

TEST(LoadOptionTest, GarbageDevicePathsAreCorrupt) {
  // A node claiming more bytes than the path holds.
  std::vector<uint8_t> overlong;
  AppendNode(overlong, 0x04, 0x04, {'a', 0, 0, 0});
  overlong[2] = 200;
  AppendNode(overlong, 0x7f, 0xff, {});
  auto a = DecodeLoadOption(HandMadeOption(1, "x", overlong, {}));
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(a.error().message(), HasSubstr("claims 200 bytes but only 12 remain"));

  // A node length below the header size (would loop forever if trusted).
  std::vector<uint8_t> zero = {0x04, 0x04, 0x00, 0x00, 0x7f, 0xff, 0x04, 0x00};
  auto b = DecodeLoadOption(HandMadeOption(1, "x", zero, {}));
  ASSERT_FALSE(b);
  EXPECT_THAT(b.error().message(), HasSubstr("has length 0, less than its header"));

  // No End node.
  std::vector<uint8_t> endless;
  AppendNode(endless, 0x04, 0x04, {'a', 0, 0, 0});
  auto c = DecodeLoadOption(HandMadeOption(1, "x", endless, {}));
  ASSERT_FALSE(c);
  EXPECT_THAT(c.error().message(), HasSubstr("no End Entire node"));

  // Empty device path.
  auto d = DecodeLoadOption(HandMadeOption(1, "x", {}, {}));
  ASSERT_FALSE(d);
  EXPECT_THAT(d.error().message(), HasSubstr("device path is empty"));

  // A GPT HD node of the wrong size.
  std::vector<uint8_t> short_hd;
  AppendNode(short_hd, 0x04, 0x01, std::vector<uint8_t>(20, 0));
  std::vector<uint8_t> file;
  AppendUcs2(file, "\\a.efi");
  AppendNode(short_hd, 0x04, 0x04, file);
  AppendNode(short_hd, 0x7f, 0xff, {});
  auto e = DecodeLoadOption(HandMadeOption(1, "x", short_hd, {}));
  ASSERT_FALSE(e);
  EXPECT_THAT(e.error().message(), HasSubstr("hard drive node has 24 bytes, expected 42"));

  // Random bytes never crash and never decode as our shape.
  uint32_t state = 12345;
  for (int round = 0; round < 2000; ++round) {
    std::vector<uint8_t> noise(6 + round % 97);
    for (auto& byte : noise) {
      state = state * 1103515245 + 12345;
      byte = static_cast<uint8_t>(state >> 16);
    }
    auto decoded = DecodeLoadOption(noise);
    if (decoded) {
      EXPECT_LE(decoded->device_path.size(), noise.size());
    } else {
      EXPECT_EQ(decoded.error().code(), ErrorCode::kCorrupt);
    }
  }
}

TEST(LoadOptionTest, FormatDevicePathRejectsGarbage) {
  std::vector<uint8_t> garbage = {0x04, 0x04, 0xff, 0x00};
  auto text = FormatDevicePath(garbage);
  ASSERT_FALSE(text);
  EXPECT_EQ(text.error().code(), ErrorCode::kCorrupt);
}

// ---- BootOrder / Boot#### helpers ----

TEST(BootOrderTest, EntryNames) {
  EXPECT_EQ(BootEntryName(3), "Boot0003");
  EXPECT_EQ(BootEntryName(0xbeef), "BootBEEF");
  EXPECT_EQ(ParseBootEntryName("Boot0003"), 3);
  EXPECT_EQ(ParseBootEntryName("BootBEEF"), 0xbeef);
  EXPECT_EQ(ParseBootEntryName("BootOrder"), std::nullopt);
  EXPECT_EQ(ParseBootEntryName("BootNext"), std::nullopt);
  EXPECT_EQ(ParseBootEntryName("Boot00G1"), std::nullopt);
  EXPECT_EQ(ParseBootEntryName("Boot000a"), std::nullopt);  // spec: upper-case hex
  EXPECT_EQ(ParseBootEntryName("Boot003"), std::nullopt);
  EXPECT_EQ(ParseBootEntryName("Boot00003"), std::nullopt);
  EXPECT_EQ(ParseBootEntryName("Driver0003"), std::nullopt);
}

TEST(BootOrderTest, EncodeDecode) {
  std::vector<uint16_t> order = {0x0003, 0x0001, 0xbeef};
  std::vector<uint8_t> bytes = EncodeBootOrder(order);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{0x03, 0x00, 0x01, 0x00, 0xef, 0xbe}));
  auto decoded = DecodeBootOrder(bytes);
  ASSERT_TRUE(decoded);
  EXPECT_EQ(*decoded, order);
  auto empty = DecodeBootOrder({});
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());

  auto odd = DecodeBootOrder(std::span(bytes).first(5));
  ASSERT_FALSE(odd);
  EXPECT_EQ(odd.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(odd.error().message(), HasSubstr("odd length of 5 bytes"));

  EXPECT_EQ(EncodeBootNumber(0x1234), (std::vector<uint8_t>{0x34, 0x12}));
  auto next = DecodeBootNumber(EncodeBootNumber(0x1234));
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, 0x1234);
  auto bad = DecodeBootNumber(bytes);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(bad.error().message(), HasSubstr("must be 2 bytes, got 6"));
}

// ---- SHA-256 (FIPS 180-4 / NIST CSRC example vectors) ----

TEST(Sha256Test, KnownVectors) {
  auto empty = Sha256::Of({});
  ASSERT_TRUE(empty);
  EXPECT_EQ(DigestToHex(*empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  auto abc = Sha256::Of(Bytes("abc"));
  ASSERT_TRUE(abc);
  EXPECT_EQ(DigestToHex(*abc), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto two_blocks = Sha256::Of(Bytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"));
  ASSERT_TRUE(two_blocks);
  EXPECT_EQ(DigestToHex(*two_blocks),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, StreamingEqualsOneShotAndMillionA) {
  auto hasher = Sha256::Create();
  ASSERT_TRUE(hasher);
  std::string block(1000, 'a');
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(hasher->Update(Bytes(block)));
  auto digest = hasher->Finish();
  ASSERT_TRUE(digest);
  EXPECT_EQ(DigestToHex(*digest),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Used after Finish: refused; after Reset: fresh.
  auto late = hasher->Update(Bytes("x"));
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code(), ErrorCode::kInvalidState);
  ASSERT_TRUE(hasher->Reset());
  ASSERT_TRUE(hasher->Update(Bytes("ab")));
  ASSERT_TRUE(hasher->Update(Bytes("c")));
  auto abc = hasher->Finish();
  ASSERT_TRUE(abc);
  EXPECT_EQ(*abc, *Sha256::Of(Bytes("abc")));
}

TEST(Sha256Test, HexParsing) {
  std::string hex = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
  auto digest = ParseSha256Hex(hex);
  ASSERT_TRUE(digest);
  EXPECT_EQ(*digest, *Sha256::Of(Bytes("abc")));
  auto short_hex = ParseSha256Hex("abcd");
  ASSERT_FALSE(short_hex);
  EXPECT_THAT(short_hex.error().message(), HasSubstr("64 hex digits, got 4"));
  hex[10] = 'x';
  auto bad = ParseSha256Hex(hex);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(bad.error().message(), HasSubstr("'x' at position 10"));
}

// ---- arch ----

// The arch layer describes the machine this binary was compiled for (and
// runs on): the name is what uname(2) reports, the seccomp arch carries the
// ELF machine of this very executable, and the file names follow their
// conventions with one arch suffix: \EFI\BOOT\BOOT<X>.EFI and
// systemd-boot's linux<x>.efi.stub.
TEST(ArchTest, DescribesTheArchTheCompilerTargets) {
  struct utsname uts {};
  ASSERT_EQ(::uname(&uts), 0);
  EXPECT_EQ(arch::Name(), uts.machine);

  Elf64_Ehdr header{};
  std::ifstream self("/proc/self/exe", std::ios::binary);
  self.read(reinterpret_cast<char*>(&header), sizeof(header));
  ASSERT_TRUE(self.good()) << "reading /proc/self/exe";
  uint32_t audit = arch::SeccompAuditArch();
  EXPECT_EQ(audit & 0xffffu, header.e_machine);
  EXPECT_EQ((audit & __AUDIT_ARCH_64BIT) != 0, header.e_ident[EI_CLASS] == ELFCLASS64);
  EXPECT_EQ((audit & __AUDIT_ARCH_LE) != 0, header.e_ident[EI_DATA] == ELFDATA2LSB);

  std::string removable(arch::RemovableBootFileName());
  ASSERT_TRUE(removable.starts_with("BOOT") && removable.ends_with(".EFI")) << removable;
  std::string suffix = removable.substr(4, removable.size() - 8);
  ASSERT_FALSE(suffix.empty());
  std::string lower;
  for (char c : suffix) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ(arch::EfiStubFileName(), "linux" + lower + ".efi.stub");
  EXPECT_TRUE(std::string(arch::SerialConsole()).starts_with("tty")) << arch::SerialConsole();
}

}  // namespace
}  // namespace ralph
