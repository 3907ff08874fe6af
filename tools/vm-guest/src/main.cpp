// ralph-vm-guest: builds what a VM job's guest boots: the appliance's kernel
// (Debian's package, fetched and cached the way ralph-mkimage does) and an
// initrd whose only program is the guest agent ralph-guest (with mke2fs,
// which the sandbox inside the guest uses for the job's upper volume), the
// shared objects both need, and the kernel modules the guest loads itself.
// The same inputs give the same bytes (sorted cpio entries, one mtime).
//
//   ralph-vm-guest --guest build/bin/ralph-guest --out DIR
//     -> DIR/vmlinuz, DIR/initrd.img
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/cli.h"
#include "platform/file_io.h"
#include "platform/log.h"
#include "tools/mkimage/builder.h"
#include "tools/mkimage/cpio.h"
#include "tools/mkimage/host_tools.h"
#include "tools/mkimage/plan.h"

namespace {

using ralph::Error;
using ralph::ErrorCode;
using ralph::Result;
namespace mk = ralph::mkimage;

// What the guest loads, dependencies resolved from modules.dep: the
// virtio-mmio transport (microvm's and virt's only bus) and its block,
// console (virtio-serial) and vsock devices; squashfs for the job's base
// image; overlay and loop for the sandbox inside the guest.
const std::vector<std::string> kGuestModules = {
    "virtio_mmio", "virtio_blk", "virtio_console", "vmw_vsock_virtio_transport",
    "squashfs",    "overlay",    "loop",
};

// The loader every binary names as its interpreter on x86_64.
constexpr const char* kHostLoader = "/lib64/ld-linux-x86-64.so.2";

Result<std::vector<std::string>> SharedObjects(const std::string& binary) {
  std::string out = TRY_CTX(mk::RunTool({kHostLoader, "--list", binary}),
                            fmt::format("listing the shared libraries of {}", binary));
  std::vector<std::string> libs = mk::ParseLoaderList(out);
  if (std::find(libs.begin(), libs.end(), kHostLoader) == libs.end()) libs.push_back(kHostLoader);
  return libs;
}

constexpr const char kUsage[] =
    "usage: ralph-vm-guest --guest FILE --out DIR [--cache DIR] [--kernel-package NAME]\n"
    "  --guest FILE           the ralph-guest binary\n"
    "  --out DIR              where vmlinuz and initrd.img are written\n"
    "  --cache DIR            kernel package cache (default ~/.cache/ralphos)\n"
    "  --kernel-package NAME  Debian kernel package (default linux-image-cloud-amd64)\n";

struct Options {
  std::string guest;
  std::string out;
  std::string cache_dir;
  std::string kernel_package = "linux-image-cloud-amd64";
  uint32_t mtime = 0;
};

Result<void> Build(const Options& options) {
  mk::KernelTree kernel = TRY_CTX(mk::FetchKernel(options.cache_dir, options.kernel_package, ""),
                                  "fetching the kernel");
  std::string modules_dep = TRY(ralph::ReadWholeFile(kernel.modules_dir() + "/modules.dep"));
  std::string builtin = TRY(ralph::ReadWholeFile(kernel.modules_dir() + "/modules.builtin"));
  std::vector<std::string> wanted;
  for (const auto& name : kGuestModules) {
    if (builtin.find("/" + name + ".ko\n") == std::string::npos) wanted.push_back(name);
  }
  std::vector<std::string> modules =
      TRY_CTX(mk::ResolveModules(modules_dep, wanted),
              fmt::format("selecting modules of {}", kernel.version));

  mk::CpioArchive archive;
  for (const char* dir : {"/dev", "/proc", "/sys", "/run", "/tmp", "/etc"}) {
    archive.AddDirectory(dir);
  }
  // The kernel opens /dev/console for /init's stdio before devtmpfs exists.
  archive.AddCharDevice("/dev/console", 5, 1, 0600);
  // Without its debug sections: the guest kernel copies and unpacks every
  // byte of the initrd at boot, which under TCG is most of the boot.
  std::string stripped = options.out + "/.ralph-guest.stripped";
  TRY_CTX(mk::RunTool({"objcopy", "--strip-debug", options.guest, stripped}),
          "stripping ralph-guest");
  auto added = archive.AddHostFile("/init", stripped);
  ::unlink(stripped.c_str());
  TRY(added);
  // mkfs.ext4 is what the sandbox runs (storage.cpp); Debian's is a link
  // to mke2fs.
  TRY(archive.AddHostFile("/usr/sbin/mke2fs", "/sbin/mke2fs"));
  archive.AddSymlink("/usr/sbin/mkfs.ext4", "mke2fs");
  archive.AddSymlink("/sbin", "usr/sbin");
  archive.AddSymlink("/bin", "usr/bin");
  archive.AddSymlink("/lib", "usr/lib");
  archive.AddSymlink("/lib64", "usr/lib64");
  std::set<std::string> libs;
  for (const std::string& binary : {options.guest, std::string("/sbin/mke2fs")}) {
    for (auto& lib : TRY(SharedObjects(binary))) libs.insert(lib);
  }
  for (const auto& lib : libs) {
    // Debian is merged-/usr: /lib is /usr/lib, so every object goes under
    // /usr (the archive's /lib and /lib64 are links to it).
    std::string path = lib.starts_with("/usr/") ? lib : "/usr" + lib;
    TRY(archive.AddHostFile(path, lib));
  }
  std::string order;
  for (const auto& module : modules) {
    std::string path = "/usr/lib/modules/" + kernel.version + "/" + module;
    TRY(archive.AddHostFile(path, kernel.modules_dir() + "/" + module));
    order += path + "\n";
  }
  archive.AddFile("/etc/ralph/modules", std::vector<uint8_t>(order.begin(), order.end()));

  std::vector<uint8_t> bytes = archive.Serialize(options.mtime);
  TRY(ralph::WriteFileAtomically(
      options.out + "/initrd.img",
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), 0644,
      ralph::Durability::kNone));
  std::string vmlinuz = TRY(ralph::ReadWholeFile(kernel.vmlinuz()));
  TRY(ralph::WriteFileAtomically(options.out + "/vmlinuz", vmlinuz, 0644,
                                 ralph::Durability::kNone));
  ralph::LogInfo("guest of kernel {}: {} modules, initrd {} bytes", kernel.version, modules.size(),
                 bytes.size());
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  const char* home = std::getenv("HOME");
  options.cache_dir = std::string(home ? home : "/root") + "/.cache/ralphos";
  if (const char* epoch = std::getenv("SOURCE_DATE_EPOCH")) {
    options.mtime = static_cast<uint32_t>(std::strtoul(epoch, nullptr, 10));
  }
  ralph::LogInit("ralph-vm-guest", ralph::LogSink::kStderr);
  ralph::cli::Parser parser("ralph-vm-guest", kUsage);
  parser.Option("--guest", &options.guest);
  parser.Option("--out", &options.out);
  parser.Option("--cache", &options.cache_dir);
  parser.Option("--kernel-package", &options.kernel_package);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;
  if (options.guest.empty() || options.out.empty()) {
    ralph::LogError("ralph-vm-guest: --guest and --out are required\n{}", kUsage);
    return 2;
  }
  if (auto built = Build(options); !built) {
    ralph::LogError("ralph-vm-guest: {}", built.error().ToString());
    return 1;
  }
  return 0;
}
