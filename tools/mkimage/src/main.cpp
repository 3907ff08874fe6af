// ralph-mkimage: builds the flashable RalphOS disk image (see builder.h).
#include <getopt.h>

#include <cstdlib>
#include <string>

#include "platform/arch.h"
#include "platform/log.h"
#include "services/ota/bundle/bundle.h"
#include "tools/mkimage/builder.h"

namespace {

constexpr const char* kUsage = R"(usage: ralph-mkimage --out DISK.img [options]
  --bin-dir DIR          the project's built binaries (default: directory of ralph-mkimage)
  --cache DIR            kernel package cache (default: $HOME/.cache/ralphos)
  --work DIR             staging directory (default: DISK.img.work)
  --kernel-package NAME  Debian kernel package (default: linux-image-cloud-amd64)
  --kernel-deb FILE      use a local kernel .deb instead of apt-get download
  --esp-mib N --system-mib N --var-mib N --recovery-mib N   partition sizes
  --seed TEXT            seed of the partition GUIDs (default: ralphos)
  --image-version V      VERSION_ID written to os-release (default: 0.1.0)
  --watchdog-seconds N   watchdog timeout on the kernel command line (default: 20)
  --b-variant V          slot B content: good, broken-initrd, hang, health-fail, not-a-filesystem
  --test-agent           add the e2e command agent (test images only)
  --keyring PEM          OTA keyring (release CA) put into every slot as /etc/ralph/keyring
  --update-ca PEM        CAs trusted for HTTPS update servers (the slots' system CA file)
  --signing-cert PEM --signing-key PEM
                         sign the factory bundle on RECOVERY (RSA keys give reproducible
                         bundles); without them RECOVERY holds no factory bundle
  --payloads-dir DIR     also write the update payloads there: system_a.img, a.efi,
                         system_b.img, b.efi (for ralph-bundle create)
SOURCE_DATE_EPOCH sets the timestamps of the slot images (default 1700000000).
)";

// The factory bundle through the bundle format library (services/ota/bundle), the
// same code services/ota reads bundles with.
ralph::Result<void> WriteFactoryBundle(const ralph::mkimage::FactoryBundleRequest& request) {
  using namespace ralph;
  ota::CreateOptions create;
  create.cert_path = request.signing_cert;
  create.key_path = request.signing_key;
  create.version = TRY_CTX(ota::Version::Parse(request.version), "the image version");
  create.product = "ralphos";
  create.arch = std::string(arch::Name());
  create.rootfs_path = request.rootfs;
  create.uki_path = request.uki;
  create.output_path = request.output;
  create.signing_time = request.signing_time;
  TRY(ota::CreateBundle(create));
  return {};
}

bool ParseMib(const char* text, uint64_t* out) {
  char* end = nullptr;
  unsigned long long value = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0') return false;
  *out = value;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ralph;
  using namespace ralph::mkimage;
  LogInit("ralph-mkimage", LogSink::kStderr);
  BuildOptions options;
  options.cmdline.console = std::string(arch::SerialConsole());
  const char* home = std::getenv("HOME");
  options.cache_dir = std::string(home ? home : "/root") + "/.cache/ralphos";
  std::string self = argv[0];
  size_t slash = self.rfind('/');
  options.bin_dir = slash == std::string::npos ? "." : self.substr(0, slash);
  if (const char* epoch = std::getenv("SOURCE_DATE_EPOCH")) {
    options.source_date_epoch = static_cast<uint32_t>(std::strtoul(epoch, nullptr, 10));
  }

  enum {
    kOut = 1,
    kBinDir,
    kCache,
    kWork,
    kKernelPackage,
    kKernelDeb,
    kEspMib,
    kSystemMib,
    kVarMib,
    kRecoveryMib,
    kSeed,
    kVersion,
    kWatchdog,
    kVariant,
    kTestAgent,
    kKeyring,
    kUpdateCa,
    kSigningCert,
    kSigningKey,
    kPayloadsDir,
    kHelp
  };
  static const option kOptions[] = {
      {"out", required_argument, nullptr, kOut},
      {"bin-dir", required_argument, nullptr, kBinDir},
      {"cache", required_argument, nullptr, kCache},
      {"work", required_argument, nullptr, kWork},
      {"kernel-package", required_argument, nullptr, kKernelPackage},
      {"kernel-deb", required_argument, nullptr, kKernelDeb},
      {"esp-mib", required_argument, nullptr, kEspMib},
      {"system-mib", required_argument, nullptr, kSystemMib},
      {"var-mib", required_argument, nullptr, kVarMib},
      {"recovery-mib", required_argument, nullptr, kRecoveryMib},
      {"seed", required_argument, nullptr, kSeed},
      {"image-version", required_argument, nullptr, kVersion},
      {"watchdog-seconds", required_argument, nullptr, kWatchdog},
      {"b-variant", required_argument, nullptr, kVariant},
      {"test-agent", no_argument, nullptr, kTestAgent},
      {"keyring", required_argument, nullptr, kKeyring},
      {"update-ca", required_argument, nullptr, kUpdateCa},
      {"signing-cert", required_argument, nullptr, kSigningCert},
      {"signing-key", required_argument, nullptr, kSigningKey},
      {"payloads-dir", required_argument, nullptr, kPayloadsDir},
      {"help", no_argument, nullptr, kHelp},
      {nullptr, 0, nullptr, 0},
  };
  for (int opt; (opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1;) {
    uint64_t number = 0;
    switch (opt) {
      case kOut: options.output = optarg; break;
      case kBinDir: options.bin_dir = optarg; break;
      case kCache: options.cache_dir = optarg; break;
      case kWork: options.work_dir = optarg; break;
      case kKernelPackage: options.kernel_package = optarg; break;
      case kKernelDeb: options.kernel_deb = optarg; break;
      case kEspMib:
      case kSystemMib:
      case kVarMib:
      case kRecoveryMib:
      case kWatchdog:
        if (!ParseMib(optarg, &number)) {
          LogError("--{} takes a number, not '{}'", kOptions[opt - 1].name, optarg);
          return 2;
        }
        if (opt == kEspMib) options.sizes.esp_mib = number;
        if (opt == kSystemMib) options.sizes.system_mib = number;
        if (opt == kVarMib) options.sizes.var_mib = number;
        if (opt == kRecoveryMib) options.sizes.recovery_mib = number;
        if (opt == kWatchdog) options.cmdline.watchdog_seconds = static_cast<int>(number);
        break;
      case kSeed: options.seed = optarg; break;
      case kVersion: options.version = optarg; break;
      case kVariant: {
        auto variant = ParseSlotVariant(optarg);
        if (!variant) {
          LogError("{}", variant.error().ToString());
          return 2;
        }
        options.slot_b = *variant;
        break;
      }
      case kTestAgent: options.test_agent = true; break;
      case kKeyring: options.keyring = optarg; break;
      case kUpdateCa: options.update_ca = optarg; break;
      case kSigningCert: options.signing_cert = optarg; break;
      case kSigningKey: options.signing_key = optarg; break;
      case kPayloadsDir: options.payloads_dir = optarg; break;
      case kHelp: fputs(kUsage, stdout); return 0;
      default: fputs(kUsage, stderr); return 2;
    }
  }
  if (options.output.empty() || optind != argc) {
    fputs(kUsage, stderr);
    return 2;
  }
  options.bundle_writer = WriteFactoryBundle;
  if (options.signing_cert.empty()) {
    LogWarning("no --signing-cert/--signing-key: RECOVERY gets no factory bundle");
  }
  auto report = BuildImage(options);
  if (!report) {
    LogError("building {}: {}", options.output, report.error().ToString());
    return 1;
  }
  fmt::print(
      "image: {} ({} MiB)\nkernel: {}\nmodules: {}\nsystem_a sha256: {}\nsystem_b sha256: {}\n",
      options.output, report->disk_bytes / kMiB, report->kernel_version, report->modules.size(),
      report->system_a_sha256, report->system_b_sha256);
  if (!report->factory_bundle_sha256.empty()) {
    fmt::print("factory bundle sha256: {}\n", report->factory_bundle_sha256);
  }
  return 0;
}
