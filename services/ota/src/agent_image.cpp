#include "services/ota/agent_image.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/arch.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "services/ota/bundle/bundle.h"
#include "services/ota/writer.h"

namespace ralph::ota {
namespace {

using nlohmann::json;

constexpr int kStateFormat = 1;
constexpr std::string_view kStateFile = "state.json";
constexpr std::string_view kImagesDir = "images";

Error Refused(std::string message) {
  return Error::Make(ErrorCode::kRefused, std::move(message));
}
Error Corrupt(std::string message) {
  return Error::Make(ErrorCode::kCorrupt, std::move(message));
}

std::string StatePath(const std::string& dir) {
  return fmt::format("{}/{}", dir, kStateFile);
}
std::string ImagesDir(const std::string& dir) {
  return fmt::format("{}/{}", dir, kImagesDir);
}

Result<void> MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", path), errno);
  }
  return {};
}

// flock()ed; released when the fd closes or the process dies.
Result<UniqueFd> TakeStoreLock(const std::string& dir) {
  std::string path = dir + "/.lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return Error::FromErrno(fmt::format("open lock {}", path), errno);
  while (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      return Error::Make(
          ErrorCode::kBusy,
          fmt::format("another agent-image install or rollback is running (lock {} is held)",
                      path));
    }
    return Error::FromErrno(fmt::format("flock {}", path), errno);
  }
  return fd;
}

json RecordToJson(const AgentImageRecord& r) {
  return {{"version", r.version.ToString()},
          {"sha256", DigestToHex(r.sha256)},
          {"size", r.size},
          {"file", r.file},
          {"signer", r.signer},
          {"installed", r.installed}};
}

Result<AgentImageRecord> RecordFromJson(const json& j, std::string_view where) {
  auto bad = [&](std::string_view field, std::string_view why) {
    return Corrupt(fmt::format("{}.{}: {}", where, field, why));
  };
  if (!j.is_object()) return Corrupt(fmt::format("{}: not an object", where));
  for (const auto& [key, value] : j.items()) {
    static const std::set<std::string> kKnown = {"version", "sha256", "size",
                                                 "file",    "signer", "installed"};
    if (!kKnown.contains(key)) return bad(key, "unknown field");
  }
  AgentImageRecord r;
  if (!j.contains("version") || !j["version"].is_string()) return bad("version", "not a string");
  auto version = Version::Parse(j["version"].get<std::string>());
  if (!version) return bad("version", version.error().message());
  r.version = *version;
  if (!j.contains("sha256") || !j["sha256"].is_string()) return bad("sha256", "not a string");
  auto digest = ParseSha256Hex(j["sha256"].get<std::string>());
  if (!digest) return bad("sha256", digest.error().message());
  r.sha256 = *digest;
  if (!j.contains("size") || !j["size"].is_number_unsigned()) return bad("size", "not a number");
  r.size = j["size"].get<uint64_t>();
  if (!j.contains("file") || !j["file"].is_string()) return bad("file", "not a string");
  r.file = j["file"].get<std::string>();
  // The name is derived, never taken: a record naming another file (or a
  // path) is not this store's.
  if (r.file != AgentImageFileName(r.version, r.sha256)) {
    return bad("file", fmt::format("'{}' is not the name of version {} with digest {}", r.file,
                                   r.version.ToString(), DigestToHex(r.sha256)));
  }
  if (!j.contains("signer") || !j["signer"].is_string()) return bad("signer", "not a string");
  r.signer = j["signer"].get<std::string>();
  if (!j.contains("installed") || !j["installed"].is_number_integer()) {
    return bad("installed", "not a number");
  }
  r.installed = j["installed"].get<int64_t>();
  return r;
}

Result<void> WriteState(const std::string& dir, const AgentImageState& state) {
  json out = {{"format", kStateFormat}};
  out["current"] = state.current ? RecordToJson(*state.current) : json(nullptr);
  out["previous"] = state.previous ? RecordToJson(*state.previous) : json(nullptr);
  // The switch: whole or not at all, and on disk before the caller goes on.
  return WriteFileAtomically(StatePath(dir), out.dump(2) + "\n", 0644,
                             Durability::kFileAndDirectorySynced);
}

// The file of `record` hashed and sized against what it records.
Result<void> VerifyRecordFile(const std::string& dir, const AgentImageRecord& record) {
  std::string path = AgentImagePath(dir, record);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Corrupt(fmt::format("agent image {} ({}) is missing: {}", record.version.ToString(),
                               path, std::strerror(errno)));
  }
  if (static_cast<uint64_t>(st.st_size) != record.size) {
    return Corrupt(fmt::format("agent image {} ({}) is {} bytes, its record says {}",
                               record.version.ToString(), path, st.st_size, record.size));
  }
  Sha256Digest digest = TRY(Sha256OfFile(path));
  if (digest != record.sha256) {
    return Corrupt(fmt::format(
        "agent image {} ({}) does not match its recorded digest (SHA-256 {}, recorded {})",
        record.version.ToString(), path, DigestToHex(digest), DigestToHex(record.sha256)));
  }
  return {};
}

// Removes every file under images/ that `state` does not name (the image that
// fell out of the rollback window, temporary files of killed installs).
Result<void> Prune(const std::string& dir, const AgentImageState& state) {
  std::set<std::string> keep;
  if (state.current) keep.insert(state.current->file);
  if (state.previous) keep.insert(state.previous->file);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(ImagesDir(dir), ec)) {
    std::string name = entry.path().filename().string();
    if (keep.contains(name)) continue;
    if (::unlink(entry.path().c_str()) != 0 && errno != ENOENT) {
      return Error::FromErrno(fmt::format("removing {}", entry.path().string()), errno);
    }
  }
  if (ec) {
    return Error::Make(ErrorCode::kIo, fmt::format("listing {}: {}", ImagesDir(dir), ec.message()));
  }
  return {};
}

// Removes the temporary files a killed install left (AtomicFile names them
// "<name>.<pid>-<n>.tmp": an image under images/, state.json beside it);
// named images stay until a state.json without them is on disk.
Result<void> SweepTemporary(const std::string& dir) {
  for (const std::string& where : {dir, ImagesDir(dir)}) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(where, ec)) {
      std::string name = entry.path().filename().string();
      if (!name.ends_with(".tmp")) continue;
      if (::unlink(entry.path().c_str()) != 0 && errno != ENOENT) {
        return Error::FromErrno(fmt::format("removing {}", entry.path().string()), errno);
      }
    }
    if (ec) return Error::Make(ErrorCode::kIo, fmt::format("listing {}: {}", where, ec.message()));
  }
  return {};
}

Result<void> PrepareStore(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return Error::Make(ErrorCode::kIo, fmt::format("creating {}: {}", dir, ec.message()));
  }
  return MakeDir(ImagesDir(dir));
}

int64_t Now(const AgentImageStoreOptions& options) {
  return options.now ? options.now() : static_cast<int64_t>(::time(nullptr));
}

}  // namespace

std::string AgentImageFileName(const Version& version, const Sha256Digest& sha256) {
  return fmt::format("agent-{}-{}.squashfs", version.ToString(), DigestToHex(sha256));
}

std::string AgentImagePath(const std::string& dir, const AgentImageRecord& record) {
  return fmt::format("{}/{}", ImagesDir(dir), record.file);
}

Result<AgentImageState> ReadAgentImageState(const std::string& dir) {
  std::string path = StatePath(dir);
  auto text = ReadWholeFile(path);
  if (!text) {
    if (text.error().code() == ErrorCode::kNotFound) return AgentImageState{};
    return std::move(text).error();
  }
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Corrupt(fmt::format("{} is not a JSON object", path));
  }
  for (const auto& [key, value] : j.items()) {
    if (key != "format" && key != "current" && key != "previous") {
      return Corrupt(fmt::format("{}: unknown field '{}'", path, key));
    }
  }
  if (!j.contains("format") || j["format"] != kStateFormat) {
    return Corrupt(fmt::format("{}: format is not {}", path, kStateFormat));
  }
  AgentImageState state;
  for (auto [name, slot] :
       {std::pair{"current", &state.current}, std::pair{"previous", &state.previous}}) {
    if (!j.contains(name) || j[name].is_null()) continue;
    *slot = TRY_CTX(RecordFromJson(j[name], name), path);
  }
  if (state.previous && !state.current) {
    return Corrupt(fmt::format("{}: a previous image without a current one", path));
  }
  if (state.previous && state.previous->file == state.current->file) {
    return Corrupt(fmt::format("{}: current and previous are the same image", path));
  }
  return state;
}

Result<AgentImageInstallReport> InstallAgentImage(const AgentImageStoreOptions& options,
                                                  const std::string& bundle_path,
                                                  const std::string& keyring_path,
                                                  const std::string& crl_path) {
  auto hook = [&](std::string_view point) {
    if (options.hook) options.hook(point);
  };
  TRY(PrepareStore(options.dir));
  UniqueFd lock = TRY(TakeStoreLock(options.dir));
  AgentImageState state = TRY(ReadAgentImageState(options.dir));
  TRY_CTX(SweepTemporary(options.dir), "removing what an interrupted install left");

  // 1. Everything about the bundle, before anything is written.
  Keyring keyring = TRY_CTX(Keyring::Load(keyring_path, crl_path), "loading the keyring");
  std::unique_ptr<FileSource> source = TRY(FileSource::Open(bundle_path));
  OpenedBundle bundle =
      TRY_CTX(OpenBundle(*source, keyring), fmt::format("opening bundle {}", bundle_path));
  const Manifest& m = bundle.manifest;
  if (m.kind != BundleKind::kAgentImage) {
    return Refused(fmt::format(
        "{} is a {} bundle, not an agent image: install it with `ralphctl update install`",
        bundle_path, BundleKindName(m.kind)));
  }
  std::string arch = options.arch.empty() ? std::string(arch::Name()) : options.arch;
  if (m.product != options.product || m.arch != arch) {
    return Refused(fmt::format("agent-image bundle {} is for {}/{}, this device is {}/{}",
                               bundle_path, m.product, m.arch, options.product, arch));
  }
  const Payload* payload = m.Find(PayloadType::kAgentImage);
  if (!payload) return Corrupt("the agent-image bundle has no agent-image payload");
  WriteOptions verify_options;
  TRY_CTX(CopyVerifiedPayload(
              *source, *payload, [](std::span<const uint8_t>) -> Result<void> { return {}; },
              verify_options),
          fmt::format("checking the agent image in {} against its signed manifest", bundle_path));
  hook("verified");

  AgentImageRecord record{.version = m.version,
                          .sha256 = payload->sha256,
                          .size = payload->size,
                          .file = AgentImageFileName(m.version, payload->sha256),
                          .signer = bundle.signer.subject,
                          .installed = Now(options)};
  AgentImageInstallReport report;
  report.previous = state.current;

  // Already current: nothing to switch, but its bytes are checked.
  if (state.current && state.current->file == record.file) {
    TRY(VerifyRecordFile(options.dir, *state.current));
    TRY_CTX(Prune(options.dir, state), "removing images no longer kept");
    report.installed = *state.current;
    report.previous = state.previous;
    report.reused = true;
    return report;
  }

  // 2. The image under its versioned name. The previous image already has
  // it: reused once its bytes match, else written again.
  std::string path = AgentImagePath(options.dir, record);
  bool reuse = false;
  if (state.previous && state.previous->file == record.file) {
    reuse = static_cast<bool>(VerifyRecordFile(options.dir, *state.previous));
  }
  if (!reuse) {
    AtomicFile out = TRY(AtomicFile::Create(path, 0644));
    const std::string tmp = out.temp_path();
    TRY_CTX(CopyVerifiedPayload(
                *source, *payload,
                [&](std::span<const uint8_t> data) { return WriteAll(out.fd(), data, tmp); },
                verify_options),
            fmt::format("writing the agent image to {}", tmp));
    hook("image-written");
    TRY(out.Commit(Durability::kFileAndDirectorySynced));
    hook("image-renamed");
    TRY_CTX(VerifyRecordFile(options.dir, record), "reading the written agent image back");
    hook("image-read-back");
  }
  report.reused = reuse;
  report.installed = record;

  // 3. The switch.
  AgentImageState next{.current = record, .previous = state.current};
  TRY_CTX(WriteState(options.dir, next), "switching to the new agent image");
  hook("state-switched");

  // 4. Only the two images the state names stay.
  TRY_CTX(Prune(options.dir, next), "removing the agent image no longer kept");
  hook("pruned");
  return report;
}

Result<AgentImageState> RollbackAgentImage(const AgentImageStoreOptions& options) {
  auto hook = [&](std::string_view point) {
    if (options.hook) options.hook(point);
  };
  TRY(PrepareStore(options.dir));
  UniqueFd lock = TRY(TakeStoreLock(options.dir));
  AgentImageState state = TRY(ReadAgentImageState(options.dir));
  if (!state.previous) {
    return Error::Make(ErrorCode::kInvalidState,
                       state.current
                           ? fmt::format("no previous agent image to roll back to (current: {})",
                                         state.current->version.ToString())
                           : std::string("no agent image is installed"));
  }
  TRY_CTX(VerifyRecordFile(options.dir, *state.previous),
          "not rolling back: the previous image is not what was installed");
  hook("rollback-verified");
  AgentImageState next{.current = state.previous, .previous = state.current};
  TRY_CTX(WriteState(options.dir, next), "switching to the previous agent image");
  hook("rollback-switched");
  return next;
}

Result<std::string> VerifiedCurrentImage(const std::string& dir) {
  AgentImageState state = TRY(ReadAgentImageState(dir));
  if (!state.current) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("no agent image is installed in {} (install one with "
                                   "`ralphctl agent-image install FILE`)",
                                   dir));
  }
  TRY(VerifyRecordFile(dir, *state.current));
  return AgentImagePath(dir, *state.current);
}

}  // namespace ralph::ota
