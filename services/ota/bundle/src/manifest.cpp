#include "services/ota/bundle/manifest.h"

#include <tinyxml2.h>

#include <algorithm>
#include <charconv>
#include <set>

#include <fmt/format.h>

namespace ralph::ota {
namespace {

Error Corrupt(std::string message) {
  return Error::Make(ErrorCode::kCorrupt, std::move(message));
}

bool IsPowerOfTwo(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

// Parses a decimal uint64 with no sign, no leading '+', no spaces, no leading
// zeros (except "0"), so that each number has exactly one spelling.
Result<uint64_t> ParseDecimal(std::string_view text, std::string_view what) {
  if (text.empty() || text.size() > 20 || (text.size() > 1 && text[0] == '0')) {
    return Corrupt(fmt::format("{}: '{}' is not a decimal number", what, text));
  }
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    return Corrupt(fmt::format("{}: '{}' is not a decimal number", what, text));
  }
  return value;
}

bool ValidName(std::string_view name, size_t max, bool allow_upper_dot) {
  if (name.empty() || name.size() > max) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) {
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') return true;
    return allow_upper_dot && ((c >= 'A' && c <= 'Z') || c == '.' || c == '_');
  });
}

// Rejects attributes of `element` not in `allowed`.
Result<void> CheckAttributes(const tinyxml2::XMLElement& element,
                             std::initializer_list<std::string_view> allowed) {
  for (const tinyxml2::XMLAttribute* a = element.FirstAttribute(); a; a = a->Next()) {
    std::string_view name = a->Name();
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      return Corrupt(fmt::format("<{}>: unknown attribute '{}'", element.Name(), name));
    }
  }
  return {};
}

Result<std::string_view> RequiredAttribute(const tinyxml2::XMLElement& element,
                                           std::string_view name) {
  const char* value = element.Attribute(std::string(name).c_str());
  if (!value) return Corrupt(fmt::format("<{}>: missing attribute '{}'", element.Name(), name));
  return std::string_view(value);
}

// Rejects text content and comments-as-content where only elements belong.
Result<void> CheckNoText(const tinyxml2::XMLElement& element) {
  for (const tinyxml2::XMLNode* n = element.FirstChild(); n; n = n->NextSibling()) {
    if (n->ToText()) return Corrupt(fmt::format("<{}>: unexpected text", element.Name()));
  }
  return {};
}

Result<void> CheckEmpty(const tinyxml2::XMLElement& element) {
  for (const tinyxml2::XMLNode* n = element.FirstChild(); n; n = n->NextSibling()) {
    if (n->ToComment()) continue;
    return Corrupt(fmt::format("<{}>: must be empty", element.Name()));
  }
  return {};
}

Result<Payload> ParsePayload(const tinyxml2::XMLElement& element, size_t index) {
  std::string where = fmt::format("<payload> #{}", index);
  TRY_CTX(CheckAttributes(element, {"name", "type", "offset", "size", "sha256", "chunk-size"}),
          where);
  TRY_CTX(CheckNoText(element), where);
  Payload payload;
  payload.name = std::string(TRY_CTX(RequiredAttribute(element, "name"), where));
  if (!ValidName(payload.name, 32, false)) {
    return Corrupt(fmt::format("{}: invalid name '{}'", where, payload.name));
  }
  where = fmt::format("<payload name=\"{}\">", payload.name);
  std::string_view type = TRY_CTX(RequiredAttribute(element, "type"), where);
  if (type == "system-image") {
    payload.type = PayloadType::kSystemImage;
  } else if (type == "uki") {
    payload.type = PayloadType::kUki;
  } else if (type == "agent-image") {
    payload.type = PayloadType::kAgentImage;
  } else {
    return Corrupt(fmt::format("{}: unknown type '{}'", where, type));
  }
  payload.offset =
      TRY(ParseDecimal(TRY_CTX(RequiredAttribute(element, "offset"), where), where + " offset"));
  payload.size =
      TRY(ParseDecimal(TRY_CTX(RequiredAttribute(element, "size"), where), where + " size"));
  payload.sha256 = TRY_CTX(ParseSha256Hex(TRY_CTX(RequiredAttribute(element, "sha256"), where)),
                           where + " sha256");
  uint64_t chunk_size = TRY(ParseDecimal(TRY_CTX(RequiredAttribute(element, "chunk-size"), where),
                                         where + " chunk-size"));
  if (chunk_size < kMinChunkSize || chunk_size > kMaxChunkSize || !IsPowerOfTwo(chunk_size)) {
    return Corrupt(fmt::format("{}: chunk-size {} is not a power of two in [{}, {}]", where,
                               chunk_size, kMinChunkSize, kMaxChunkSize));
  }
  payload.chunk_size = static_cast<uint32_t>(chunk_size);
  if (payload.size == 0) return Corrupt(fmt::format("{}: size is 0", where));
  // Bound the chunk count before allocating for it: the manifest size limit
  // already implies fewer than kMaxManifestSize / 20 chunk elements.
  uint64_t expected_chunks = payload.ChunkCount();
  if (expected_chunks > kMaxManifestSize / 20) {
    return Corrupt(fmt::format("{}: size {} needs {} chunks, more than a manifest can hold", where,
                               payload.size, expected_chunks));
  }
  for (const tinyxml2::XMLNode* n = element.FirstChild(); n; n = n->NextSibling()) {
    if (n->ToComment()) continue;
    const tinyxml2::XMLElement* chunk = n->ToElement();
    if (!chunk) return Corrupt(fmt::format("{}: unexpected content", where));
    std::string_view chunk_name = chunk->Name();
    std::string chunk_where = fmt::format("{} chunk {}", where, payload.chunks.size());
    if (chunk_name != "chunk") {
      return Corrupt(fmt::format("{}: unknown element <{}>", where, chunk_name));
    }
    if (payload.chunks.size() >= expected_chunks) {
      return Corrupt(
          fmt::format("{}: more than the {} chunks its size needs", where, expected_chunks));
    }
    TRY_CTX(CheckAttributes(*chunk, {"sha256"}), chunk_where);
    TRY_CTX(CheckEmpty(*chunk), chunk_where);
    payload.chunks.push_back(TRY_CTX(
        ParseSha256Hex(TRY_CTX(RequiredAttribute(*chunk, "sha256"), chunk_where)), chunk_where));
  }
  if (payload.chunks.size() != expected_chunks) {
    return Corrupt(fmt::format("{}: has {} chunks, size {} with chunk-size {} needs {}", where,
                               payload.chunks.size(), payload.size, payload.chunk_size,
                               expected_chunks));
  }
  return payload;
}

Result<Version> ParseVersionAttribute(const tinyxml2::XMLElement& element, const char* name) {
  return TRY_CTX(Version::Parse(element.Attribute(name)),
                 fmt::format("<{}> {}", element.Name(), name));
}

}  // namespace

std::string_view PayloadTypeName(PayloadType type) {
  switch (type) {
    case PayloadType::kSystemImage: return "system-image";
    case PayloadType::kUki: return "uki";
    case PayloadType::kAgentImage: return "agent-image";
  }
  return "unknown";
}

std::string_view BundleKindName(BundleKind kind) {
  switch (kind) {
    case BundleKind::kSystem: return "system";
    case BundleKind::kAgentImage: return "agent-image";
  }
  return "unknown";
}

uint64_t Payload::ChunkLength(uint64_t index) const {
  uint64_t start = index * chunk_size;
  if (start >= size) return 0;
  return std::min<uint64_t>(chunk_size, size - start);
}

const Payload* Manifest::Find(PayloadType type) const {
  for (const Payload& p : payloads) {
    if (p.type == type) return &p;
  }
  return nullptr;
}

Result<void> ValidateManifest(const Manifest& m) {
  if (m.format != kManifestFormatVersion) {
    return Corrupt(
        fmt::format("format {} is not supported (expected {})", m.format, kManifestFormatVersion));
  }
  if (!ValidName(m.product, 64, true)) {
    return Corrupt(fmt::format("<compatible>: invalid product '{}'", m.product));
  }
  if (m.arch != "x86_64" && m.arch != "aarch64") {
    return Corrupt(fmt::format("<compatible>: unknown arch '{}'", m.arch));
  }
  if (m.raise_minimum_to && *m.raise_minimum_to > m.version) {
    return Corrupt(fmt::format("<minimum-version>: raise-to {} is above the bundle version {}",
                               m.raise_minimum_to->ToString(), m.version.ToString()));
  }
  std::set<std::string> names;
  int system_images = 0, ukis = 0, agent_images = 0;
  uint64_t previous_end = 0;
  for (const Payload& p : m.payloads) {
    std::string where = fmt::format("<payload name=\"{}\">", p.name);
    if (!ValidName(p.name, 32, false)) {
      return Corrupt(fmt::format("<payload>: invalid name '{}'", p.name));
    }
    if (!names.insert(p.name).second) return Corrupt(fmt::format("{}: duplicate name", where));
    switch (p.type) {
      case PayloadType::kSystemImage: ++system_images; break;
      case PayloadType::kUki: ++ukis; break;
      case PayloadType::kAgentImage: ++agent_images; break;
    }
    if (p.size == 0) return Corrupt(fmt::format("{}: size is 0", where));
    if (p.chunk_size < kMinChunkSize || p.chunk_size > kMaxChunkSize ||
        !IsPowerOfTwo(p.chunk_size)) {
      return Corrupt(fmt::format("{}: chunk-size {} is not a power of two in [{}, {}]", where,
                                 p.chunk_size, kMinChunkSize, kMaxChunkSize));
    }
    if (p.offset % kPayloadAlignment != 0) {
      return Corrupt(
          fmt::format("{}: offset {} is not aligned to {}", where, p.offset, kPayloadAlignment));
    }
    if (p.offset < previous_end) {
      return Corrupt(
          fmt::format("{}: offset {} overlaps or precedes the previous payload (ends at {})", where,
                      p.offset, previous_end));
    }
    if (p.size > UINT64_MAX - p.offset) {
      return Corrupt(fmt::format("{}: offset {} + size {} overflows", where, p.offset, p.size));
    }
    previous_end = p.offset + p.size;
    if (p.chunks.size() != p.ChunkCount()) {
      return Corrupt(fmt::format("{}: has {} chunks, size {} with chunk-size {} needs {}", where,
                                 p.chunks.size(), p.size, p.chunk_size, p.ChunkCount()));
    }
  }
  if (m.kind == BundleKind::kAgentImage) {
    if (agent_images != 1 || system_images != 0 || ukis != 0) {
      return Corrupt(fmt::format(
          "an agent-image bundle carries exactly one agent-image payload and nothing else, this "
          "one has {} agent-image, {} system-image and {} uki",
          agent_images, system_images, ukis));
    }
    return {};
  }
  if (agent_images != 0) {
    return Corrupt(fmt::format(
        "a system bundle carries no agent-image payload (has {}); an agent-image bundle says "
        "kind=\"agent-image\"",
        agent_images));
  }
  if (system_images != 1) {
    return Corrupt(fmt::format("needs exactly one system-image payload, has {}", system_images));
  }
  if (ukis != 1) return Corrupt(fmt::format("needs exactly one uki payload, has {}", ukis));
  return {};
}

namespace {
Result<Manifest> ParseManifestImpl(std::string_view xml) {
  if (xml.size() > kMaxManifestSize) {
    return Corrupt(fmt::format("manifest is {} bytes, more than the limit of {}", xml.size(),
                               kMaxManifestSize));
  }
  if (xml.find('\0') != std::string_view::npos) return Corrupt("manifest contains a NUL byte");
  // COLLAPSE_WHITESPACE is not used: whitespace-only text between elements
  // is dropped by tinyxml2 either way, and real text is rejected below.
  tinyxml2::XMLDocument doc(/*processEntities=*/true, tinyxml2::PRESERVE_WHITESPACE);
  if (doc.Parse(xml.data(), xml.size()) != tinyxml2::XML_SUCCESS) {
    return Corrupt(fmt::format("manifest is not well-formed XML: {} (line {})", doc.ErrorName(),
                               doc.ErrorLineNum()));
  }
  const tinyxml2::XMLElement* root = nullptr;
  for (const tinyxml2::XMLNode* n = doc.FirstChild(); n; n = n->NextSibling()) {
    if (n->ToDeclaration() || n->ToComment()) continue;
    if (const tinyxml2::XMLElement* e = n->ToElement(); e && !root) {
      root = e;
      continue;
    }
    if (const tinyxml2::XMLText* t = n->ToText();
        t && std::string_view(t->Value()).find_first_not_of(" \t\r\n") == std::string_view::npos) {
      continue;
    }
    return Corrupt("manifest: unexpected content outside the root element");
  }
  if (!root) return Corrupt("manifest has no root element");
  if (std::string_view(root->Name()) != "ralph-bundle") {
    return Corrupt(fmt::format("root element is <{}>, expected <ralph-bundle>", root->Name()));
  }
  TRY(CheckAttributes(*root, {"format", "kind"}));
  Manifest m;
  if (const char* kind = root->Attribute("kind")) {
    if (std::string_view(kind) != "agent-image") {
      return Corrupt(fmt::format(
          "<ralph-bundle>: unknown kind '{}' (a system bundle has no kind attribute; the one kind "
          "is \"agent-image\")",
          kind));
    }
    m.kind = BundleKind::kAgentImage;
  }
  uint64_t format =
      TRY(ParseDecimal(TRY(RequiredAttribute(*root, "format")), "<ralph-bundle> format"));
  if (format != kManifestFormatVersion) {
    return Corrupt(fmt::format("<ralph-bundle>: format {} is not supported (expected {})", format,
                               kManifestFormatVersion));
  }
  m.format = static_cast<uint32_t>(format);

  bool have_version = false, have_compatible = false, have_minimum = false;
  for (const tinyxml2::XMLNode* n = root->FirstChild(); n; n = n->NextSibling()) {
    if (n->ToComment()) continue;
    const tinyxml2::XMLElement* e = n->ToElement();
    if (!e) {
      const tinyxml2::XMLText* t = n->ToText();
      if (t &&
          std::string_view(t->Value()).find_first_not_of(" \t\r\n") == std::string_view::npos) {
        continue;
      }
      return Corrupt("<ralph-bundle>: unexpected text");
    }
    std::string_view name = e->Name();
    if (name == "version") {
      if (have_version) return Corrupt("<version>: appears twice");
      have_version = true;
      TRY_CTX(CheckAttributes(*e, {}), "<version>");
      const char* text = e->GetText();
      for (const tinyxml2::XMLNode* c = e->FirstChild(); c; c = c->NextSibling()) {
        if (!c->ToText()) return Corrupt("<version>: must hold only text");
      }
      m.version = TRY_CTX(Version::Parse(text ? text : ""), "<version>");
    } else if (name == "compatible") {
      if (have_compatible) return Corrupt("<compatible>: appears twice");
      have_compatible = true;
      TRY_CTX(CheckAttributes(*e, {"product", "arch"}), "<compatible>");
      TRY_CTX(CheckEmpty(*e), "<compatible>");
      m.product = std::string(TRY(RequiredAttribute(*e, "product")));
      m.arch = std::string(TRY(RequiredAttribute(*e, "arch")));
    } else if (name == "minimum-version") {
      if (have_minimum) return Corrupt("<minimum-version>: appears twice");
      have_minimum = true;
      TRY_CTX(CheckAttributes(*e, {"install-from", "raise-to"}), "<minimum-version>");
      TRY_CTX(CheckEmpty(*e), "<minimum-version>");
      if (e->Attribute("install-from"))
        m.install_from = TRY(ParseVersionAttribute(*e, "install-from"));
      if (e->Attribute("raise-to")) m.raise_minimum_to = TRY(ParseVersionAttribute(*e, "raise-to"));
    } else if (name == "payload") {
      if (m.payloads.size() >= 8) return Corrupt("<ralph-bundle>: more than 8 payloads");
      m.payloads.push_back(TRY(ParsePayload(*e, m.payloads.size())));
    } else {
      return Corrupt(fmt::format("<ralph-bundle>: unknown element <{}>", name));
    }
  }
  if (!have_version) return Corrupt("<ralph-bundle>: missing <version>");
  if (!have_compatible) return Corrupt("<ralph-bundle>: missing <compatible>");
  TRY(ValidateManifest(m));
  return m;
}
}  // namespace

Result<Manifest> ParseManifest(std::string_view xml) {
  auto result = ParseManifestImpl(xml);
  // Version and digest parsers report kInvalidArgument; inside a manifest
  // any malformed value is a corrupt manifest.
  if (!result && result.error().code() != ErrorCode::kCorrupt) {
    return Corrupt(result.error().message());
  }
  return result;
}

Result<std::string> SerializeManifest(const Manifest& m) {
  TRY_CTX(ValidateManifest(m), "serialising manifest");
  std::string out;
  out += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  if (m.kind == BundleKind::kSystem) {
    out += fmt::format("<ralph-bundle format=\"{}\">\n", m.format);
  } else {
    out +=
        fmt::format("<ralph-bundle format=\"{}\" kind=\"{}\">\n", m.format, BundleKindName(m.kind));
  }
  out += fmt::format("  <version>{}</version>\n", m.version.ToString());
  out += fmt::format("  <compatible product=\"{}\" arch=\"{}\"/>\n", m.product, m.arch);
  if (m.install_from || m.raise_minimum_to) {
    out += "  <minimum-version";
    if (m.install_from) out += fmt::format(" install-from=\"{}\"", m.install_from->ToString());
    if (m.raise_minimum_to) out += fmt::format(" raise-to=\"{}\"", m.raise_minimum_to->ToString());
    out += "/>\n";
  }
  for (const Payload& p : m.payloads) {
    out += fmt::format(
        "  <payload name=\"{}\" type=\"{}\" offset=\"{}\" size=\"{}\" sha256=\"{}\" "
        "chunk-size=\"{}\">\n",
        p.name, PayloadTypeName(p.type), p.offset, p.size, DigestToHex(p.sha256), p.chunk_size);
    for (const Digest& d : p.chunks)
      out += fmt::format("    <chunk sha256=\"{}\"/>\n", DigestToHex(d));
    out += "  </payload>\n";
  }
  out += "</ralph-bundle>\n";
  return out;
}

}  // namespace ralph::ota
