// ralph-bundle: the host tool that builds and inspects update bundles.
//
//   ralph-bundle create --cert C --key K [--certs EXTRA] --version X.Y.Z
//                       --product P --arch A --rootfs IMG --uki EFI
//                       [--install-from X.Y.Z] [--raise-minimum-to X.Y.Z]
//                       [--chunk-size BYTES] [--secure-boot-cert PEM] -o OUT.rbundle
//   ralph-bundle create --kind agent-image --cert C --key K --version X.Y.Z
//                       --product P --arch A --agent-image SQUASHFS -o OUT.rbundle
//   ralph-bundle info BUNDLE [--keyring DIR|FILE] [--crl FILE]
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/cli.h"
#include "platform/log.h"
#include "platform/process.h"
#include "services/ota/bundle/bundle.h"

namespace ralph::ota {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  ralph-bundle create --cert PEM --key PEM [--certs PEM] --version X.Y.Z --product NAME\n"
    "                      --arch x86_64|aarch64 --rootfs IMAGE --uki EFI [--install-from X.Y.Z]\n"
    "                      [--raise-minimum-to X.Y.Z] [--chunk-size BYTES]\n"
    "                      [--secure-boot-cert PEM] -o OUT.rbundle\n"
    "  ralph-bundle create --kind agent-image --cert PEM --key PEM [--certs PEM]\n"
    "                      --version X.Y.Z --product NAME --arch x86_64|aarch64\n"
    "                      --agent-image SQUASHFS [--chunk-size BYTES] -o OUT.rbundle\n"
    "  ralph-bundle info BUNDLE [--keyring DIR|FILE] [--crl PEM]\n";

Result<Version> ParseVersionFlag(std::string_view flag, const std::string& text) {
  return TRY_CTX(Version::Parse(text), std::string(flag));
}

// A UKI for a Secure Boot machine: its Authenticode signature verifies
// against the db certificate `cert` (sbverify), so the firmware will boot it
// once the installer has put it on the ESP.
Result<void> CheckUkiSignature(const std::string& uki, const std::string& cert) {
  TRY_CTX(
      RunProgramChecked({.argv = {"sbverify", "--cert", cert, uki}, .package = "sbsigntool"}),
      fmt::format("--uki {} is not signed for Secure Boot by --secure-boot-cert {}", uki, cert));
  return {};
}

// Exit status: 0 created, 1 failed, 2 a bad command line.
int Create(std::span<const std::string> args) {
  cli::Parser parser("ralph-bundle create", kUsage);
  CreateOptions create;
  std::string version, install_from, raise_minimum_to, chunk_size, kind, secure_boot_cert;
  struct Required {
    const char* name;
    std::string* value;
  };
  const Required common[] = {
      {"--cert", &create.cert_path},  {"--key", &create.key_path}, {"--version", &version},
      {"--product", &create.product}, {"--arch", &create.arch},    {"-o", &create.output_path},
  };
  const Required system[] = {{"--rootfs", &create.rootfs_path}, {"--uki", &create.uki_path}};
  const Required agent[] = {{"--agent-image", &create.agent_image_path}};
  for (const Required& option : common) parser.Option(option.name, option.value);
  for (const Required& option : system) parser.Option(option.name, option.value);
  for (const Required& option : agent) parser.Option(option.name, option.value);
  parser.Option("--kind", &kind);
  parser.Option("--certs", &create.extra_certs_path);
  parser.Option("--install-from", &install_from);
  parser.Option("--raise-minimum-to", &raise_minimum_to);
  parser.Option("--chunk-size", &chunk_size);
  parser.Option("--secure-boot-cert", &secure_boot_cert);
  if (std::optional<int> exit = parser.Parse(args)) return *exit;
  if (kind.empty() || kind == "system") {
    create.kind = BundleKind::kSystem;
  } else if (kind == "agent-image") {
    create.kind = BundleKind::kAgentImage;
  } else {
    return parser.UsageError(fmt::format("--kind {}: unknown kind (system or agent-image)", kind));
  }
  bool agent_kind = create.kind == BundleKind::kAgentImage;
  for (const Required& option : common) {
    if (option.value->empty()) return parser.UsageError(fmt::format("missing {}", option.name));
  }
  for (const Required& option :
       agent_kind ? std::span<const Required>(agent) : std::span<const Required>(system)) {
    if (option.value->empty()) return parser.UsageError(fmt::format("missing {}", option.name));
  }
  for (const Required& option :
       agent_kind ? std::span<const Required>(system) : std::span<const Required>(agent)) {
    if (!option.value->empty()) {
      return parser.UsageError(
          agent_kind ? fmt::format("{} does not go with --kind agent-image", option.name)
                     : fmt::format("{} needs --kind agent-image", option.name));
    }
  }
  if (agent_kind && (!install_from.empty() || !raise_minimum_to.empty())) {
    return parser.UsageError(
        "--install-from and --raise-minimum-to are for system bundles (the slot's anti-rollback)");
  }
  auto parsed_version = ParseVersionFlag("--version", version);
  if (!parsed_version) return parser.UsageError(parsed_version.error().message());
  create.version = *parsed_version;
  if (!install_from.empty()) {
    auto parsed = ParseVersionFlag("--install-from", install_from);
    if (!parsed) return parser.UsageError(parsed.error().message());
    create.install_from = *parsed;
  }
  if (!raise_minimum_to.empty()) {
    auto parsed = ParseVersionFlag("--raise-minimum-to", raise_minimum_to);
    if (!parsed) return parser.UsageError(parsed.error().message());
    create.raise_minimum_to = *parsed;
  }
  if (!chunk_size.empty()) {
    char* end = nullptr;
    unsigned long long n = std::strtoull(chunk_size.c_str(), &end, 10);
    if (*end != '\0' || n == 0 || n > kMaxChunkSize) {
      return parser.UsageError(fmt::format("--chunk-size {} is invalid", chunk_size));
    }
    create.chunk_size = static_cast<uint32_t>(n);
  }
  if (!secure_boot_cert.empty()) {
    if (agent_kind) return parser.UsageError("--secure-boot-cert is for system bundles (the UKI)");
    auto checked = CheckUkiSignature(create.uki_path, secure_boot_cert);
    if (!checked) {
      LogError("creating {}: {}", create.output_path, checked.error().ToString());
      return 1;
    }
  }
  auto created = CreateBundle(create);
  if (!created) {
    LogError("creating {}: {}", create.output_path, created.error().ToString());
    return 1;
  }
  const Manifest& m = *created;
  std::string payloads;
  for (const Payload& p : m.payloads) {
    payloads += fmt::format(", {} {} bytes", p.name, p.size);
  }
  std::printf("created %s: %s bundle %s %s/%s%s\n", create.output_path.c_str(),
              std::string(BundleKindName(m.kind)).c_str(), m.version.ToString().c_str(),
              m.product.c_str(), m.arch.c_str(), payloads.c_str());
  return 0;
}

void PrintManifest(const OpenedBundle& b) {
  const Manifest& m = b.manifest;
  std::printf("format:     %u\n", m.format);
  std::printf("kind:       %s\n", std::string(BundleKindName(m.kind)).c_str());
  std::printf("version:    %s\n", m.version.ToString().c_str());
  std::printf("compatible: %s / %s\n", m.product.c_str(), m.arch.c_str());
  if (m.install_from) std::printf("install-from: %s\n", m.install_from->ToString().c_str());
  if (m.raise_minimum_to) {
    std::printf("raise-minimum-to: %s\n", m.raise_minimum_to->ToString().c_str());
  }
  for (const Payload& p : m.payloads) {
    std::printf("payload %-8s %-12s offset %llu size %llu chunks %llu x %u\n  sha256 %s\n",
                p.name.c_str(), std::string(PayloadTypeName(p.type)).c_str(),
                static_cast<unsigned long long>(p.offset), static_cast<unsigned long long>(p.size),
                static_cast<unsigned long long>(p.ChunkCount()), p.chunk_size,
                DigestToHex(p.sha256).c_str());
  }
  std::printf("signer:     %s\n  issuer:   %s\n  serial:   %s\n  expires:  %s\n",
              b.signer.subject.c_str(), b.signer.issuer.c_str(), b.signer.serial.c_str(),
              b.signer.not_after.c_str());
}

// Exit status: 0 valid, 1 invalid or error, 2 not verified (no keyring) or
// a bad command line.
int Info(std::span<const std::string> args) {
  cli::Parser parser("ralph-bundle info", kUsage);
  std::vector<std::string> positional;
  std::string keyring_path, crl_path;
  parser.Option("--keyring", &keyring_path);
  parser.Option("--crl", &crl_path);
  parser.Operands(&positional);
  if (std::optional<int> exit = parser.Parse(args)) return *exit;
  if (positional.size() != 1) return parser.UsageError("which bundle? (one BUNDLE)");
  auto source = FileSource::Open(positional[0]);
  if (!source) {
    LogError("{}", source.error().ToString());
    return 1;
  }
  if (keyring_path.empty()) {
    auto bundle = OpenBundleUnverified(**source);
    if (!bundle) {
      LogError("{}: {}", positional[0], bundle.error().ToString());
      return 1;
    }
    PrintManifest(*bundle);
    std::printf("verdict:    NOT VERIFIED (no --keyring given)\n");
    LogWarning("{}: NOT VERIFIED: no --keyring given", positional[0]);
    return 2;
  }
  auto keyring = Keyring::Load(keyring_path, crl_path);
  if (!keyring) {
    LogError("{}", keyring.error().ToString());
    return 1;
  }
  auto bundle = OpenBundle(**source, *keyring);
  if (!bundle) {
    // Show what the bundle claims, then why it is refused.
    if (auto unverified = OpenBundleUnverified(**source)) PrintManifest(*unverified);
    std::printf("verdict:    INVALID: %s\n", bundle.error().ToString().c_str());
    LogError("{}: INVALID: {}", positional[0], bundle.error().ToString());
    return 1;
  }
  PrintManifest(*bundle);
  std::printf("verdict:    VALID (signature and signer trusted by %s)\n", keyring_path.c_str());
  return 0;
}

int Main(int argc, char** argv) {
  LogInit("ralph-bundle", LogSink::kStderr);
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string command = args.empty() ? std::string() : args[0];
  std::span<const std::string> rest =
      args.empty() ? std::span<const std::string>() : std::span<const std::string>(args).subspan(1);
  if (command == "create") return Create(rest);
  if (command == "info") return Info(rest);
  cli::Parser parser("ralph-bundle", kUsage);
  std::vector<std::string> words;  // the unknown command, reported below
  parser.Operands(&words);
  if (std::optional<int> exit = parser.Parse(args)) return *exit;  // --help, or an unknown option
  return parser.UsageError(args.empty() ? "missing command (create or info)"
                                        : fmt::format("unknown command \"{}\"", command));
}

}  // namespace
}  // namespace ralph::ota

int main(int argc, char** argv) {
  return ralph::ota::Main(argc, argv);
}
