#include "services/ota/bundle/bundle.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "platform/file_io.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"

namespace ralph::ota {
namespace {

Error Corrupt(std::string message) {
  return Error::Make(ErrorCode::kCorrupt, std::move(message));
}

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | p[i];
  return v;
}
uint64_t GetLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

uint64_t AlignUp(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

// Reads up to `length` bytes; fewer only at end of file.
Result<size_t> ReadFull(int fd, uint8_t* data, size_t length, std::string_view what) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::read(fd, data + done, length - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno(fmt::format("read {}", what), errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

// Hashes a payload file chunk by chunk into `payload` (size, digests).
Result<void> HashPayloadFile(const std::string& path, Payload& payload) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Error::FromErrno(fmt::format("stat {}", path), errno);
  if (st.st_size == 0) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} is empty", path));
  }
  payload.size = static_cast<uint64_t>(st.st_size);
  payload.chunks.clear();
  std::vector<uint8_t> buffer(payload.chunk_size);
  Sha256 whole = TRY(Sha256::Create());
  Sha256 chunk = TRY(Sha256::Create());
  uint64_t total = 0;
  while (true) {
    size_t n = TRY(ReadFull(fd.get(), buffer.data(), buffer.size(), path));
    if (n == 0) break;
    std::span<const uint8_t> data(buffer.data(), n);
    TRY(whole.Update(data));
    TRY(chunk.Update(data));
    payload.chunks.push_back(TRY(chunk.Finish()));
    TRY(chunk.Reset());
    total += n;
    if (n < buffer.size()) break;
  }
  if (total != payload.size) {
    return Error::Make(ErrorCode::kIo, fmt::format("{} changed size while hashing ({} -> {})", path,
                                                   payload.size, total));
  }
  payload.sha256 = TRY(whole.Finish());
  return {};
}

Result<void> CopyPayloadFile(const std::string& path, const Payload& payload, int out_fd,
                             const std::string& out_path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  std::vector<uint8_t> buffer(payload.chunk_size);
  Sha256 whole = TRY(Sha256::Create());
  uint64_t copied = 0;
  while (copied < payload.size) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), payload.size - copied));
    size_t n = TRY(ReadFull(fd.get(), buffer.data(), want, path));
    if (n != want) {
      return Error::Make(ErrorCode::kIo, fmt::format("{} shrank while building the bundle", path));
    }
    TRY(whole.Update(std::span<const uint8_t>(buffer.data(), n)));
    TRY(WriteAll(out_fd, std::span<const uint8_t>(buffer.data(), n), out_path));
    copied += n;
  }
  // The file must not have changed between hashing and copying.
  if (TRY(whole.Finish()) != payload.sha256) {
    return Error::Make(ErrorCode::kIo, fmt::format("{} changed while building the bundle", path));
  }
  return {};
}

Result<OpenedBundle> ReadBundleParts(ByteSourceInterface& source) {
  OpenedBundle bundle;
  uint64_t size = source.Size();
  if (size < kBundleHeaderSize) {
    return Corrupt(fmt::format("bundle is truncated: {} bytes, smaller than its {}-byte header",
                               size, kBundleHeaderSize));
  }
  std::array<uint8_t, kBundleHeaderSize> header_bytes{};
  TRY_CTX(source.ReadAt(0, header_bytes), "reading bundle header");
  bundle.header = TRY(DecodeBundleHeader(header_bytes, size));
  bundle.manifest_bytes.resize(bundle.header.manifest_length);
  TRY_CTX(source.ReadAt(bundle.header.manifest_offset(), bundle.manifest_bytes),
          "reading bundle manifest");
  bundle.signature.resize(bundle.header.signature_length);
  TRY_CTX(source.ReadAt(bundle.header.signature_offset(), bundle.signature),
          "reading bundle signature");
  return bundle;
}

std::string_view AsText(const std::vector<uint8_t>& bytes) {
  return std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

}  // namespace

std::array<uint8_t, kBundleHeaderSize> EncodeBundleHeader(const BundleHeader& header) {
  std::array<uint8_t, kBundleHeaderSize> out{};
  std::copy(kBundleMagic.begin(), kBundleMagic.end(), out.begin());
  PutLe32(&out[8], header.format_version);
  PutLe32(&out[12], kBundleHeaderSize);
  PutLe64(&out[16], header.manifest_length);
  PutLe64(&out[24], header.signature_length);
  return out;
}

Result<BundleHeader> DecodeBundleHeader(std::span<const uint8_t> bytes, uint64_t file_size) {
  if (bytes.size() < kBundleHeaderSize) {
    return Corrupt(
        fmt::format("bundle header is {} bytes, expected {}", bytes.size(), kBundleHeaderSize));
  }
  if (!std::equal(kBundleMagic.begin(), kBundleMagic.end(), bytes.begin())) {
    return Corrupt("not a RalphOS bundle (bad magic)");
  }
  BundleHeader header;
  header.format_version = GetLe32(&bytes[8]);
  if (header.format_version != kBundleFormatVersion) {
    return Corrupt(fmt::format("bundle format version {} is not supported (expected {})",
                               header.format_version, kBundleFormatVersion));
  }
  uint32_t header_size = GetLe32(&bytes[12]);
  if (header_size != kBundleHeaderSize) {
    return Corrupt(fmt::format("bundle header size {} is not {}", header_size, kBundleHeaderSize));
  }
  header.manifest_length = GetLe64(&bytes[16]);
  header.signature_length = GetLe64(&bytes[24]);
  for (size_t i = 32; i < kBundleHeaderSize; ++i) {
    if (bytes[i] != 0) return Corrupt(fmt::format("bundle header reserved byte {} is not zero", i));
  }
  if (header.manifest_length == 0 || header.manifest_length > kMaxManifestSize) {
    return Corrupt(fmt::format("bundle manifest length {} is outside 1..{}", header.manifest_length,
                               kMaxManifestSize));
  }
  if (header.signature_length == 0 || header.signature_length > kMaxSignatureSize) {
    return Corrupt(fmt::format("bundle signature length {} is outside 1..{}",
                               header.signature_length, kMaxSignatureSize));
  }
  // Both lengths are bounded above, so the sum cannot overflow.
  if (header.signature_end() > file_size) {
    return Corrupt(fmt::format(
        "bundle is truncated: manifest and signature end at byte {} but the file has {}",
        header.signature_end(), file_size));
  }
  return header;
}

Result<void> CheckPayloadBounds(const Manifest& manifest, const BundleHeader& header,
                                uint64_t file_size) {
  uint64_t end = header.signature_end();
  for (const Payload& p : manifest.payloads) {
    if (p.offset < end) {
      return Corrupt(
          fmt::format("payload '{}' at offset {} overlaps the data before it (ends at {})", p.name,
                      p.offset, end));
    }
    if (p.offset > file_size || p.size > file_size - p.offset) {
      return Corrupt(
          fmt::format("bundle is truncated: payload '{}' ends at byte {} but the file "
                      "has {}",
                      p.name, p.offset + p.size, file_size));
    }
    end = p.offset + p.size;
  }
  if (end != file_size) {
    return Corrupt(fmt::format("bundle has {} bytes of trailing data after the last payload",
                               file_size - end));
  }
  return {};
}

Result<OpenedBundle> OpenBundle(ByteSourceInterface& source, const Keyring& keyring) {
  OpenedBundle bundle = TRY(ReadBundleParts(source));
  bundle.signer = TRY_CTX(VerifyDetached(bundle.manifest_bytes, bundle.signature, keyring),
                          "verifying bundle signature");
  bundle.manifest = TRY_CTX(ParseManifest(AsText(bundle.manifest_bytes)), "parsing manifest");
  TRY(CheckPayloadBounds(bundle.manifest, bundle.header, source.Size()));
  return bundle;
}

Result<OpenedBundle> OpenBundleUnverified(ByteSourceInterface& source) {
  OpenedBundle bundle = TRY(ReadBundleParts(source));
  bundle.signer = TRY_CTX(ReadSigner(bundle.signature), "reading bundle signature");
  bundle.manifest = TRY_CTX(ParseManifest(AsText(bundle.manifest_bytes)), "parsing manifest");
  TRY(CheckPayloadBounds(bundle.manifest, bundle.header, source.Size()));
  return bundle;
}

Result<Manifest> CreateBundle(const CreateOptions& options) {
  Manifest m;
  m.version = options.version;
  m.product = options.product;
  m.arch = options.arch;
  m.install_from = options.install_from;
  m.raise_minimum_to = options.raise_minimum_to;
  m.kind = options.kind;
  // The payloads in file order, each with the file it is copied from.
  std::vector<std::pair<Payload, std::string>> inputs;
  if (options.kind == BundleKind::kAgentImage) {
    inputs.push_back({{.name = "agent-image",
                       .type = PayloadType::kAgentImage,
                       .chunk_size = options.chunk_size},
                      options.agent_image_path});
  } else {
    inputs.push_back(
        {{.name = "rootfs", .type = PayloadType::kSystemImage, .chunk_size = options.chunk_size},
         options.rootfs_path});
    inputs.push_back({{.name = "uki", .type = PayloadType::kUki, .chunk_size = options.chunk_size},
                      options.uki_path});
  }
  for (auto& [payload, path] : inputs) {
    TRY_CTX(HashPayloadFile(path, payload), fmt::format("hashing {}", payload.name));
    m.payloads.push_back(payload);
  }

  // Payload offsets are inside the signed manifest, and depend on the
  // manifest's and signature's lengths: iterate to a fixed point (the 4 KiB
  // alignment absorbs the few bytes of variation, so this takes 2 rounds).
  std::string xml;
  std::vector<uint8_t> signature;
  uint64_t payload_start = kPayloadAlignment;
  for (int round = 0;; ++round) {
    if (round == 8) return Error::Make(ErrorCode::kInternal, "bundle layout did not converge");
    uint64_t offset = payload_start;
    for (Payload& p : m.payloads) {
      p.offset = offset;
      offset = AlignUp(offset + p.size, kPayloadAlignment);
    }
    xml = TRY(SerializeManifest(m));
    signature = TRY_CTX(
        SignDetached(
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(xml.data()), xml.size()),
            options.cert_path, options.key_path, options.extra_certs_path, options.signing_time),
        "signing manifest");
    uint64_t needed = AlignUp(kBundleHeaderSize + xml.size() + signature.size(), kPayloadAlignment);
    if (needed == payload_start) break;
    payload_start = needed;
  }

  AtomicFile out = TRY(AtomicFile::Create(options.output_path, 0644));
  const std::string& tmp = out.temp_path();
  BundleHeader header{.manifest_length = xml.size(), .signature_length = signature.size()};
  auto header_bytes = EncodeBundleHeader(header);
  TRY(WriteAll(out.fd(), header_bytes, tmp));
  TRY(WriteAll(out.fd(), xml, tmp));
  TRY(WriteAll(out.fd(), signature, tmp));
  uint64_t position = header.signature_end();
  std::vector<uint8_t> zeros(kPayloadAlignment, 0);
  for (size_t i = 0; i < m.payloads.size(); ++i) {
    const Payload& p = m.payloads[i];
    TRY(WriteAll(out.fd(), std::span(zeros).first(p.offset - position), tmp));
    TRY_CTX(CopyPayloadFile(inputs[i].second, p, out.fd(), tmp), fmt::format("copying {}", p.name));
    position = p.offset + p.size;
  }
  // A build output: whole once written, the directory left to the page cache.
  TRY(out.Commit(Durability::kFileSynced));
  return m;
}

}  // namespace ralph::ota
