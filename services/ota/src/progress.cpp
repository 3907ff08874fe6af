#include "services/ota/progress.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::ota {
namespace {

constexpr InstallPhase kPhases[] = {InstallPhase::kIdle,       InstallPhase::kOpeningBundle,
                                    InstallPhase::kChecking,   InstallPhase::kWritingSlot,
                                    InstallPhase::kSyncing,    InstallPhase::kVerifyingSlot,
                                    InstallPhase::kWritingEsp, InstallPhase::kActivating,
                                    InstallPhase::kDone,       InstallPhase::kFailed};

}  // namespace

std::string_view InstallPhaseName(InstallPhase phase) {
  switch (phase) {
    case InstallPhase::kIdle: return "idle";
    case InstallPhase::kOpeningBundle: return "opening-bundle";
    case InstallPhase::kChecking: return "checking";
    case InstallPhase::kWritingSlot: return "writing-slot";
    case InstallPhase::kSyncing: return "syncing";
    case InstallPhase::kVerifyingSlot: return "verifying-slot";
    case InstallPhase::kWritingEsp: return "writing-esp";
    case InstallPhase::kActivating: return "activating";
    case InstallPhase::kDone: return "done";
    case InstallPhase::kFailed: return "failed";
  }
  return "unknown";
}

std::string StatusToJson(const InstallStatus& s) {
  nlohmann::json j = {
      {"phase", InstallPhaseName(s.phase)},
      {"source", s.source},
      {"target_slot", s.target_slot},
      {"version", s.version},
      {"pid", s.pid},
      {"bytes_done", s.bytes_done},
      {"bytes_total", s.bytes_total},
      {"bytes_written", s.bytes_written},
      {"bytes_skipped", s.bytes_skipped},
      {"rate_bytes_per_second", s.rate_bytes_per_second},
      {"eta_seconds", s.eta_seconds ? nlohmann::json(*s.eta_seconds) : nlohmann::json(nullptr)},
      {"elapsed_seconds", s.elapsed_seconds},
      {"error", s.error},
  };
  return j.dump(2);
}

Result<InstallStatus> StatusFromJson(std::string_view text) {
  // -fno-exceptions: parse without throwing and check every type before use
  // (nlohmann's accessors abort on a type mismatch).
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Error::Make(ErrorCode::kCorrupt, "install status is not a JSON object");
  }
  auto str = [&](const char* key, std::string& out) -> Result<void> {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) {
      return Error::Make(ErrorCode::kCorrupt, fmt::format("install status: '{}' missing", key));
    }
    out = it->get<std::string>();
    return {};
  };
  auto num = [&](const char* key, auto& out) -> Result<void> {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number()) {
      return Error::Make(ErrorCode::kCorrupt, fmt::format("install status: '{}' missing", key));
    }
    out = it->get<std::remove_reference_t<decltype(out)>>();
    return {};
  };
  InstallStatus s;
  std::string phase;
  TRY(str("phase", phase));
  bool known = false;
  for (InstallPhase p : kPhases) {
    if (InstallPhaseName(p) == phase) {
      s.phase = p;
      known = true;
    }
  }
  if (!known) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("install status: unknown phase '{}'", phase));
  }
  TRY(str("source", s.source));
  TRY(str("target_slot", s.target_slot));
  TRY(str("version", s.version));
  TRY(str("error", s.error));
  TRY(num("pid", s.pid));
  TRY(num("bytes_done", s.bytes_done));
  TRY(num("bytes_total", s.bytes_total));
  TRY(num("bytes_written", s.bytes_written));
  TRY(num("bytes_skipped", s.bytes_skipped));
  TRY(num("rate_bytes_per_second", s.rate_bytes_per_second));
  TRY(num("elapsed_seconds", s.elapsed_seconds));
  if (auto it = j.find("eta_seconds"); it != j.end() && it->is_number()) {
    s.eta_seconds = it->get<double>();
  }
  return s;
}

Result<void> WriteStatusFile(const std::string& path, const InstallStatus& status) {
  // Progress for readers while the install runs: atomic, never synced.
  return WriteFileAtomically(path, StatusToJson(status) + "\n", 0644, Durability::kNone);
}

Result<InstallStatus> ReadStatusFile(const std::string& path) {
  Result<std::string> text = ReadWholeFile(path);
  if (!text && text.error().code() == ErrorCode::kNotFound) {
    return Error::Make(ErrorCode::kNotFound, fmt::format("no install status at {}", path));
  }
  if (!text) return text.error();
  return TRY_CTX(StatusFromJson(*text), path);
}

ProgressTracker::ProgressTracker(std::string status_path, Callback callback,
                                 std::chrono::milliseconds interval)
    : status_path_(std::move(status_path)),
      callback_(std::move(callback)),
      interval_(interval),
      started_(std::chrono::steady_clock::now()),
      last_publish_(started_) {
  status_.pid = static_cast<int>(::getpid());
}

void ProgressTracker::SetPhase(InstallPhase phase) {
  status_.phase = phase;
  Publish();
}

void ProgressTracker::Advance(uint64_t bytes) {
  status_.bytes_done += bytes;
  MaybePublish();
}

void ProgressTracker::Fail(const std::string& error) {
  status_.phase = InstallPhase::kFailed;
  status_.error = error;
  Publish();
}

void ProgressTracker::MaybePublish() {
  if (std::chrono::steady_clock::now() - last_publish_ >= interval_) Publish();
}

void ProgressTracker::Publish() {
  auto now = std::chrono::steady_clock::now();
  last_publish_ = now;
  status_.elapsed_seconds = std::chrono::duration<double>(now - started_).count();
  status_.rate_bytes_per_second =
      status_.elapsed_seconds > 0 ? status_.bytes_done / status_.elapsed_seconds : 0;
  if (status_.rate_bytes_per_second > 0 && status_.bytes_total >= status_.bytes_done) {
    status_.eta_seconds =
        (status_.bytes_total - status_.bytes_done) / status_.rate_bytes_per_second;
  } else {
    status_.eta_seconds.reset();
  }
  if (status_.phase == InstallPhase::kDone) status_.eta_seconds = 0;
  // Best effort: a status file that cannot be written must not fail the
  // install (the install's own result is what counts).
  if (!status_path_.empty()) IgnoreError(WriteStatusFile(status_path_, status_));
  if (callback_) callback_(status_);
}

}  // namespace ralph::ota
