// ralph-bundle: the host tool that builds and inspects update bundles.
//
//   ralph-bundle create --cert C --key K [--certs EXTRA] --version X.Y.Z
//                       --product P --arch A --rootfs IMG --uki EFI
//                       [--install-from X.Y.Z] [--raise-minimum-to X.Y.Z]
//                       [--chunk-size BYTES] -o OUT.rbundle
//   ralph-bundle info BUNDLE [--keyring DIR|FILE] [--crl FILE]
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "platform/log.h"
#include "services/ota/bundle/bundle.h"

namespace ralph::ota {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  ralph-bundle create --cert PEM --key PEM [--certs PEM] --version X.Y.Z --product NAME\n"
    "                      --arch x86_64|aarch64 --rootfs IMAGE --uki EFI [--install-from X.Y.Z]\n"
    "                      [--raise-minimum-to X.Y.Z] [--chunk-size BYTES] -o OUT.rbundle\n"
    "  ralph-bundle info BUNDLE [--keyring DIR|FILE] [--crl PEM]\n";

// Parses "--name value" pairs; positional arguments go to `positional`.
Result<std::map<std::string, std::string>> ParseOptions(int argc, char** argv, int first,
                                                        std::vector<std::string>& positional) {
  std::map<std::string, std::string> options;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.starts_with("-")) {
      if (i + 1 >= argc) {
        return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} needs a value", arg));
      }
      options[arg] = argv[++i];
    } else {
      positional.push_back(arg);
    }
  }
  return options;
}

Result<std::string> Take(std::map<std::string, std::string>& options, const std::string& name,
                         bool required) {
  auto it = options.find(name);
  if (it == options.end()) {
    if (required) return Error::Make(ErrorCode::kInvalidArgument, fmt::format("missing {}", name));
    return std::string();
  }
  std::string value = std::move(it->second);
  options.erase(it);
  return value;
}

Result<void> Create(int argc, char** argv) {
  std::vector<std::string> positional;
  auto options = TRY(ParseOptions(argc, argv, 2, positional));
  CreateOptions create;
  create.cert_path = TRY(Take(options, "--cert", true));
  create.key_path = TRY(Take(options, "--key", true));
  create.extra_certs_path = TRY(Take(options, "--certs", false));
  create.version = TRY_CTX(Version::Parse(TRY(Take(options, "--version", true))), "--version");
  create.product = TRY(Take(options, "--product", true));
  create.arch = TRY(Take(options, "--arch", true));
  create.rootfs_path = TRY(Take(options, "--rootfs", true));
  create.uki_path = TRY(Take(options, "--uki", true));
  create.output_path = TRY(Take(options, "-o", true));
  if (std::string v = TRY(Take(options, "--install-from", false)); !v.empty()) {
    create.install_from = TRY_CTX(Version::Parse(v), "--install-from");
  }
  if (std::string v = TRY(Take(options, "--raise-minimum-to", false)); !v.empty()) {
    create.raise_minimum_to = TRY_CTX(Version::Parse(v), "--raise-minimum-to");
  }
  if (std::string v = TRY(Take(options, "--chunk-size", false)); !v.empty()) {
    char* end = nullptr;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (*end != '\0' || n == 0 || n > kMaxChunkSize) {
      return Error::Make(ErrorCode::kInvalidArgument, fmt::format("--chunk-size {} is invalid", v));
    }
    create.chunk_size = static_cast<uint32_t>(n);
  }
  if (!options.empty() || !positional.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("unknown argument {}",
                                   options.empty() ? positional.front() : options.begin()->first));
  }
  Manifest m = TRY_CTX(CreateBundle(create), fmt::format("creating {}", create.output_path));
  std::printf("created %s: %s %s/%s, rootfs %llu bytes, uki %llu bytes\n",
              create.output_path.c_str(), m.version.ToString().c_str(), m.product.c_str(),
              m.arch.c_str(),
              static_cast<unsigned long long>(m.Find(PayloadType::kSystemImage)->size),
              static_cast<unsigned long long>(m.Find(PayloadType::kUki)->size));
  return {};
}

void PrintManifest(const OpenedBundle& b) {
  const Manifest& m = b.manifest;
  std::printf("format:     %u\n", m.format);
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

// Exit status: 0 valid, 1 invalid or error, 2 not verified (no keyring).
int Info(int argc, char** argv) {
  std::vector<std::string> positional;
  auto options = ParseOptions(argc, argv, 2, positional);
  if (!options || positional.size() != 1) {
    std::fputs(kUsage, stderr);
    return 1;
  }
  std::string keyring_path = options->count("--keyring") ? (*options)["--keyring"] : "";
  std::string crl_path = options->count("--crl") ? (*options)["--crl"] : "";
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
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 1;
  }
  std::string command = argv[1];
  if (command == "create") {
    auto result = Create(argc, argv);
    if (!result) {
      LogError("{}", result.error().ToString());
      return 1;
    }
    return 0;
  }
  if (command == "info") return Info(argc, argv);
  std::fputs(kUsage, stderr);
  return 1;
}

}  // namespace
}  // namespace ralph::ota

int main(int argc, char** argv) {
  return ralph::ota::Main(argc, argv);
}
