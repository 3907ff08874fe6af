#include "services/health/slot_gate.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <fmt/format.h>

#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "platform/arch.h"
#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::health {
namespace {

constexpr const char* kEspMount = "/boot/efi";

// The slot manager over the system's store and disk.
struct Manager {
  std::optional<DiskLayout> disk;
  std::optional<boot::SlotManager> manager;
};

Result<Manager> OpenManager(const GateSystem& system) {
  Manager m;
  m.disk = TRY_CTX(system.disk->Discover(), "finding the appliance disk");
  if (!system.kernel_cmdline) return system.kernel_cmdline.error();
  m.manager.emplace(TRY(boot::SlotManager::Create(*system.vars, m.disk, *system.kernel_cmdline)));
  return m;
}

std::string Summarize(const boot::SlotState& state) {
  auto slot_text = [&](boot::Slot slot) {
    const boot::SlotRecord& record = state.slot(slot);
    std::string text =
        fmt::format("{} {}", boot::SlotName(slot), boot::SlotStatusName(record.status));
    if (record.status == boot::SlotStatus::kTrial)
      text += fmt::format(" ({} tries left)", record.tries_left);
    return text;
  };
  return fmt::format("committed: {}; {}, {}",
                     state.committed ? boot::SlotName(*state.committed) : "none",
                     slot_text(boot::Slot::kA), slot_text(boot::Slot::kB));
}

// The removable-path UKI on the ESP must survive a power cut: file and
// directory synced. FAT has no atomic replace; the old copy stays until the
// new one is whole.
Result<void> CopyFile(const std::string& from, const std::string& to) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Error::FromErrno(fmt::format("open {}", from), errno);
  AtomicFile out = TRY(AtomicFile::Create(to, 0600));
  std::vector<uint8_t> buffer(1 << 20);
  for (;;) {
    ssize_t n = ::read(in.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", from), errno);
    if (n == 0) break;
    TRY(WriteAll(out.fd(), std::span(buffer).first(static_cast<size_t>(n)), out.temp_path()));
  }
  return out.Commit(Durability::kFileAndDirectorySynced);
}

}  // namespace

Result<DiskLayout> ApplianceDisk::Discover() {
  return DiscoverApplianceDisk();
}

Result<void> ApplianceDisk::UpdateRemovablePath(const DiskLayout& disk, boot::Slot slot) {
  const PartitionInfo* esp = disk.Find(kPartEfi);
  if (esp == nullptr || esp->device.empty()) {
    return Error::Make(ErrorCode::kNotFound, "the disk has no EFI partition device");
  }
  if (::mount(esp->device.c_str(), kEspMount, "vfat", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "umask=0077") != 0) {
    return Error::FromErrno(fmt::format("mounting the ESP {} on {}", esp->device, kEspMount),
                            errno);
  }
  std::string source =
      fmt::format("{}/EFI/ralph/{}.efi", kEspMount, slot == boot::Slot::kA ? "a" : "b");
  std::string target = fmt::format("{}/EFI/BOOT/{}", kEspMount, arch::RemovableBootFileName());
  auto copied = CopyFile(source, target);
  ::sync();
  if (::umount2(kEspMount, 0) != 0 && copied) {
    return Error::FromErrno(fmt::format("unmounting {}", kEspMount), errno);
  }
  return copied;
}

Result<SlotView> ReadSlotView(const GateSystem& system, std::string_view booted_slot) {
  boot::Slot slot = TRY(boot::ParseSlot(booted_slot));
  Manager m = TRY(OpenManager(system));
  boot::StatusReport status = TRY(m.manager->Status());
  if (!status.view.record) {
    return Error::Make(ErrorCode::kCorrupt,
                       fmt::format("RalphSlotState unreadable: {}",
                                   status.view.record_error ? status.view.record_error->message()
                                                            : std::string("missing")));
  }
  const boot::SlotState& state = *status.view.record;
  bool committed_good =
      state.committed == slot && state.slot(slot).status == boot::SlotStatus::kGood;
  return SlotView{!committed_good, state.committed.has_value(), Summarize(state)};
}

Result<void> CommitSlot(const GateSystem& system, std::string_view booted_slot) {
  boot::Slot slot = TRY(boot::ParseSlot(booted_slot));
  Manager m = TRY(OpenManager(system));
  TRY_CTX(m.manager->MarkGood(), "mark-good");
  TRY_CTX(system.disk->UpdateRemovablePath(*m.disk, slot),
          "updating the removable-media boot path");
  return {};
}

Result<void> MarkSlotBad(const GateSystem& system, std::string_view booted_slot) {
  TRY(boot::ParseSlot(booted_slot));
  Manager m = TRY(OpenManager(system));
  TRY_CTX(m.manager->MarkBadBooted(), "mark-bad");
  return {};
}

}  // namespace ralph::health
