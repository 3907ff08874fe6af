#include "services/ota/installer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <fmt/format.h>

#include "drivers/block_device.h"
#include "platform/arch.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"
#include "services/ota/esp.h"
#include "services/ota/install_audit.h"
#include "slot_device.h"

namespace ralph::ota {
namespace {

Error Refused(std::string message) {
  return Error::Make(ErrorCode::kRefused, std::move(message));
}

std::string_view PartitionLabel(boot::Slot slot) {
  return slot == boot::Slot::kA ? kPartSystemA : kPartSystemB;
}

char SlotLetter(boot::Slot slot) {
  return slot == boot::Slot::kA ? 'a' : 'b';
}

// flock()ed lock file; released when the process exits, however it exits.
Result<UniqueFd> TakeLock(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return Error::FromErrno(fmt::format("open lock {}", path), errno);
  while (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      return Error::Make(ErrorCode::kBusy,
                         fmt::format("another update is being installed (lock {} is held)", path));
    }
    return Error::FromErrno(fmt::format("flock {}", path), errno);
  }
  return fd;
}

Result<std::unique_ptr<SlotDevice>> OpenPartition(const DiskLayout& layout,
                                                  const PartitionInfo& part) {
  if (!part.device.empty()) return SlotDevice::Open(part.device, 0, UINT64_MAX);
  return SlotDevice::Open(layout.disk, part.offset_bytes(), part.size_bytes());
}

Result<std::unique_ptr<MtoolsEsp>> OpenEsp(const DiskLayout& layout) {
  const PartitionInfo* esp = layout.Find(kPartEfi);
  if (!esp) return Error::Make(ErrorCode::kNotFound, "the disk has no EFI partition");
  if (!esp->device.empty()) return MtoolsEsp::Open(esp->device, 0);
  return MtoolsEsp::Open(layout.disk, esp->offset_bytes());
}

// A staged copy of the UKI, removed on every path.
class StagedFile {
 public:
  explicit StagedFile(std::string path) : path_(std::move(path)) {}
  ~StagedFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

Result<InstallPlan> PlanInstall(const Manifest& m, const InstallFacts& facts,
                                DowngradeOverride downgrade) {
  InstallPlan plan;
  plan.version = m.version;
  if (m.kind != BundleKind::kSystem) {
    return Refused(fmt::format(
        "this is an {} bundle, not a system update: install it with `ralphctl agent-image "
        "install`",
        BundleKindName(m.kind)));
  }
  std::string arch = facts.identity.arch.empty() ? std::string(arch::Name()) : facts.identity.arch;
  if (m.product != facts.identity.product || m.arch != arch) {
    return Refused(fmt::format("bundle is for {}/{}, this device is {}/{}", m.product, m.arch,
                               facts.identity.product, arch));
  }
  if (!facts.booted) {
    return Error::Make(ErrorCode::kInvalidState, "cannot tell which slot is booted");
  }
  if (!facts.record) {
    return Error::Make(ErrorCode::kInvalidState,
                       "the slot state record is missing or corrupt (run `ralphctl boot repair`)");
  }
  const boot::SlotState& record = *facts.record;
  std::optional<boot::Slot> booted_slot = boot::SlotOf(*facts.booted);
  if (booted_slot) {
    if (facts.requested_target && *facts.requested_target == *booted_slot) {
      return Refused(fmt::format("slot {} is the booted slot; an update never writes it",
                                 boot::SlotName(*booted_slot)));
    }
    if (record.committed != booted_slot) {
      return Refused(fmt::format(
          "the booted slot {} is not committed (state {}): let the health check commit it, or "
          "reboot, before updating",
          boot::SlotName(*booted_slot), boot::SlotStatusName(record.slot(*booted_slot).status)));
    }
    plan.target = boot::OtherSlot(*booted_slot);
    const boot::SlotVersion& running = record.slot(*booted_slot).version;
    if (m.install_from && running < *m.install_from) {
      return Refused(fmt::format("bundle {} installs only from {} or later; this device runs {}",
                                 m.version.ToString(), m.install_from->ToString(),
                                 running.ToString()));
    }
  } else {
    // Booted from RECOVERY: the caller names the slot to reflash.
    if (!facts.requested_target) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         "booted from RECOVERY: the slot to write must be given");
    }
    plan.target = *facts.requested_target;
  }
  if (plan.version < record.minimum_version) {
    if (downgrade == DowngradeOverride::kRefuse) {
      return Refused(fmt::format(
          "bundle version {} is below the minimum allowed version {} (anti-rollback); an "
          "explicit downgrade override is needed",
          m.version.ToString(), record.minimum_version.ToString()));
    }
    plan.downgrade = boot::DowngradePolicy::kAllow;
    plan.notes.push_back(fmt::format(
        "DOWNGRADE OVERRIDE: installing {} below the minimum allowed version {} into slot {}",
        m.version.ToString(), record.minimum_version.ToString(), boot::SlotName(plan.target)));
  }
  const Payload* rootfs = m.Find(PayloadType::kSystemImage);
  uint64_t slot_bytes = plan.target == boot::Slot::kA ? facts.slot_a_bytes : facts.slot_b_bytes;
  if (!rootfs || rootfs->size > slot_bytes) {
    return Error::Make(
        ErrorCode::kNoSpace,
        fmt::format("the system image is {} bytes, slot {} holds only {}",
                    rootfs ? rootfs->size : 0, boot::SlotName(plan.target), slot_bytes));
  }
  return plan;
}

Result<InstallReport> Install(const InstallOptions& options, boot::SlotManager& slots,
                              const DiskLayout& layout) {
  auto started = std::chrono::steady_clock::now();
  auto hook = [&](std::string_view point) {
    if (options.hook) options.hook(point);
  };
  UniqueFd lock = TRY(TakeLock(options.lock_path));
  // A killed earlier install may have left its staged kernel image behind.
  {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(options.work_dir, ec)) {
      std::string name = entry.path().filename().string();
      if (name.starts_with("ota-uki-") && name.ends_with(".efi")) {
        std::filesystem::remove(entry.path(), ec);
      }
    }
  }

  ProgressTracker tracker(options.status_path, options.on_progress);
  tracker.status().source = options.source;
  // Records a failure in the status and returns it.
  auto fail = [&](Error error) -> Error {
    tracker.Fail(error.ToString());
    RecordBestEffort(options.audit, InstallFailedEvent(tracker.status(), error), nullptr);
    return error;
  };

  // 1. The bundle: signature first, then the manifest.
  tracker.SetPhase(InstallPhase::kOpeningBundle);
  auto keyring = Keyring::Load(options.keyring_path, options.crl_path);
  if (!keyring) return fail(std::move(keyring).error().WithContext("loading the keyring"));
  auto source = OpenSource(options.source, options.https);
  if (!source) return fail(std::move(source).error());
  auto bundle = OpenBundle(**source, *keyring);
  if (!bundle) {
    return fail(std::move(bundle).error().WithContext(
        fmt::format("opening bundle {}", (*source)->Describe())));
  }
  const Manifest& m = bundle->manifest;
  if (m.kind != BundleKind::kSystem) {
    return fail(Refused(fmt::format(
        "{} is an {} bundle, not a system update: install it with `ralphctl agent-image install`",
        (*source)->Describe(), BundleKindName(m.kind))));
  }
  const Payload& rootfs = *m.Find(PayloadType::kSystemImage);
  const Payload& uki = *m.Find(PayloadType::kUki);
  tracker.status().version = m.version.ToString();
  tracker.status().bytes_total = 2 * rootfs.size + uki.size;

  // 2. The plan.
  tracker.SetPhase(InstallPhase::kChecking);
  auto status = slots.Status();
  if (!status) return fail(std::move(status).error().WithContext("reading the slot state"));
  InstallFacts facts;
  facts.identity = options.identity;
  facts.booted = status->booted.target;
  facts.record = status->view.record;
  facts.requested_target = options.target;
  if (const PartitionInfo* a = layout.Find(kPartSystemA)) facts.slot_a_bytes = a->size_bytes();
  if (const PartitionInfo* b = layout.Find(kPartSystemB)) facts.slot_b_bytes = b->size_bytes();
  auto plan = PlanInstall(m, facts, options.downgrade);
  if (!plan) return fail(std::move(plan).error());
  std::string slot_name(boot::SlotName(plan->target));
  tracker.status().target_slot = slot_name;
  // A downgrade override is on record before anything is written, or the
  // install stops here.
  std::vector<std::string> audit_warnings;
  auto audited = RecordInstallStart(options.audit, tracker.status(), *plan, facts, bundle->signer,
                                    options, audit_warnings);
  if (!audited) return fail(std::move(audited).error());
  const PartitionInfo* part = layout.Find(PartitionLabel(plan->target));
  if (!part) {
    return fail(Error::Make(ErrorCode::kNotFound, fmt::format("the disk has no {} partition",
                                                              PartitionLabel(plan->target))));
  }
  auto device = OpenPartition(layout, *part);
  if (!device) return fail(std::move(device).error().WithContext("opening slot " + slot_name));
  auto esp = OpenEsp(layout);
  if (!esp) return fail(std::move(esp).error());

  // 3. Target `writing` before its first byte changes.
  auto begin = slots.BeginWrite(plan->target, plan->version, plan->downgrade);
  if (!begin) {
    return fail(std::move(begin).error().WithContext(
        fmt::format("marking slot {} as being written", slot_name)));
  }
  hook("begin-write");

  // 4-5. Stream, verify, write, flush, re-read: one overlapped data path
  // (InstallPayload). Every chunk written is read back after a flush that
  // followed its write; every chunk skipped was read back and matched while
  // probing; so the whole slot has been verified from the device.
  tracker.SetPhase(InstallPhase::kWritingSlot);
  WriteOptions write;
  write.mode = options.mode;
  write.cancel = options.cancel;
  // Further handles on the slot for the probe and verify threads.
  write.open_handle = [&]() -> Result<std::unique_ptr<BlockDeviceInterface>> {
    return std::unique_ptr<BlockDeviceInterface>(TRY(OpenPartition(layout, *part)));
  };
  write.on_progress = [&](uint64_t bytes) { tracker.Advance(bytes); };
  write.after_chunk = [&](uint64_t) { hook("chunk"); };
  write.after_final_flush = [&]() {
    hook("flushed");
    tracker.SetPhase(InstallPhase::kVerifyingSlot);
  };
  auto stats = InstallPayload(**source, rootfs, **device, write);
  if (!stats) return fail(std::move(stats).error().WithContext("writing slot " + slot_name));
  tracker.status().bytes_written = stats->bytes_written;
  tracker.status().bytes_skipped = stats->bytes_skipped;
  write.after_chunk = nullptr;
  hook("verified");

  // 6. The UKI: verified chunk by chunk into a staging file, then the ESP.
  // Adaptive, like the slot: when the ESP already holds exactly this UKI
  // (the kernel did not change), reading it back was its verification.
  tracker.SetPhase(InstallPhase::kWritingEsp);
  std::string esp_path = SlotImagePath(SlotLetter(plan->target));
  bool esp_current = false;
  if (options.mode == WriteOptions::Mode::kAdaptive) {
    auto current = (*esp)->Digest(esp_path);
    esp_current = current && *current == uki.sha256;
  }
  if (esp_current) {
    tracker.Advance(uki.size);
    hook("esp-staged");
  } else {
    std::error_code ec;
    std::filesystem::create_directories(options.work_dir, ec);
    StagedFile staged(fmt::format("{}/ota-uki-{}.efi", options.work_dir, ::getpid()));
    {
      UniqueFd out(::open(staged.path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!out) return fail(Error::FromErrno(fmt::format("create {}", staged.path()), errno));
      auto copied = CopyVerifiedPayload(
          **source, uki,
          [&](std::span<const uint8_t> data) { return WriteAll(out.get(), data, staged.path()); },
          write);
      if (!copied) return fail(std::move(copied).error().WithContext("staging the kernel image"));
    }
    hook("esp-staged");
    if (auto installed = (*esp)->InstallFile(staged.path(), esp_path); !installed) {
      return fail(std::move(installed).error().WithContext("writing the kernel image to the ESP"));
    }
    auto esp_digest = (*esp)->Digest(esp_path);
    if (!esp_digest) return fail(std::move(esp_digest).error());
    if (*esp_digest != uki.sha256) {
      return fail(Error::Make(ErrorCode::kVerificationFailed,
                              fmt::format("{} on the ESP reads back as {}, expected {}", esp_path,
                                          DigestToHex(*esp_digest), DigestToHex(uki.sha256))));
    }
  }
  hook("esp-written");

  // 7. Only now: trial + BootNext.
  tracker.SetPhase(InstallPhase::kActivating);
  auto finished =
      slots.FinishWrite(plan->target, plan->version, rootfs.sha256, options.tries, plan->downgrade);
  if (!finished) {
    return fail(std::move(finished).error().WithContext(
        fmt::format("activating slot {} for a trial boot", slot_name)));
  }
  hook("finish-write");
  tracker.SetPhase(InstallPhase::kDone);

  InstallReport report;
  report.target = plan->target;
  report.version = m.version;
  report.signer = bundle->signer;
  report.stats = *stats;
  report.notes = plan->notes;
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  RecordBestEffort(options.audit, InstallFinishedEvent(tracker.status(), report), &audit_warnings);
  report.notes.insert(report.notes.end(), audit_warnings.begin(), audit_warnings.end());
  return report;
}

}  // namespace ralph::ota
