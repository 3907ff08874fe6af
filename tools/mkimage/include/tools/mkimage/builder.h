// Applies the image plan with host tools: fetches and caches the Debian
// kernel, builds the initrd, the per-slot unified kernel images, the slot
// filesystem images, the ESP and the GPT disk.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "platform/result.h"
#include "tools/mkimage/plan.h"

namespace ralph::mkimage {

// What goes into slot B (slot A and RECOVERY are always the good build).
// The faulty variants exist for the end-to-end tests of the fallback paths;
// each is a genuine defect of the kind a bad update would carry.
enum class SlotVariant {
  kGood,
  kBrokenInitrd,       // the UKI's initrd is truncated: the kernel never reaches early boot
  kHangingInit,        // PID 1 of the slot hangs (never pets the watchdog)
  kRalphdCannotStart,  // ralphd's libarchive is missing from the slot: the loader refuses it
  kNotAFilesystem,     // the slot partition holds random bytes instead of a filesystem
};

// "good", "broken-initrd", "hang", "health-fail", "not-a-filesystem".
Result<SlotVariant> ParseSlotVariant(std::string_view text);

// The factory bundle on RECOVERY: the factory version's system image and
// UKI, signed. Made by an injected writer (ralph-mkimage wires the
// services/ota bundle library; the boot layer does not link services/).
struct FactoryBundleRequest {
  std::string rootfs;  // the system image (slot A's)
  std::string uki;     // slot A's unified kernel image
  std::string version;
  std::string signing_cert;  // PEM
  std::string signing_key;   // PEM; RSA for reproducible bytes (PKCS#1 v1.5 is deterministic)
  int64_t signing_time = 0;  // the CMS signingTime attribute: SOURCE_DATE_EPOCH, not the clock
  std::string output;
};
using FactoryBundleWriter = std::function<Result<void>(const FactoryBundleRequest&)>;

// Where the factory bundle lives inside the RECOVERY filesystem.
inline constexpr const char* kFactoryBundlePath = "/usr/share/ralph/factory.rbundle";
// Trust anchors inside a slot: the OTA keyring (release CAs bundle signers
// chain to; `ralphctl update install` reads it) and the CAs trusted for
// HTTPS update servers (libcurl's default CA file on Debian).
inline constexpr const char* kKeyringPath = "/etc/ralph/keyring/release-ca.pem";
// The agent-image store on VAR (mounted at /var), and where the factory disk
// puts an agent-image bundle for ralphd to install on its first start
// (ralphd --agent-images, --factory-agent-bundle; docs/agents.md).
inline constexpr const char* kAgentImageStore = "/var/lib/ralph/agent-image";
inline constexpr const char* kFactoryAgentBundlePath = "/var/lib/ralph/agent-image/factory.rbundle";
inline constexpr const char* kUpdateCaPath = "/etc/ssl/certs/ca-certificates.crt";
// The owner's signed Secure Boot key lists (PK.auth, KEK.auth, db.auth) in
// every root, for `ralphctl secure-boot enroll` on a machine in setup mode.
inline constexpr const char* kSecureBootKeysDir = "/usr/share/ralph/secure-boot";

struct BuildOptions {
  std::string output;     // the disk image to write
  std::string cache_dir;  // kernel packages, extracted and depmod'ed
  std::string work_dir;   // staging; default "<output>.work"
  std::string bin_dir;    // the project's built binaries (ralph-init, ...)
  std::string kernel_package = "linux-image-cloud-amd64";  // a metapackage or a versioned one
  std::string kernel_deb;  // a local .deb instead of apt-get download
  LayoutSizes sizes;
  std::string seed = "ralphos";  // partition/disk GUIDs
  uint32_t source_date_epoch = 1700000000;
  std::string version = "0.1.0";
  bool test_agent = false;  // add the e2e command agent (never in product images)
  SlotVariant slot_b = SlotVariant::kGood;
  CmdlineOptions cmdline;
  std::string keyring;    // PEM file copied to kKeyringPath in every slot; empty: none
  std::string update_ca;  // PEM file copied to kUpdateCaPath in every slot; empty: none
  // The factory bundle: built when both are set (and `bundle_writer`).
  std::string signing_cert;
  std::string signing_key;
  FactoryBundleWriter bundle_writer;
  // UEFI Secure Boot: every unified kernel image (a.efi, b.efi,
  // recovery.efi, the removable-path copy, the factory bundle's) is signed
  // with sbsign by this db key and certificate (PEM). Both empty: unsigned
  // images (development; they boot only with Secure Boot off).
  std::string secure_boot_key;
  std::string secure_boot_cert;
  // A directory with the owner's signed key lists PK.auth, KEK.auth and
  // db.auth (efitools' sign-efi-sig-list), put at kSecureBootKeysDir in
  // every root; empty: none.
  std::string secure_boot_enroll;
  // When set, the payloads an update bundle carries are copied here:
  // system_a.img, a.efi, system_b.img, b.efi (slot B's as built, variant included).
  std::string payloads_dir;
  // A signed agent-image bundle put on VAR at kFactoryAgentBundlePath (VAR
  // is then made here, an ext4 holding it, twice the bundle's size larger
  // than --var-mib so that it and its installed image fit); empty: VAR
  // stays blank and early boot formats it.
  std::string agent_bundle;
};

struct BuildReport {
  std::string kernel_version;
  std::vector<std::string> modules;  // in load order
  std::string system_a_sha256;
  std::string system_b_sha256;
  std::string factory_bundle_sha256;  // empty: no factory bundle was built
  // The dm-verity parameters on each UKI's command line.
  VerityParams system_a_verity;
  VerityParams system_b_verity;
  VerityParams recovery_verity;
  uint64_t disk_bytes = 0;
};

// The shared objects a host binary needs, its loader included, as absolute
// host paths (what staging it into another root must copy with it).
Result<std::vector<std::string>> SharedLibraries(const std::string& binary);

// Builds the disk image at options.output.
Result<BuildReport> BuildImage(const BuildOptions& options);

struct KernelTree {
  std::string package;  // "linux-image-6.1.0-56-cloud-amd64"
  std::string version;  // "6.1.0-56-cloud-amd64"
  std::string root;     // the extracted package
  std::string vmlinuz() const { return root + "/boot/vmlinuz-" + version; }
  std::string modules_dir() const { return root + "/lib/modules/" + version; }
};

// Resolves the package, downloads it into `cache_dir` once, extracts it and
// runs depmod on it. A cached tree is reused without touching the network.
Result<KernelTree> FetchKernel(const std::string& cache_dir, const std::string& package,
                               const std::string& local_deb);

struct SlotImageInputs {
  std::string bin_dir;
  bool test_agent = false;
  SlotVariant variant = SlotVariant::kGood;
  uint32_t source_date_epoch = 0;
  std::string version;
  std::string keyring;    // see BuildOptions
  std::string update_ca;  // see BuildOptions
  // Extra host files {host path, image path} (RECOVERY: the factory bundle).
  std::vector<std::pair<std::string, std::string>> extra_files;
};

// Builds the read-only squashfs system image for a slot at `output`
// (staging under `staging_dir`) and returns its SHA-256 (hex). The same
// inputs give the same bytes.
Result<std::string> BuildSlotImage(const SlotImageInputs& inputs, const std::string& staging_dir,
                                   const std::string& output);
// RECOVERY's root (recovery/README.md): ralph-init running ralph-recovery
// (and the test agent in test images), ralphctl, mtools, e2fsprogs, the
// trust anchors and `inputs.extra_files` (the factory bundle). Same rules as
// BuildSlotImage.
Result<std::string> BuildRecoveryRoot(const SlotImageInputs& inputs, const std::string& staging_dir,
                                      const std::string& output);

// dm-verity (drivers/verity.h): pads `image` with zeros to whole 4 KiB
// blocks, appends the hash tree right after them (veritysetup format, Debian
// cryptsetup-bin) and returns the parameters for the UKI's command line.
// The salt is derived from `salt_seed`, so the same inputs give the same
// bytes.
Result<VerityParams> AppendHashTree(const std::string& image, std::string_view salt_seed);

// Signs the PE image `path` in place for UEFI Secure Boot (sbsign, an
// Authenticode signature by `key`/`cert`, PEM) and checks the result with
// sbverify against `cert`. The signature carries its signing time (the
// clock's: sbsign cannot be given one), so signing the same image twice
// gives different bytes.
Result<void> SignEfiImage(const std::string& path, const std::string& key, const std::string& cert);

// A unified kernel image: systemd's EFI stub `stub` with the sections
// .osrel, .cmdline, .linux (`vmlinuz`) and .initrd at the addresses OVMF
// boots, its PE timestamp `mtime`. Unsigned (SignEfiImage).
Result<void> AssembleUki(const std::string& vmlinuz, const std::string& initrd,
                         const std::string& cmdline, const std::string& os_release,
                         const std::string& stub, uint32_t mtime, const std::string& output);

// SHA-256 of a file, lower-case hex.
Result<std::string> FileSha256(const std::string& path);

}  // namespace ralph::mkimage
