#include "tools/mkimage/builder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <sstream>

#include <fmt/format.h>

#include "platform/arch.h"
#include "platform/file_io.h"
#include "platform/hex.h"
#include "platform/log.h"
#include "platform/process.h"
#include "platform/secure_boot.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"
#include "tools/mkimage/cpio.h"
#include "tools/mkimage/host_tools.h"

namespace ralph::mkimage {
namespace fs = std::filesystem;
namespace {

// The loader every binary names as its interpreter (PT_INTERP) on x86_64.
// TODO(aarch64): /lib/ld-linux-aarch64.so.1, behind platform/arch.h.
constexpr const char* kHostLoader = "/lib64/ld-linux-x86-64.so.2";

// Modules early boot loads (dependencies are added from modules.dep). ext4
// is built into Debian's kernels; a module missing from modules.dep but
// listed in modules.builtin is fine. A slot has no modprobe: the kernel
// cannot load anything on demand, so everything a slot uses is here.
// Sandbox networking (sandbox/net, docs/image.md): the job's veth pair, the
// nft expressions its tables use beyond nf_tables' built-in ones (ct state,
// log to an NFLOG group, masquerade in an inet nat chain), and
// nfnetlink_log, the NFLOG backend `log group` needs and the network
// service's event listener binds to.
const std::vector<std::string> kWantedModules = {
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "efivarfs",
    "squashfs",
    "overlay",
    "nf_tables",
    "softdog",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "ext4",
    "virtio_net",
    "loop",  // sandbox: each job's writable upper is its own ext4 on a loop device
    "veth",
    "nft_ct",
    "nft_log",
    "nfnetlink_log",
    "nft_chain_nat",
    "nft_masq",
    // Every root (slot or RECOVERY) is mounted through dm-verity (drivers/verity.h).
    "dm-mod",
    "dm-verity",
};

// Guest networking: Debian's dhcpcd (package dhcpcd-base) configures the
// wired interface itself over netlink (address, routes, MTU). Its own hook
// script is a shell script and a slot has no shell, so `script` names our
// C++ hook instead (services/dhcp): it writes the lease's DNS servers to
// /run/ralph/resolv.conf, which /etc/resolv.conf links to (the root is
// read-only). Privilege separation runs as the `dhcpcd` user
// chrooted into its (empty, read-only) home, as Debian's postinst sets up.
// `nodev`: a slot runs no udev; without it dhcpcd 9.4.1's privileged proxy
// dereferences the absent /dev plugin and segfaults when a NIC appears
// (reproduced on the host in a network namespace), and with Debian's udev
// plugin it waits forever for udev to initialise the interface.
constexpr const char* kDhcpcdHost = "/usr/sbin/dhcpcd";
constexpr const char* kDhcpcdConf =
    "# RalphOS: DHCPv4 on the wired interfaces; DNS through ralph-dhcp-hook (no shell).\n"
    "script /usr/libexec/ralph-dhcp-hook\n"
    "allowinterfaces en* eth*\n"
    "ipv4only\n"
    "noipv4ll\n"
    "clientid\n"
    "nodev\n"
    "option classless_static_routes, interface_mtu\n"
    "option domain_name_servers, domain_name, domain_search\n"
    "require dhcp_server_identifier\n";
constexpr const char* kPasswd =
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "dhcpcd:x:101:65534:DHCP Client Daemon:/usr/lib/dhcpcd:/usr/sbin/nologin\n";
constexpr const char* kGroup = "root:x:0:\nnogroup:x:65534:\n";
// The OTA writer puts the UKI on the ESP with mtools (services/ota/esp.h);
// mtools picks the command from argv[0], so the names are links to it.
constexpr const char* kMtoolsHost = "/usr/bin/mtools";
constexpr const char* kGitHost = "/usr/bin/git";
const std::vector<std::string> kMtoolsCommands = {"mcopy", "mdir", "mmd"};
// mtools converts FAT short names through iconv to code page 850 (its
// default); glibc loads that converter from its gconv directory.
constexpr const char* kGconvDir = "/usr/lib/x86_64-linux-gnu/gconv";
const std::vector<std::string> kGconvFiles = {"gconv-modules", "gconv-modules.cache", "IBM850.so"};

// The control plane's service line (docs/ralphd.md): state on VAR, the
// local socket on /run, the HTTPS API on every address at 8443.
constexpr const char* kRalphdStateDir = "/var/lib/ralph/ralphd";
constexpr const char* kRalphdSocket = "/run/ralphd.sock";
constexpr const char* kRalphdApiListen = "0.0.0.0:8443";
// The read-only base every job's rootfs is an overlay of (ralphd --job-root,
// `ralph-sandbox run --rootfs`): until agent base images ship, a static
// busybox (Debian busybox-static) and links for the applets a job's shell
// commands use.
constexpr const char* kSandboxBase = "/usr/lib/ralph/sandbox-base";
constexpr const char* kBusyboxHost = "/bin/busybox";
const std::vector<std::string> kBusyboxApplets = {
    "sh",    "true",      "false",  "echo",  "printf", "cat", "ls",   "mkdir",    "rm",
    "cp",    "mv",        "ln",     "touch", "env",    "pwd", "id",   "uname",    "date",
    "sleep", "head",      "tail",   "wc",    "grep",   "sed", "sort", "tr",       "find",
    "tar",   "sha256sum", "md5sum", "stat",  "test",   "[",   "seq",  "basename", "dirname"};

Result<void> MakeDirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Error::FromErrno(fmt::format("mkdir {}", path), ec.value());
  return {};
}

Result<void> RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return Error::FromErrno(fmt::format("remove {}", path), ec.value());
  return {};
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// Copies a host file into a staging tree at `dest` (through symlinks: the
// staged file is a regular file with the host file's permission bits).
Result<void> StageFile(const std::string& host_path, const std::string& dest) {
  TRY(MakeDirs(fs::path(dest).parent_path().string()));
  std::string content = TRY(ReadWholeFile(host_path));
  struct stat st {};
  if (::stat(host_path.c_str(), &st) != 0) {
    return Error::FromErrno(fmt::format("stat {}", host_path), errno);
  }
  return WriteWholeFile(dest, content, st.st_mode & 0755);
}

Result<std::string> HostTool(const std::string& path, const std::string& package) {
  if (!Exists(path)) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("{} is not installed (Debian package {}; run scripts/setup.sh)",
                                   path, package));
  }
  return path;
}

Result<void> MakeSymlink(const std::string& target, const std::string& link) {
  std::error_code ec;
  fs::create_symlink(target, link, ec);
  if (ec) return Error::FromErrno(fmt::format("symlink {} -> {}", link, target), ec.value());
  return {};
}

Result<std::string> ProjectBinary(const std::string& bin_dir, const std::string& name) {
  std::string path = bin_dir + "/" + name;
  if (!Exists(path)) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("project binary {} not found in {} (build it first: cmake "
                                   "--build build --target {})",
                                   name, bin_dir, name));
  }
  return path;
}

struct StagedBinary {
  std::string host_path;
  std::string image_path;
};

// Executables go into images without their DWARF: `objcopy --strip-debug`
// keeps the symbol table (backtraces still name functions) and drops the
// debug sections of a RelWithDebInfo build, 10-30 times the code (ralphctl:
// 30 MB -> 1 MB), which every slot, RECOVERY and the factory bundle would
// otherwise carry and compress. Debian's binaries are stripped already.
// Deterministic, like the rest of the image.
Result<void> StageExecutable(const std::string& host_path, const std::string& dest) {
  TRY(MakeDirs(fs::path(dest).parent_path().string()));
  TRY_CTX(RunTool({"objcopy", "--strip-debug", host_path, dest}),
          fmt::format("staging {} without debug sections", host_path));
  if (::chmod(dest.c_str(), 0755) != 0)
    return Error::FromErrno(fmt::format("chmod {}", dest), errno);
  return {};
}

// Copies binaries (without debug sections) and their shared libraries into
// a staging tree.
Result<void> StageBinaries(const std::vector<StagedBinary>& binaries, const std::string& root) {
  std::set<std::string> libs;
  for (const auto& binary : binaries) {
    TRY(StageExecutable(binary.host_path, root + binary.image_path));
    for (auto& lib : TRY(SharedLibraries(binary.host_path))) libs.insert(lib);
  }
  for (const auto& lib : libs) TRY(StageFile(lib, root + lib));
  return {};
}

// The sandbox base under `root`: /bin/busybox (static: nothing else is
// needed) and a link per applet.
Result<void> StageSandboxBase(const std::string& busybox, const std::string& root) {
  TRY(StageFile(busybox, root + "/bin/busybox"));
  for (const auto& applet : kBusyboxApplets) TRY(MakeSymlink("busybox", root + "/bin/" + applet));
  return {};
}

// The same for the initrd: the stripped binaries are staged under `scratch`.
Result<void> AddBinariesToCpio(CpioArchive& archive, const std::vector<StagedBinary>& binaries,
                               const std::string& scratch) {
  std::set<std::string> libs;
  for (const auto& binary : binaries) {
    std::string stripped = scratch + binary.image_path;
    TRY(StageExecutable(binary.host_path, stripped));
    TRY(archive.AddHostFile(binary.image_path, stripped));
    for (auto& lib : TRY(SharedLibraries(binary.host_path))) libs.insert(lib);
  }
  for (const auto& lib : libs) TRY(archive.AddHostFile(lib, lib));
  return {};
}

std::string OsRelease(const std::string& version, std::string_view slot) {
  return fmt::format(
      "NAME=\"RalphOS\"\nID=ralphos\nVERSION_ID={}\nPRETTY_NAME=\"RalphOS {}\"\n"
      "IMAGE_ID=ralphos-{}\n",
      version, version, slot);
}

Result<std::string> BuildInitrd(const KernelTree& kernel, const std::vector<std::string>& modules,
                                const std::string& bin_dir, uint32_t mtime,
                                const std::string& output) {
  CpioArchive archive;
  for (const char* dir : {"/dev", "/proc", "/sys", "/run", "/sysroot", "/tmp"}) {
    archive.AddDirectory(dir);
  }
  // The kernel opens /dev/console for /init's stdio before devtmpfs exists.
  archive.AddCharDevice("/dev/console", 5, 1, 0600);
  std::string early_boot = TRY(ProjectBinary(bin_dir, "ralph-early-boot"));
  std::vector<StagedBinary> binaries = {{early_boot, "/init"}};
  for (const char* tool : {"mke2fs", "e2fsck"}) {
    std::string host = std::string("/sbin/") + tool;
    if (!Exists(host)) {
      return Error::Make(ErrorCode::kNotFound,
                         fmt::format("{} is not installed (Debian package e2fsprogs)", host));
    }
    binaries.push_back({host, std::string("/sbin/") + tool});
  }
  TRY_CTX(AddBinariesToCpio(archive, binaries, output + ".staging"),
          "adding binaries to the initrd");
  std::string order;
  for (const auto& module : modules) {
    std::string image_path = "/lib/modules/" + kernel.version + "/" + module;
    TRY(archive.AddHostFile(image_path, kernel.modules_dir() + "/" + module));
    order += image_path + "\n";
  }
  archive.AddFile("/etc/ralph/modules", std::vector<uint8_t>(order.begin(), order.end()));
  std::vector<uint8_t> bytes = archive.Serialize(mtime);
  std::string raw = output + ".cpio";
  TRY(WriteWholeFile(raw,
                     std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size())));
  // zstd output is a pure function of input and level (no timestamps).
  TRY_CTX(RunTool({"zstd", "-q", "-f", "-12", "--no-progress", raw, "-o", output}),
          "compressing the initrd");
  return output;
}

}  // namespace

Result<void> AssembleUki(const std::string& vmlinuz, const std::string& initrd,
                         const std::string& cmdline, const std::string& os_release,
                         const std::string& stub, uint32_t mtime, const std::string& output) {
  std::string cmdline_file = output + ".cmdline";
  std::string osrel_file = output + ".osrel";
  TRY(WriteWholeFile(cmdline_file, cmdline));
  TRY(WriteWholeFile(osrel_file, os_release));
  // Section addresses that OVMF boots (the e2e tests prove it): the
  // stub finds the sections by name; the VMAs only must not overlap, and the
  // initrd goes last because it is the largest and grows.
  TRY_CTX(RunTool({"objcopy", "--add-section", ".osrel=" + osrel_file, "--change-section-vma",
                   ".osrel=0x20000", "--add-section", ".cmdline=" + cmdline_file,
                   "--change-section-vma", ".cmdline=0x30000", "--add-section", ".linux=" + vmlinuz,
                   "--change-section-vma", ".linux=0x2000000", "--add-section", ".initrd=" + initrd,
                   "--change-section-vma", ".initrd=0x3000000", stub, output}),
          fmt::format("assembling the unified kernel image {}", output));
  std::string bytes = TRY(ReadWholeFile(output));
  std::vector<uint8_t> image(bytes.begin(), bytes.end());
  TRY_CTX(SetPeTimestamp(image, mtime), fmt::format("stamping {}", output));
  return WriteWholeFile(
      output, std::string_view(reinterpret_cast<const char*>(image.data()), image.size()), 0755);
}

Result<void> SignEfiImage(const std::string& path, const std::string& key,
                          const std::string& cert) {
  std::string signed_path = path + ".signed";
  TRY_CTX(RunTool({"sbsign", "--key", key, "--cert", cert, "--output", signed_path, path}),
          fmt::format("signing {} for Secure Boot", path));
  TRY_CTX(RunTool({"sbverify", "--cert", cert, signed_path}),
          fmt::format("checking the Secure Boot signature of {}", path));
  if (::rename(signed_path.c_str(), path.c_str()) != 0) {
    return Error::FromErrno(fmt::format("rename {} to {}", signed_path, path), errno);
  }
  return {};
}

namespace {

Result<void> TruncateFile(const std::string& path, off_t size) {
  if (::truncate(path.c_str(), size) != 0) {
    return Error::FromErrno(fmt::format("truncate {}", path), errno);
  }
  return {};
}

Result<void> BuildEsp(uint64_t size_bytes,
                      const std::vector<std::pair<std::string, std::string>>& files,
                      const std::string& seed, const std::string& output) {
  IgnoreError(RemoveTree(output));
  std::string volume_id = DeterministicUuid(seed, "esp-volume").substr(0, 8);
  TRY_CTX(RunTool({"mkfs.vfat", "-F", "32", "-n", "EFI", "-i", volume_id, "-C", output,
                   std::to_string(size_bytes / 1024)}),
          "formatting the ESP");
  for (const char* dir : {"::/EFI", "::/EFI/BOOT", "::/EFI/ralph"}) {
    TRY_CTX(RunTool({"mmd", "-i", output, dir}), "creating ESP directories");
  }
  for (const auto& [source, dest] : files) {
    TRY_CTX(RunTool({"mcopy", "-i", output, source, "::" + dest}),
            fmt::format("copying {} to the ESP", dest));
  }
  return {};
}

Result<void> CopyIntoDisk(const std::string& image, const DiskLayout& layout,
                          std::string_view label) {
  const PartitionInfo* partition = layout.Find(label);
  if (!partition) {
    return Error::Make(ErrorCode::kInternal, fmt::format("the new GPT has no {} partition", label));
  }
  const std::string& disk = layout.disk;
  UniqueFd in(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Error::FromErrno(fmt::format("open {}", image), errno);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return Error::FromErrno(fmt::format("stat {}", image), errno);
  if (static_cast<uint64_t>(st.st_size) > partition->size_bytes()) {
    return Error::Make(
        ErrorCode::kNoSpace,
        fmt::format("{} image is {} MiB but the partition holds {} MiB: raise its "
                    "size option",
                    label, (st.st_size + kMiB - 1) / kMiB, partition->size_bytes() / kMiB));
  }
  UniqueFd out(::open(disk.c_str(), O_WRONLY | O_CLOEXEC));
  if (!out) return Error::FromErrno(fmt::format("open {}", disk), errno);
  std::vector<char> buffer(4 * kMiB);
  uint64_t offset = partition->offset_bytes();
  for (;;) {
    ssize_t n = ::read(in.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", image), errno);
    if (n == 0) break;
    ssize_t done = 0;
    while (done < n) {
      ssize_t w = ::pwrite(out.get(), buffer.data() + done, static_cast<size_t>(n - done),
                           static_cast<off_t>(offset));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return Error::FromErrno(fmt::format("write {} at {}", disk, offset), errno);
      done += w;
      offset += static_cast<uint64_t>(w);
    }
  }
  if (::fsync(out.get()) != 0) return Error::FromErrno(fmt::format("fsync {}", disk), errno);
  return {};
}

Result<void> WriteRandomImage(const std::string& path, uint64_t size, std::string_view seed) {
  // Deterministic noise: a slot image that is no filesystem at all.
  std::seed_seq seq(seed.begin(), seed.end());
  std::mt19937_64 rng(seq);
  std::string bytes(size, '\0');
  for (auto& b : bytes) b = static_cast<char>(rng() & 0xff);
  return WriteWholeFile(path, bytes);
}

// veritysetup's "Root hash:" line.
Result<Sha256Digest> ParseRootHash(std::string_view output) {
  constexpr std::string_view kKey = "Root hash:";
  size_t at = output.find(kKey);
  if (at == std::string_view::npos) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("veritysetup format printed no '{}' line", kKey));
  }
  std::string_view rest = output.substr(at + kKey.size());
  rest = rest.substr(0, rest.find('\n'));
  while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
  while (!rest.empty() && (rest.back() == ' ' || rest.back() == '\r')) rest.remove_suffix(1);
  return TRY_CTX(ParseSha256Hex(rest), "veritysetup format's root hash");
}

}  // namespace

Result<VerityParams> AppendHashTree(const std::string& image, std::string_view salt_seed) {
  std::string veritysetup = TRY(HostTool("/usr/sbin/veritysetup", "cryptsetup-bin"));
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0)
    return Error::FromErrno(fmt::format("stat {}", image), errno);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} is empty", image));
  }
  VerityParams params;
  params.data_blocks = (size + kVerityBlockSize - 1) / kVerityBlockSize;
  params.hash_offset = params.data_blocks * kVerityBlockSize;
  // The data area is whole blocks: zero padding, which the tree covers.
  TRY(TruncateFile(image, static_cast<off_t>(params.hash_offset)));
  // A salt from the seed and the image's role: the same inputs give the
  // same bytes (the factory bundle is reproducible), and two images never
  // share one by accident.
  std::string salt_input = fmt::format("ralphos-verity-salt\n{}", salt_seed);
  params.salt = TRY(Sha256::Of(
      std::span(reinterpret_cast<const uint8_t*>(salt_input.data()), salt_input.size())));
  std::string output =
      TRY_CTX(RunTool({veritysetup, "format", "--no-superblock", "--format=1", "--hash=sha256",
                       fmt::format("--data-block-size={}", kVerityBlockSize),
                       fmt::format("--hash-block-size={}", kVerityBlockSize),
                       fmt::format("--data-blocks={}", params.data_blocks),
                       fmt::format("--hash-offset={}", params.hash_offset),
                       fmt::format("--salt={}", HexEncode(params.salt)), image, image}),
              fmt::format("computing the dm-verity hash tree of {}", image));
  params.root_hash = TRY(ParseRootHash(output));
  return params;
}

Result<std::vector<std::string>> SharedLibraries(const std::string& binary) {
  std::string out = TRY_CTX(RunTool({kHostLoader, "--list", binary}),
                            fmt::format("listing the shared libraries of {}", binary));
  std::vector<std::string> libs = ParseLoaderList(out);
  if (std::find(libs.begin(), libs.end(), kHostLoader) == libs.end()) libs.push_back(kHostLoader);
  return libs;
}

Result<SlotVariant> ParseSlotVariant(std::string_view text) {
  if (text == "good") return SlotVariant::kGood;
  if (text == "broken-initrd") return SlotVariant::kBrokenInitrd;
  if (text == "hang") return SlotVariant::kHangingInit;
  if (text == "health-fail") return SlotVariant::kRalphdCannotStart;
  if (text == "not-a-filesystem") return SlotVariant::kNotAFilesystem;
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("unknown slot variant '{}' (good, broken-initrd, hang, "
                                 "health-fail, not-a-filesystem)",
                                 text));
}

Result<std::string> FileSha256(const std::string& path) {
  return DigestToHex(TRY(Sha256OfFile(path)));
}

Result<KernelTree> FetchKernel(const std::string& cache_dir, const std::string& package,
                               const std::string& local_deb) {
  TRY(MakeDirs(cache_dir));
  // Builds (the main job, the e2e fixture, other worktrees) share the
  // cache: one at a time fills it. The lock goes with the fd.
  std::string lock_path = cache_dir + "/.lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!lock) return Error::FromErrno(fmt::format("open {}", lock_path), errno);
  while (::flock(lock.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return Error::FromErrno(fmt::format("flock {}", lock_path), errno);
  }
  std::string deb = local_deb;
  std::string resolved = package;
  if (deb.empty()) {
    // A metapackage (linux-image-cloud-amd64) names the versioned package it
    // depends on; a versioned name resolves to itself.
    auto depends = RunTool({"apt-cache", "depends", "--important", package});
    if (depends) {
      std::istringstream lines(*depends);
      for (std::string line; std::getline(lines, line);) {
        size_t at = line.find("Depends: linux-image-");
        if (at != std::string::npos) {
          resolved = line.substr(at + 9);
          break;
        }
      }
    }
  } else {
    std::string field =
        TRY_CTX(RunTool({"dpkg-deb", "-f", deb, "Package"}), fmt::format("reading {}", deb));
    while (!field.empty() && field.back() == '\n') field.pop_back();
    resolved = field;
  }
  std::string tree = cache_dir + "/" + resolved;
  std::string marker = tree + "/.ralph-extracted";
  if (!Exists(marker)) {
    TRY(RemoveTree(tree));
    TRY(MakeDirs(tree));
    if (deb.empty()) {
      std::string download_dir = tree + "/deb";
      TRY(MakeDirs(download_dir));
      TRY_CTX(RunTool({"apt-get", "download", "-q", resolved}, download_dir),
              fmt::format("downloading kernel package {}", resolved));
      for (const auto& entry : fs::directory_iterator(download_dir)) {
        if (entry.path().extension() == ".deb") deb = entry.path().string();
      }
      if (deb.empty()) {
        return Error::Make(ErrorCode::kNotFound,
                           fmt::format("apt-get download {} produced no .deb", resolved));
      }
    }
    TRY_CTX(RunTool({"dpkg-deb", "-x", deb, tree + "/root"}), fmt::format("extracting {}", deb));
    if (!local_deb.empty()) {
      // keep nothing of a local .deb but its extracted tree
    } else {
      TRY(RemoveTree(tree + "/deb"));
    }
  }
  KernelTree kernel;
  kernel.package = resolved;
  kernel.root = tree + "/root";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kernel.root + "/lib/modules", ec)) {
    kernel.version = entry.path().filename().string();
  }
  if (ec || kernel.version.empty()) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("kernel package {} has no lib/modules/<version>", resolved));
  }
  if (!Exists(kernel.vmlinuz())) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("kernel package {} has no {}", resolved, kernel.vmlinuz()));
  }
  if (!Exists(marker)) {
    // Debian generates modules.dep in the package's postinst; do the same.
    TRY_CTX(RunTool({"depmod", "-b", kernel.root, kernel.version}),
            fmt::format("running depmod for {}", kernel.version));
    TRY(WriteWholeFile(marker, resolved + "\n"));
  }
  return kernel;
}

// What every root image (a slot's, RECOVERY's) ends with: the C library's
// character-set modules, the trust anchors, the extra files, os-release,
// and the squashfs. Returns its SHA-256 (hex).
Result<std::string> FinishRootImage(const SlotImageInputs& inputs, const std::string& staging_dir,
                                    const std::string& output, std::string_view image_id) {
  for (const auto& file : kGconvFiles) {
    std::string host = TRY(HostTool(fmt::format("{}/{}", kGconvDir, file), "libc6"));
    TRY(StageFile(host, staging_dir + host));
  }
  std::error_code ec;
  std::vector<std::string> gconv_confs;  // sorted: the image must not depend on readdir order
  for (const auto& entry :
       fs::directory_iterator(fmt::format("{}/gconv-modules.d", kGconvDir), ec)) {
    if (entry.path().extension() == ".conf") gconv_confs.push_back(entry.path().string());
  }
  std::sort(gconv_confs.begin(), gconv_confs.end());
  for (const auto& conf : gconv_confs) TRY(StageFile(conf, staging_dir + conf));
  if (!inputs.keyring.empty()) {
    TRY_CTX(StageFile(inputs.keyring, staging_dir + kKeyringPath), "adding the OTA keyring");
  }
  if (!inputs.update_ca.empty()) {
    TRY_CTX(StageFile(inputs.update_ca, staging_dir + kUpdateCaPath),
            "adding the update servers' CA");
  }
  for (const auto& [host, image] : inputs.extra_files) {
    TRY(StageFile(host, staging_dir + image));
  }
  TRY(WriteWholeFile(staging_dir + "/etc/os-release", OsRelease(inputs.version, image_id)));

  IgnoreError(RemoveTree(output));
  std::string epoch = std::to_string(inputs.source_date_epoch);
  TRY_CTX(RunTool({"mksquashfs", staging_dir, output, "-noappend", "-quiet", "-no-progress",
                   "-comp", "zstd", "-all-root", "-no-xattrs", "-mkfs-time", epoch, "-all-time",
                   epoch, "-processors", "1"}),
          "building the squashfs system image");
  return FileSha256(output);
}

Result<std::string> BuildSlotImage(const SlotImageInputs& inputs, const std::string& staging_dir,
                                   const std::string& output) {
  TRY(RemoveTree(staging_dir));
  for (const char* dir : {"/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/boot/efi",
                          "/etc/ralph", "/usr/bin", "/sbin"}) {
    TRY(MakeDirs(staging_dir + dir));
  }
  std::vector<StagedBinary> binaries;
  std::string init_binary =
      inputs.variant == SlotVariant::kHangingInit ? "ralph-test-hang" : "ralph-init";
  binaries.push_back({TRY(ProjectBinary(inputs.bin_dir, init_binary)), "/sbin/ralph-init"});
  binaries.push_back({TRY(ProjectBinary(inputs.bin_dir, "ralph-health")), "/usr/bin/ralph-health"});
  binaries.push_back({TRY(ProjectBinary(inputs.bin_dir, "ralphctl")), "/usr/bin/ralphctl"});
  binaries.push_back({TRY(HostTool(kDhcpcdHost, "dhcpcd-base")), "/usr/sbin/dhcpcd"});
  binaries.push_back(
      {TRY(ProjectBinary(inputs.bin_dir, "ralph-dhcp-hook")), "/usr/libexec/ralph-dhcp-hook"});
  binaries.push_back({TRY(HostTool(kMtoolsHost, "mtools")), "/usr/bin/mtools"});
  // Sandboxes: the launcher, mkfs.ext4 for the job uppers' template (its
  // state lives on VAR, /var/lib/ralph/sandbox), and the read-only base
  // directory jobs get until agent base images ship (see sandbox/README.md):
  // a static busybox and its applets (StageSandboxBase).
  binaries.push_back(
      {TRY(ProjectBinary(inputs.bin_dir, "ralph-sandbox")), "/usr/bin/ralph-sandbox"});
  binaries.push_back({TRY(HostTool("/sbin/mkfs.ext4", "e2fsprogs")), "/sbin/mkfs.ext4"});
  // The control plane (docs/ralphd.md): jobs under policy, its local socket
  // and the HTTPS API the companion client pairs with.
  std::string ralphd = TRY(ProjectBinary(inputs.bin_dir, "ralphd"));
  binaries.push_back({ralphd, "/usr/bin/ralphd"});
  // Loop mode commits the workspace after every iteration with git, run by
  // ralphd on the host (docs/ralphd.md "The commits"). Debian's git, the one
  // binary: every command ralphd runs is built into it, and ralphd turns off
  // what would start another (automatic maintenance) and needs no templates
  // (`init --template=`). About 1.9 MB of the squashfs with libpcre2.
  binaries.push_back({TRY(HostTool(kGitHost, "git")), "/usr/bin/git"});
  std::string busybox = TRY(HostTool(kBusyboxHost, "busybox-static"));

  // The service list: one line per service the slot runs (services/init
  // documents the format). Later capabilities add their daemons here.
  std::vector<ServiceEntry> services;
  if (inputs.test_agent) {
    binaries.push_back(
        {TRY(ProjectBinary(inputs.bin_dir, "ralph-test-agent")), "/usr/libexec/ralph-test-agent"});
    services.push_back({"test-agent", "/usr/libexec/ralph-test-agent", {}, {}, false, false});
  }
  std::string bomb;  // test images: resource bombs for the sandbox e2e test
  if (inputs.test_agent) bomb = TRY(ProjectBinary(inputs.bin_dir, "ralph-test-bomb"));
  // DHCP on the wired interface. Not required: an appliance without a cable
  // still boots, commits and can be reached on the console.
  services.push_back({"network",
                      "/usr/sbin/dhcpcd",
                      {"--nobackground", "--config", "/etc/dhcpcd.conf"},
                      {},
                      false,
                      false});
  // Settles the last update's outcome (committed / rolled back) on VAR and
  // in the audit log once per boot (services/ota/outcome.h).
  services.push_back(
      {"update-outcome", "/usr/bin/ralphctl", {"update", "reconcile"}, {}, true, false});
  // ralphd: state on VAR, the socket on /run, jobs on the slot's read-only
  // sandbox base, the API on every address (the health gate checks it on
  // 127.0.0.1). Required: a slot whose control plane does not come up is
  // refused by the health gate.
  services.push_back({"ralphd",
                      "/usr/bin/ralphd",
                      {"--state-dir", kRalphdStateDir, "--socket", kRalphdSocket, "--job-root",
                       kSandboxBase, "--api-listen", kRalphdApiListen, "--agent-images",
                       kAgentImageStore, "--keyring", "/etc/ralph/keyring",
                       "--factory-agent-bundle", kFactoryAgentBundlePath, "--recovery-reboot"},
                      {},
                      false,
                      true});
  std::vector<std::string> health_after;
  for (const auto& s : services) health_after.push_back(s.name);
  services.push_back({"health", "/usr/bin/ralph-health", {}, health_after, true, true});
  // Once the gate has judged the boot (ralphd answers by then), a one-time
  // pairing string and its QR code on the console while no client is paired.
  services.push_back(
      {"pairing", "/usr/bin/ralphctl", {"pair", "--unless-paired"}, {"health"}, true, false});
  TRY_CTX(StageBinaries(binaries, staging_dir), "staging the slot's binaries");
  // Statically linked (the loader cannot list a static binary's libraries).
  if (!bomb.empty()) TRY(StageFile(bomb, staging_dir + "/usr/libexec/ralph-test-bomb"));
  TRY_CTX(StageSandboxBase(busybox, staging_dir + kSandboxBase), "staging the sandbox base");
  if (inputs.variant == SlotVariant::kRalphdCannotStart) {
    // An update shipped without a library ralphd needs: the loader refuses
    // to start it (exit status 127), and ralph-init keeps restarting it with
    // backoff. Nothing else in the slot links libarchive.
    bool removed = false;
    for (const auto& lib : TRY(SharedLibraries(ralphd))) {
      if (lib.find("/libarchive.so") == std::string::npos) continue;
      if (::unlink((staging_dir + lib).c_str()) != 0) {
        return Error::FromErrno(fmt::format("removing {} from the staged slot", lib), errno);
      }
      removed = true;
    }
    if (!removed) {
      return Error::Make(ErrorCode::kNotFound, "ralphd links no libarchive to leave out");
    }
  }
  TRY(WriteWholeFile(staging_dir + "/etc/ralph/services.conf", RenderServicesConf(services)));
  TRY(WriteWholeFile(staging_dir + "/etc/dhcpcd.conf", kDhcpcdConf));
  TRY(MakeSymlink("/run/ralph/resolv.conf", staging_dir + "/etc/resolv.conf"));
  TRY(WriteWholeFile(staging_dir + "/etc/passwd", kPasswd));
  TRY(WriteWholeFile(staging_dir + "/etc/group", kGroup));
  TRY(MakeDirs(staging_dir + "/usr/lib/dhcpcd"));
  for (const auto& command : kMtoolsCommands) {
    TRY(MakeSymlink("mtools", staging_dir + "/usr/bin/" + command));
  }
  return FinishRootImage(inputs, staging_dir, output, "system");
}

Result<std::string> BuildRecoveryRoot(const SlotImageInputs& inputs, const std::string& staging_dir,
                                      const std::string& output) {
  TRY(RemoveTree(staging_dir));
  for (const char* dir :
       {"/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/etc/ralph", "/usr/bin", "/sbin"}) {
    TRY(MakeDirs(staging_dir + dir));
  }
  // Only what a rescue needs: PID 1, ralph-recovery, the operator's CLI
  // (boot state, installs with --target), mtools for the ESP, e2fsprogs for
  // VAR. No control plane, network, sandbox or health gate: none of them
  // rescues anything, and each is one more thing that could fail here.
  std::vector<StagedBinary> binaries;
  binaries.push_back({TRY(ProjectBinary(inputs.bin_dir, "ralph-init")), "/sbin/ralph-init"});
  binaries.push_back(
      {TRY(ProjectBinary(inputs.bin_dir, "ralph-recovery")), "/usr/bin/ralph-recovery"});
  binaries.push_back({TRY(ProjectBinary(inputs.bin_dir, "ralphctl")), "/usr/bin/ralphctl"});
  binaries.push_back({TRY(HostTool(kMtoolsHost, "mtools")), "/usr/bin/mtools"});
  for (const char* tool : {"/sbin/e2fsck", "/sbin/mke2fs"}) {
    binaries.push_back({TRY(HostTool(tool, "e2fsprogs")), tool});
  }
  std::vector<ServiceEntry> services;
  if (inputs.test_agent) {
    binaries.push_back(
        {TRY(ProjectBinary(inputs.bin_dir, "ralph-test-agent")), "/usr/libexec/ralph-test-agent"});
    services.push_back({"test-agent", "/usr/libexec/ralph-test-agent", {}, {}, false, false});
  }
  // Diagnoses, acts by itself when the situation is clear, then serves the
  // operator's menu on the console (recovery/README.md). Not required:
  // RECOVERY comes up whatever it finds.
  services.push_back({"recovery",
                      "/usr/bin/ralph-recovery",
                      {"--auto", "--menu", "--console", "/dev/console"},
                      {},
                      false,
                      false});
  TRY_CTX(StageBinaries(binaries, staging_dir), "staging RECOVERY's binaries");
  TRY(WriteWholeFile(staging_dir + "/etc/ralph/services.conf", RenderServicesConf(services)));
  for (const auto& command : kMtoolsCommands) {
    TRY(MakeSymlink("mtools", staging_dir + "/usr/bin/" + command));
  }
  return FinishRootImage(inputs, staging_dir, output, "recovery");
}

Result<BuildReport> BuildImage(const BuildOptions& options) {
  if (options.signing_cert.empty() != options.signing_key.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "the factory bundle needs both --signing-cert and --signing-key");
  }
  if (options.secure_boot_cert.empty() != options.secure_boot_key.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       "Secure Boot signing needs both --secure-boot-key and --secure-boot-cert");
  }
  BuildReport report;
  std::string work = options.work_dir.empty() ? options.output + ".work" : options.work_dir;
  TRY(RemoveTree(work));
  TRY(MakeDirs(work));

  KernelTree kernel =
      TRY_CTX(FetchKernel(options.cache_dir, options.kernel_package, options.kernel_deb),
              "fetching the kernel");
  report.kernel_version = kernel.version;
  std::string modules_dep = TRY(ReadWholeFile(kernel.modules_dir() + "/modules.dep"));
  std::string builtin = TRY(ReadWholeFile(kernel.modules_dir() + "/modules.builtin"));
  std::vector<std::string> wanted;
  for (const auto& name : kWantedModules) {
    bool is_builtin = builtin.find("/" + name + ".ko\n") != std::string::npos;
    if (!is_builtin) wanted.push_back(name);
  }
  report.modules = TRY_CTX(ResolveModules(modules_dep, wanted),
                           fmt::format("selecting modules of kernel {}", kernel.version));

  std::string stub = fmt::format("/usr/lib/systemd/boot/efi/{}", arch::EfiStubFileName());
  if (!Exists(stub)) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("{} is missing (Debian package systemd-boot-efi)", stub));
  }

  // The root images first: each gets its dm-verity hash tree appended, and
  // the root hash goes on its UKI's command line.
  SlotImageInputs slot_inputs{options.bin_dir, options.test_agent, SlotVariant::kGood,
                              options.source_date_epoch, options.version};
  slot_inputs.keyring = options.keyring;
  slot_inputs.update_ca = options.update_ca;
  if (!options.secure_boot_enroll.empty()) {
    // Checked here: a list the provisioning step would refuse fails the build.
    for (const char* name : {"PK", "KEK", "db"}) {
      std::string host = fmt::format("{}/{}.auth", options.secure_boot_enroll, name);
      std::string bytes = TRY_CTX(ReadWholeFile(host), "--secure-boot-enroll");
      TRY_CTX(CheckSignedKeyList(
                  name, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())),
              host);
      slot_inputs.extra_files.push_back(
          {host, fmt::format("{}/{}.auth", kSecureBootKeysDir, name)});
    }
  }
  std::string system_a = work + "/system_a.squashfs";
  TRY_CTX(BuildSlotImage(slot_inputs, work + "/rootfs_a", system_a), "building slot A");
  report.system_a_verity =
      TRY_CTX(AppendHashTree(system_a, options.seed + "/system"), "slot A's hash tree");
  report.system_a_sha256 = TRY(FileSha256(system_a));
  std::string system_b = system_a;
  report.system_b_sha256 = report.system_a_sha256;
  report.system_b_verity = report.system_a_verity;
  if (options.slot_b == SlotVariant::kNotAFilesystem) {
    // Noise with a valid tree: dm-verity opens it, the squashfs check refuses it.
    system_b = work + "/system_b.noise";
    TRY(WriteRandomImage(system_b, 4 * kMiB, options.seed));
  } else if (options.slot_b == SlotVariant::kHangingInit ||
             options.slot_b == SlotVariant::kRalphdCannotStart) {
    slot_inputs.variant = options.slot_b;
    system_b = work + "/system_b.squashfs";
    TRY_CTX(BuildSlotImage(slot_inputs, work + "/rootfs_b", system_b), "building slot B");
  }
  if (system_b != system_a) {
    report.system_b_verity =
        TRY_CTX(AppendHashTree(system_b, options.seed + "/system-b-variant"), "slot B's hash tree");
    report.system_b_sha256 = TRY(FileSha256(system_b));
  }

  // The UKIs: RECOVERY's last, since its image holds the factory bundle,
  // which holds slot A's UKI.
  std::string initrd = TRY_CTX(BuildInitrd(kernel, report.modules, options.bin_dir,
                                           options.source_date_epoch, work + "/initrd.img"),
                               "building the initrd");
  // Signed before anything copies it (the removable path, the payloads,
  // the factory bundle): every copy carries the signature. The signature
  // holds its signing time (sbsign has no way to fix it), so identical
  // images (a.efi and b.efi with a good B) are signed once and copied: one
  // bundle's UKI stays byte-equal to either slot's.
  std::map<std::string, std::string> signed_ukis;  // SHA-256 before signing -> signed file
  auto build_uki = [&](BootTarget target, const VerityParams& verity) -> Result<std::string> {
    std::string name(TargetName(target));
    std::string target_initrd = initrd;
    if (target == BootTarget::kSlotB && options.slot_b == SlotVariant::kBrokenInitrd) {
      target_initrd = work + "/initrd-broken.img";
      TRY(StageFile(initrd, target_initrd));
      struct stat st {};
      if (::stat(target_initrd.c_str(), &st) != 0) {
        return Error::FromErrno(fmt::format("stat {}", target_initrd), errno);
      }
      TRY(TruncateFile(target_initrd, st.st_size / 2));
    }
    std::string uki = work + "/" + name + ".efi";
    TRY(AssembleUki(kernel.vmlinuz(), target_initrd, KernelCmdline(target, options.cmdline, verity),
                    OsRelease(options.version, target == BootTarget::kRecovery ? name : "system"),
                    stub, options.source_date_epoch, uki));
    if (!options.secure_boot_key.empty()) {
      std::string unsigned_sha256 = TRY(FileSha256(uki));
      auto same = signed_ukis.find(unsigned_sha256);
      if (same != signed_ukis.end()) {
        TRY(StageFile(same->second, uki));
      } else {
        TRY(SignEfiImage(uki, options.secure_boot_key, options.secure_boot_cert));
        signed_ukis.emplace(unsigned_sha256, uki);
      }
    }
    return uki;
  };
  std::string uki_a = TRY(build_uki(BootTarget::kSlotA, report.system_a_verity));
  std::string uki_b = TRY(build_uki(BootTarget::kSlotB, report.system_b_verity));

  // RECOVERY: a root of its own (BuildRecoveryRoot: ralph-recovery and the
  // tools it needs) plus the factory bundle (the factory version's system
  // image and slot A's UKI, signed), so a rescue can reflash a slot from a
  // bundle it verifies like any update, whatever the slots and VAR hold.
  std::string recovery = system_a;
  report.recovery_verity = report.system_a_verity;
  if (!options.signing_cert.empty() && options.bundle_writer) {
    FactoryBundleRequest request{system_a,
                                 uki_a,
                                 options.version,
                                 options.signing_cert,
                                 options.signing_key,
                                 options.source_date_epoch,
                                 work + "/factory.rbundle"};
    TRY_CTX(options.bundle_writer(request), "building the factory bundle");
    report.factory_bundle_sha256 = TRY(FileSha256(request.output));
    SlotImageInputs recovery_inputs = slot_inputs;
    recovery_inputs.variant = SlotVariant::kGood;
    recovery_inputs.extra_files.push_back({request.output, kFactoryBundlePath});
    recovery = work + "/recovery.squashfs";
    TRY_CTX(BuildRecoveryRoot(recovery_inputs, work + "/rootfs_recovery", recovery),
            "building the RECOVERY filesystem");
    report.recovery_verity =
        TRY_CTX(AppendHashTree(recovery, options.seed + "/recovery"), "RECOVERY's hash tree");
  }
  std::string uki_recovery = TRY(build_uki(BootTarget::kRecovery, report.recovery_verity));

  // One unified kernel image per boot target; slot A's also on the
  // removable-media path.
  std::vector<std::pair<std::string, std::string>> esp_files = {
      {uki_a, "/EFI/ralph/a.efi"},
      {uki_a, fmt::format("/EFI/BOOT/{}", arch::RemovableBootFileName())},
      {uki_b, "/EFI/ralph/b.efi"},
      {uki_recovery, "/EFI/ralph/recovery.efi"}};

  if (!options.payloads_dir.empty()) {
    TRY(MakeDirs(options.payloads_dir));
    for (const auto& [from, to] :
         std::vector<std::pair<std::string, std::string>>{{system_a, "system_a.img"},
                                                          {uki_a, "a.efi"},
                                                          {system_b, "system_b.img"},
                                                          {uki_b, "b.efi"}}) {
      TRY_CTX(StageFile(from, options.payloads_dir + "/" + to), "exporting the slot payloads");
    }
  }

  // VAR: blank (early boot formats it), or with the factory agent-image
  // bundle an ext4 made here that holds it (early boot then checks it like
  // any VAR, and ralphd installs the bundle on its first start).
  LayoutSizes sizes = options.sizes;
  std::string var_image;
  if (!options.agent_bundle.empty()) {
    struct stat st {};
    if (::stat(options.agent_bundle.c_str(), &st) != 0) {
      return Error::FromErrno(fmt::format("--agent-bundle {}", options.agent_bundle), errno);
    }
    uint64_t bundle_mib = (static_cast<uint64_t>(st.st_size) + kMiB - 1) / kMiB;
    sizes.var_mib += 2 * bundle_mib;
    std::string var_root = work + "/var_root";
    std::string inside(kFactoryAgentBundlePath);
    inside = inside.substr(std::string_view("/var").size());  // VAR is mounted at /var
    TRY(MakeDirs(fs::path(var_root + inside).parent_path().string()));
    std::error_code ec;
    fs::copy_file(options.agent_bundle, var_root + inside, fs::copy_options::overwrite_existing,
                  ec);
    if (ec) {
      return Error::Make(ErrorCode::kIo,
                         fmt::format("putting {} on VAR: {}", options.agent_bundle, ec.message()));
    }
    var_image = work + "/var.img";
    std::string uuid = DeterministicUuid(options.seed, "var-filesystem");
    TRY_CTX(RunProgramChecked(
                {.argv = {"mke2fs", "-q", "-F", "-t", "ext4", "-L", "VAR", "-U", uuid, "-E",
                          fmt::format("root_owner=0:0,hash_seed={}", uuid), "-d", var_root,
                          var_image, fmt::format("{}M", sizes.var_mib)},
                 .env = {fmt::format("E2FSPROGS_FAKE_TIME={}", options.source_date_epoch)}}),
            "making VAR with the agent-image bundle");
  }

  GptSpec gpt = TRY(ApplianceGpt(sizes, options.seed));
  std::string esp = work + "/esp.img";
  TRY(BuildEsp(gpt.partitions[0].size_bytes, esp_files, options.seed, esp));

  // Published whole: a half-written image never has the output's name.
  AtomicFile disk = TRY(AtomicFile::Create(options.output, 0644));
  const std::string& tmp_disk = disk.temp_path();
  DiskLayout layout = TRY_CTX(CreateGptImage(tmp_disk, DiskBytesFor(gpt), gpt),
                              fmt::format("writing the GPT of {}", tmp_disk));
  TRY(CopyIntoDisk(esp, layout, kPartEfi));
  TRY(CopyIntoDisk(system_a, layout, kPartSystemA));
  TRY(CopyIntoDisk(system_b, layout, kPartSystemB));
  // RECOVERY holds the rescue root and the factory bundle (without a
  // signing key: the good system, so the machine still has a RECOVERY that
  // boots). VAR stays blank (early boot formats it) unless it carries
  // the factory agent-image bundle.
  TRY(CopyIntoDisk(recovery, layout, kPartRecovery));
  if (!var_image.empty()) TRY(CopyIntoDisk(var_image, layout, kPartVar));
  // A build output: CopyIntoDisk synced each partition's data; losing the
  // name to a crash means building again.
  TRY(disk.Commit(Durability::kNone));
  report.disk_bytes = DiskBytesFor(gpt);
  return report;
}

}  // namespace ralph::mkimage
