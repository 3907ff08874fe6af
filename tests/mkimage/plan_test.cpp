#include "tools/mkimage/plan.h"

#include <gtest/gtest.h>

#include "platform/file_io.h"
#include "tools/mkimage/builder.h"
#include "tools/mkimage/cpio.h"

namespace ralph::mkimage {
namespace {

TEST(ApplianceGpt, FivePartitionsInOrderWithStableGuids) {
  auto spec = ApplianceGpt(LayoutSizes{}, "seed");
  ASSERT_TRUE(spec) << spec.error().ToString();
  ASSERT_EQ(spec->partitions.size(), 5u);
  std::vector<std::string> labels;
  for (const auto& p : spec->partitions) labels.push_back(p.label);
  EXPECT_EQ(labels, (std::vector<std::string>{"EFI", "SYSTEM_A", "SYSTEM_B", "VAR", "RECOVERY"}));
  EXPECT_EQ(spec->partitions[0].type, PartitionType::kEfiSystem);
  auto again = ApplianceGpt(LayoutSizes{}, "seed");
  ASSERT_TRUE(again);
  EXPECT_EQ(spec->partitions[1].part_uuid, again->partitions[1].part_uuid);
  EXPECT_EQ(spec->disk_uuid, again->disk_uuid);
  auto other = ApplianceGpt(LayoutSizes{}, "other");
  ASSERT_TRUE(other);
  EXPECT_NE(spec->partitions[1].part_uuid, other->partitions[1].part_uuid);
  EXPECT_NE(spec->partitions[1].part_uuid, spec->partitions[2].part_uuid);
  EXPECT_EQ(DiskBytesFor(*spec), (160 + 48 * 2 + 64 + 96 + 2) * kMiB);
}

TEST(ApplianceGpt, RejectsTooSmallPartitions) {
  LayoutSizes sizes;
  sizes.esp_mib = 32;
  auto spec = ApplianceGpt(sizes, "seed");
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(spec.error().message().find("ESP size 32 MiB"), std::string::npos);
  sizes = LayoutSizes{};
  sizes.var_mib = 4;
  spec = ApplianceGpt(sizes, "seed");
  ASSERT_FALSE(spec);
  EXPECT_NE(spec.error().message().find("VAR size 4 MiB"), std::string::npos);
}

TEST(DeterministicUuid, IsAVersion4Uuid) {
  std::string uuid = DeterministicUuid("s", "n");
  ASSERT_EQ(uuid.size(), 36u);
  EXPECT_EQ(uuid[14], '4');
  EXPECT_TRUE(uuid[19] == '8' || uuid[19] == '9' || uuid[19] == 'a' || uuid[19] == 'b');
}

TEST(ResolveModules, DependenciesFirstEachOnce) {
  const char* dep =
      "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko "
      "kernel/drivers/virtio/virtio_ring.ko\n"
      "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko "
      "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
      "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
      "kernel/drivers/virtio/virtio_ring.ko:\n"
      "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
      "kernel/drivers/watchdog/softdog.ko.zst: kernel/drivers/watchdog/watchdog.ko.zst\n"
      "kernel/drivers/watchdog/watchdog.ko.zst:\n";
  auto order = ResolveModules(dep, {"virtio-blk", "virtio_pci", "softdog"});
  ASSERT_TRUE(order) << order.error().ToString();
  EXPECT_EQ(*order, (std::vector<std::string>{
                        "kernel/drivers/virtio/virtio_ring.ko",
                        "kernel/drivers/virtio/virtio.ko",
                        "kernel/drivers/block/virtio_blk.ko",
                        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                        "kernel/drivers/virtio/virtio_pci.ko",
                        "kernel/drivers/watchdog/watchdog.ko.zst",
                        "kernel/drivers/watchdog/softdog.ko.zst",
                    }));
}

TEST(ResolveModules, NamesEveryMissingModule) {
  auto order = ResolveModules("kernel/a.ko:\n", {"a", "nf_tables", "erofs"});
  ASSERT_FALSE(order);
  EXPECT_EQ(order.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(order.error().message().find("nf_tables, erofs"), std::string::npos);
}

TEST(ModuleNameFromPath, StripsDirectoryAndCompression) {
  EXPECT_EQ(ModuleNameFromPath("kernel/fs/ext4/ext4.ko.zst"), "ext4");
  EXPECT_EQ(ModuleNameFromPath("kernel/x/nls-cp437.ko"), "nls_cp437");
}

TEST(KernelCmdline, SlotsNameNoSlotRecoveryNamesItself) {
  CmdlineOptions options;
  options.watchdog_seconds = 10;
  std::string b = KernelCmdline(BootTarget::kSlotB, options);
  // One UKI for either slot: early boot tells the slot from the firmware.
  EXPECT_EQ(b, KernelCmdline(BootTarget::kSlotA, options));
  EXPECT_EQ(b.find("root="), std::string::npos) << b;
  EXPECT_EQ(b.find("ralph.slot="), std::string::npos) << b;
  EXPECT_NE(b.find("panic=5 "), std::string::npos) << b;
  EXPECT_NE(b.find("console=ttyS0"), std::string::npos) << b;
  EXPECT_NE(b.find("ralph.watchdog=10"), std::string::npos) << b;
  std::string recovery = KernelCmdline(BootTarget::kRecovery, options);
  EXPECT_NE(recovery.find("root=PARTLABEL=RECOVERY ralph.slot=recovery "), std::string::npos)
      << recovery;
}

TEST(KernelCmdline, CarriesTheRootImagesVerityParameters) {
  CmdlineOptions options;
  options.extra = "ralph.init=/sbin/x";
  VerityParams verity;
  verity.root_hash.fill(0xab);
  verity.salt.fill(0x01);
  verity.data_blocks = 10;
  verity.hash_offset = 40960;
  for (BootTarget target : {BootTarget::kSlotA, BootTarget::kRecovery}) {
    std::string cmdline = KernelCmdline(target, options, verity);
    auto parsed = ParseVerityCmdline(cmdline);
    ASSERT_TRUE(parsed) << parsed.error().ToString();
    ASSERT_TRUE(parsed->has_value()) << cmdline;
    EXPECT_EQ(**parsed, verity);
    EXPECT_TRUE(cmdline.ends_with(" ralph.init=/sbin/x")) << cmdline;
  }
  auto none = ParseVerityCmdline(KernelCmdline(BootTarget::kSlotA, options));
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

TEST(ParseLoaderList, AbsolutePathsSortedUnique) {
  const char* out =
      "\tlinux-vdso.so.1 (0x00007ffd)\n"
      "\tlibfmt.so.9 => /lib/x86_64-linux-gnu/libfmt.so.9 (0x00007f)\n"
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
  EXPECT_EQ(ParseLoaderList(out), (std::vector<std::string>{"/lib/x86_64-linux-gnu/libc.so.6",
                                                            "/lib/x86_64-linux-gnu/libfmt.so.9",
                                                            "/lib64/ld-linux-x86-64.so.2"}));
}

TEST(RenderServicesConf, OneLinePerService) {
  std::string conf = RenderServicesConf({{"agent", "/usr/libexec/a", {}, {}, false, false},
                                         {"health", "/usr/bin/h", {"-v"}, {"agent"}, true, true}});
  EXPECT_NE(conf.find("agent exec=/usr/libexec/a required=no\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("health exec=/usr/bin/h args=-v after=agent type=oneshot\n"),
            std::string::npos)
      << conf;
}

TEST(ParseSlotVariant, KnownNamesAndAClearError) {
  EXPECT_EQ(*ParseSlotVariant("hang"), SlotVariant::kHangingInit);
  EXPECT_EQ(*ParseSlotVariant("health-fail"), SlotVariant::kRalphdCannotStart);
  auto bad = ParseSlotVariant("flaky");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("unknown slot variant 'flaky'"), std::string::npos);
}

TEST(CpioArchive, NewcRecordsSortedWithParentsAndTrailer) {
  CpioArchive archive;
  archive.AddFile("/usr/bin/x", {'h', 'i'}, 0755);
  archive.AddCharDevice("/dev/console", 5, 1, 0600);
  std::vector<uint8_t> bytes = archive.Serialize(1234);
  std::string text(bytes.begin(), bytes.end());
  EXPECT_EQ(text.compare(0, 6, "070701"), 0);
  // Sorted: dev, dev/console, usr, usr/bin, usr/bin/x, trailer.
  size_t dev = text.find(std::string("dev\0", 4));
  size_t console = text.find("dev/console");
  size_t usr_bin_x = text.find("usr/bin/x");
  size_t trailer = text.find("TRAILER!!!");
  ASSERT_NE(dev, std::string::npos);
  EXPECT_LT(dev, console);
  EXPECT_LT(console, usr_bin_x);
  EXPECT_LT(usr_bin_x, trailer);
  EXPECT_NE(text.find("000004D2"), std::string::npos);  // mtime 1234
  EXPECT_EQ(bytes.size() % 512, 0u);
  EXPECT_EQ(archive.Serialize(1234), bytes);  // reproducible
}

TEST(CpioArchive, MissingHostFileIsNotFound) {
  CpioArchive archive;
  auto added = archive.AddHostFile("/x", "/nonexistent/file");
  ASSERT_FALSE(added);
  EXPECT_EQ(added.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(added.error().message().find("/nonexistent/file"), std::string::npos);
}

}  // namespace
}  // namespace ralph::mkimage

namespace ralph::mkimage {
namespace {

uint32_t Le32(const std::vector<uint8_t>& b, size_t at) {
  return static_cast<uint32_t>(b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) |
                               (static_cast<uint32_t>(b[at + 3]) << 24));
}

TEST(SetPeTimestamp, MatchesObjcopysChecksumAndIsAFunctionOfTheStamp) {
  // systemd's EFI stub as shipped: objcopy-made, with a computed checksum.
  const char* stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
  auto text = ReadWholeFile(stub);
  ASSERT_TRUE(text) << text.error().ToString() << " (Debian package systemd-boot-efi)";
  std::vector<uint8_t> original(text->begin(), text->end());
  size_t pe = Le32(original, 0x3c);
  uint32_t stamp = Le32(original, pe + 8);
  uint32_t checksum = Le32(original, pe + 24 + 64);
  ASSERT_NE(checksum, 0u);

  std::vector<uint8_t> same = original;
  ASSERT_TRUE(SetPeTimestamp(same, stamp));
  EXPECT_EQ(same, original);  // our checksum is the one the toolchain wrote

  std::vector<uint8_t> first = original, second = original;
  ASSERT_TRUE(SetPeTimestamp(first, 1700000000));
  ASSERT_TRUE(SetPeTimestamp(second, 1700000000));
  EXPECT_EQ(first, second);
  EXPECT_EQ(Le32(first, pe + 8), 1700000000u);
  EXPECT_NE(Le32(first, pe + 24 + 64), checksum);
  ASSERT_EQ(first.size(), original.size());
  size_t changed = 0;  // only the stamp and the checksum fields
  for (size_t i = 0; i < first.size(); ++i) changed += first[i] != original[i];
  EXPECT_LE(changed, 8u);
}

TEST(SetPeTimestamp, RejectsWhatIsNotPe) {
  std::vector<uint8_t> elf = {0x7f, 'E', 'L', 'F'};
  elf.resize(256);
  auto result = SetPeTimestamp(elf, 1);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(result.error().message().find("no MZ header"), std::string::npos);
  std::vector<uint8_t> mz(256);
  mz[0] = 'M';
  mz[1] = 'Z';
  mz[0x3c] = 0x80;
  result = SetPeTimestamp(mz, 1);
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message().find("no PE signature"), std::string::npos);
}

}  // namespace
}  // namespace ralph::mkimage
