// Install progress: the phase, bytes, rate and ETA, observable while an
// install runs (a callback for the CLI's progress bar) and afterwards (a JSON
// status file that `ralphctl update status --json` prints).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::ota {

enum class InstallPhase {
  kIdle,
  kOpeningBundle,  // reading header/manifest, verifying the signature
  kChecking,       // compatibility, anti-rollback, slot state
  kWritingSlot,    // streaming chunks to the target slot
  kSyncing,        // fsync
  kVerifyingSlot,  // re-reading the whole slot
  kWritingEsp,     // the UKI to \EFI\ralph\<slot>.efi
  kActivating,     // slot state: trial + BootNext
  kDone,
  kFailed,
};
std::string_view InstallPhaseName(InstallPhase phase);

struct InstallStatus {
  InstallPhase phase = InstallPhase::kIdle;
  std::string source;
  std::string target_slot;  // "B"
  std::string version;      // the bundle's
  int pid = 0;
  // Work units: the system image is counted twice (write, verify) plus the UKI.
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  uint64_t bytes_written = 0;  // to the slot
  uint64_t bytes_skipped = 0;  // already in the slot (adaptive)
  double rate_bytes_per_second = 0;
  std::optional<double> eta_seconds;
  double elapsed_seconds = 0;
  std::string error;  // set with kFailed
};

std::string StatusToJson(const InstallStatus& status);
// kCorrupt when the text is not a status document.
Result<InstallStatus> StatusFromJson(std::string_view json);
// Atomic replace (temp file + rename).
Result<void> WriteStatusFile(const std::string& path, const InstallStatus& status);
// kNotFound when no install has run.
Result<InstallStatus> ReadStatusFile(const std::string& path);

// Keeps an InstallStatus up to date; computes rate and ETA; publishes to the
// callback and the status file at most every `interval` (and always on a
// phase change).
class ProgressTracker {
 public:
  using Callback = std::function<void(const InstallStatus&)>;
  ProgressTracker(std::string status_path, Callback callback,
                  std::chrono::milliseconds interval = std::chrono::milliseconds(250));

  InstallStatus& status() { return status_; }
  void SetPhase(InstallPhase phase);
  void Advance(uint64_t bytes);
  void Fail(const std::string& error);
  // Publishes now.
  void Publish();

 private:
  void MaybePublish();
  std::string status_path_;
  Callback callback_;
  std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_publish_;
  InstallStatus status_;
};

}  // namespace ralph::ota
