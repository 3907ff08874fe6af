// ralph-mkimage: builds the flashable RalphOS disk image (see builder.h).
#include <cstdlib>
#include <iterator>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "platform/arch.h"
#include "platform/cli.h"
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
  --b-variant V          slot B content: good, broken-initrd, hang, health-fail (ralphd
                         cannot start), not-a-filesystem
  --test-agent           add the e2e command agent (test images only)
  --keyring PEM          OTA keyring (release CA) put into every slot as /etc/ralph/keyring
  --update-ca PEM        CAs trusted for HTTPS update servers (the slots' system CA file)
  --signing-cert PEM --signing-key PEM
                         sign the factory bundle on RECOVERY (RSA keys give reproducible
                         bundles); without them RECOVERY holds no factory bundle
  --secure-boot-key PEM --secure-boot-cert PEM
                         sign every unified kernel image for UEFI Secure Boot with this db
                         key (sbsign); without them the images are unsigned and boot only
                         with Secure Boot off
  --secure-boot-enroll DIR
                         the owner's signed Secure Boot key lists DIR/{PK,KEK,db}.auth
                         (efitools' sign-efi-sig-list) put into every root at
                         /usr/share/ralph/secure-boot for `ralphctl secure-boot enroll`
  --payloads-dir DIR     also write the update payloads there: system_a.img, a.efi,
                         system_b.img, b.efi (for ralph-bundle create)
  --agent-bundle FILE    a signed agent-image bundle (ralph-bundle create --kind agent-image)
                         put on VAR, which grows by twice its size; ralphd installs it on
                         the first boot
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

// An agent-image bundle for this arch; with a keyring, one its signature
// verifies against (as ralphd will on the first boot).
ralph::Result<void> CheckAgentBundle(const std::string& path, const std::string& keyring_path) {
  using namespace ralph;
  std::unique_ptr<ota::FileSource> source = TRY(ota::FileSource::Open(path));
  ota::OpenedBundle bundle;
  if (keyring_path.empty()) {
    bundle = TRY(ota::OpenBundleUnverified(*source));
  } else {
    ota::Keyring keyring = TRY(ota::Keyring::Load(keyring_path));
    bundle = TRY(ota::OpenBundle(*source, keyring));
  }
  if (bundle.manifest.kind != ota::BundleKind::kAgentImage) {
    return Error::Make(
        ErrorCode::kInvalidArgument,
        fmt::format("a {} bundle, not an agent image", ota::BundleKindName(bundle.manifest.kind)));
  }
  if (bundle.manifest.arch != arch::Name()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("for {}, this image is {}", bundle.manifest.arch, arch::Name()));
  }
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

  cli::Parser parser("ralph-mkimage", kUsage);
  parser.Option("--out", &options.output);
  parser.Option("--bin-dir", &options.bin_dir);
  parser.Option("--cache", &options.cache_dir);
  parser.Option("--work", &options.work_dir);
  parser.Option("--kernel-package", &options.kernel_package);
  parser.Option("--kernel-deb", &options.kernel_deb);
  struct Number {
    const char* name;
    std::optional<std::string> text;
  };
  Number numbers[] = {{"--esp-mib", {}},
                      {"--system-mib", {}},
                      {"--var-mib", {}},
                      {"--recovery-mib", {}},
                      {"--watchdog-seconds", {}}};
  for (Number& number : numbers) parser.Option(number.name, &number.text);
  parser.Option("--seed", &options.seed);
  parser.Option("--image-version", &options.version);
  std::optional<std::string> variant;
  parser.Option("--b-variant", &variant);
  parser.Flag("--test-agent", &options.test_agent);
  parser.Option("--keyring", &options.keyring);
  parser.Option("--update-ca", &options.update_ca);
  parser.Option("--signing-cert", &options.signing_cert);
  parser.Option("--signing-key", &options.signing_key);
  parser.Option("--secure-boot-key", &options.secure_boot_key);
  parser.Option("--secure-boot-cert", &options.secure_boot_cert);
  parser.Option("--secure-boot-enroll", &options.secure_boot_enroll);
  parser.Option("--payloads-dir", &options.payloads_dir);
  parser.Option("--agent-bundle", &options.agent_bundle);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return *exit;
  uint64_t* targets[] = {&options.sizes.esp_mib, &options.sizes.system_mib, &options.sizes.var_mib,
                         &options.sizes.recovery_mib, nullptr};
  for (size_t i = 0; i < std::size(numbers); ++i) {
    if (!numbers[i].text) continue;
    uint64_t number = 0;
    if (!ParseMib(numbers[i].text->c_str(), &number)) {
      return parser.UsageError(
          fmt::format("{} takes a number, not '{}'", numbers[i].name, *numbers[i].text));
    }
    if (targets[i] != nullptr) {
      *targets[i] = number;
    } else {
      options.cmdline.watchdog_seconds = static_cast<int>(number);
    }
  }
  if (variant) {
    auto parsed = ParseSlotVariant(*variant);
    if (!parsed) return parser.UsageError(parsed.error().message());
    options.slot_b = *parsed;
  }
  if (options.output.empty()) return parser.UsageError("--out is required");
  options.bundle_writer = WriteFactoryBundle;
  if (!options.agent_bundle.empty()) {
    // Refused here rather than on the appliance's first boot: not an
    // agent-image bundle, or (with --keyring) not signed for the slots'
    // keyring.
    auto checked = CheckAgentBundle(options.agent_bundle, options.keyring);
    if (!checked) {
      LogError("--agent-bundle {}: {}", options.agent_bundle, checked.error().ToString());
      return 1;
    }
  }
  if (options.signing_cert.empty()) {
    LogWarning("no --signing-cert/--signing-key: RECOVERY gets no factory bundle");
  }
  if (options.secure_boot_key.empty()) {
    LogWarning("no --secure-boot-key/--secure-boot-cert: unsigned kernel images (Secure Boot off)");
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
  for (const auto& [name, verity] : {std::pair{"system_a", &report->system_a_verity},
                                     {"system_b", &report->system_b_verity},
                                     {"recovery", &report->recovery_verity}}) {
    fmt::print("{} dm-verity: {}\n", name, RenderVerityCmdline(*verity));
  }
  return 0;
}
