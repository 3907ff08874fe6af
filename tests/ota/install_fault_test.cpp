// Fault injection: the installer runs in a child process that is SIGKILLed
// at a point chosen before the run, and every run must die exactly there:
//   - a named hook point of the installer ("begin-write", the n-th "chunk",
//     "flushed", "verified", "esp-staged", "esp-written", "finish-write"),
//     from the sequence a complete install recorded;
//   - the n-th EFI variable write of the slot manager, before or after it
//     reaches the store, n drawn from the writes this install will make
//     from the current state (BeginWrite and FinishWrite replayed on an
//     in-memory copy of the store);
//   - while the kernel image is written to the ESP: mcopy is replaced (PATH)
//     by a stand-in that writes the first k bytes of the image to the ESP
//     with the real mcopy, then kills the installer's process group.
// The child reports the point it died at through a file; the test checks it
// against the aim. After every kill the booted slot A must still be
// committed, good and first in BootOrder, and B must not be on trial (nor
// BootNext at it) unless B and the ESP hold exactly the new image. Rerunning
// the install then completes it.
//
// Randomised: the seed is printed, RALPH_TEST_SEED replays a run.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <random>

#include <fmt/format.h>

#include "boot/slot_plan.h"
#include "install_fixture.h"
#include "platform/sha256.h"
#include "platform/testing/fake_efi_vars.h"
#include "tests/support/test_seed.h"

namespace ralph::ota::testing {
namespace {

enum class KillKind { kHook, kVariableWrite, kEspWrite };

// Where one run kills the installer.
struct KillPoint {
  KillKind kind = KillKind::kHook;
  std::string hook;    // kHook: the hook point
  int occurrence = 0;  // kHook: its n-th call (1-based); kVariableWrite: the n-th write
  bool after = false;  // kVariableWrite: once the write reached the store
  uint64_t bytes = 0;  // kEspWrite: bytes of the image on the ESP

  std::string Describe() const {
    switch (kind) {
      case KillKind::kHook: return fmt::format("hook {} #{}", hook, occurrence);
      case KillKind::kVariableWrite:
        return fmt::format("{} variable write #{}", after ? "after" : "before", occurrence);
      case KillKind::kEspWrite: return fmt::format("ESP write of {} bytes", bytes);
    }
    return "?";
  }
};

// Records `point` in `report_path`, then SIGKILLs the whole process group
// (the installer, its threads and any mcopy it runs).
[[noreturn]] void KillHere(const std::string& report_path, const KillPoint& point) {
  std::string text = point.Describe();
  int fd = ::open(report_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0) {
    (void)!::write(fd, text.data(), text.size());
    ::close(fd);
  }
  ::kill(0, SIGKILL);
  ::_exit(99);  // not reached
}

// Forwards to `inner`, counting Set/Delete calls; kills the process group
// before or after the `point.occurrence`-th one.
class KillingStore final : public EfiVarStoreInterface {
 public:
  KillingStore(EfiVarStoreInterface& inner, const KillPoint* point, std::string report_path)
      : inner_(inner), point_(point), report_path_(std::move(report_path)) {}
  Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) override {
    return inner_.Get(guid, name);
  }
  Result<void> Set(const EfiGuid& guid, std::string_view name, std::span<const uint8_t> data,
                   uint32_t attributes) override {
    ++writes_;
    MaybeKill(false);
    auto r = inner_.Set(guid, name, data, attributes);
    MaybeKill(true);
    return r;
  }
  Result<void> Delete(const EfiGuid& guid, std::string_view name) override {
    ++writes_;
    MaybeKill(false);
    auto r = inner_.Delete(guid, name);
    MaybeKill(true);
    return r;
  }
  Result<std::vector<std::string>> List(const EfiGuid& guid) override { return inner_.List(guid); }

 private:
  void MaybeKill(bool after) {
    if (point_ && point_->kind == KillKind::kVariableWrite && writes_ == point_->occurrence &&
        after == point_->after) {
      KillHere(report_path_, *point_);
    }
  }
  EfiVarStoreInterface& inner_;
  const KillPoint* point_;
  std::string report_path_;
  int writes_ = 0;
};

class InstallFaultTest : public ApplianceFixture {
 protected:
  void SetUp() override {
    ApplianceFixture::SetUp();
    if (HasFatalFailure()) return;
    report_path_ = dir_ / "killed-at";
    // The mcopy stand-in (see the top of this file). Only the copy onto the
    // ESP (`mcopy -i IMAGE -o -D o SRC ::/DST`) is cut short; reads
    // (`... ::/DST -`) go to the real mcopy. RALPH_ESP_KILL_BYTES is set
    // only in a child aiming at an ESP write.
    std::string bin = dir_ / "bin";
    std::filesystem::create_directory(bin);
    std::string real = "/usr/bin/mcopy";
    ASSERT_EQ(::access(real.c_str(), X_OK), 0) << real << " missing (Debian package mtools)";
    std::string script = fmt::format(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        "if [ \"$last\" = - ] || [ -z \"$RALPH_ESP_KILL_BYTES\" ]; then exec {0} \"$@\"; fi\n"
        "src=$(eval echo \\${{$(($# - 1))}})\n"
        "head -c \"$RALPH_ESP_KILL_BYTES\" \"$src\" > \"$src.cut\" || exit 1\n"
        "{0} -i \"$2\" -o -D o \"$src.cut\" \"$last\" || exit 1\n"
        "printf 'ESP write of %s bytes' \"$RALPH_ESP_KILL_BYTES\" > '{1}'\n"
        "kill -KILL 0\n",
        real, report_path_);
    WriteFile(bin + "/mcopy", std::vector<uint8_t>(script.begin(), script.end()));
    ASSERT_EQ(::chmod((bin + "/mcopy").c_str(), 0755), 0);
    stand_in_dir_ = bin;
  }

  // The installer's hook points in order, from a complete install (left in
  // place: B on trial).
  std::vector<std::string> RecordHookSequence(const std::string& bundle) {
    std::vector<std::string> points;
    InstallOptions options = Options(bundle);
    options.hook = [&](std::string_view at) { points.emplace_back(at); };
    auto report = InstallAs(bundle, 'a', &options);
    EXPECT_TRUE(report.has_value()) << report.error().ToString();
    return points;
  }

  // How many variable writes an install of `spec` makes from the store's
  // current state: the slot manager's calls replayed on an in-memory copy.
  int PlannedVariableWrites(const BundleSpec& spec) {
    FakeEfiVarStore copy;
    for (const EfiGuid& guid : {kEfiGlobalGuid, kRalphVendorGuid, boot::kLoaderVendorGuid}) {
      auto names = vars_->List(guid);
      EXPECT_TRUE(names.has_value()) << names.error().ToString();
      if (!names) return 0;
      for (const std::string& name : *names) {
        auto var = vars_->Get(guid, name);
        EXPECT_TRUE(var.has_value()) << var.error().ToString();
        if (var) copy.Put(guid, name, var->data, var->attributes);
      }
    }
    auto manager = boot::SlotManager::Create(copy, layout_, "ralph.slot=a");
    EXPECT_TRUE(manager.has_value()) << manager.error().ToString();
    if (!manager) return 0;
    EXPECT_TRUE(manager->Status().has_value());
    auto begin = manager->BeginWrite(boot::Slot::kB, spec.version);
    EXPECT_TRUE(begin.has_value()) << begin.error().ToString();
    auto finish = manager->FinishWrite(boot::Slot::kB, spec.version, *Sha256::Of(spec.rootfs), 1);
    EXPECT_TRUE(finish.has_value()) << finish.error().ToString();
    return static_cast<int>(copy.write_calls());
  }

  // Runs one install in a child (its own process group) that kills itself
  // at `point`. Returns the point the child reported dying at ("" when it
  // was not killed).
  std::string RunChild(const std::string& bundle, const KillPoint& point) {
    std::filesystem::remove(report_path_);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      InstallOptions options = Options(bundle);
      options.status_path.clear();
      if (point.kind == KillKind::kHook) {
        options.hook = [&, seen = 0](std::string_view at) mutable {
          if (at == point.hook && ++seen == point.occurrence) KillHere(report_path_, point);
        };
      } else if (point.kind == KillKind::kEspWrite) {
        // A full install always rewrites the kernel image (an adaptive one
        // skips it when the ESP already holds it).
        options.mode = WriteOptions::Mode::kFull;
        ::setenv("RALPH_ESP_KILL_BYTES", std::to_string(point.bytes).c_str(), 1);
        ::setenv("PATH", (stand_in_dir_ + ":" + std::getenv("PATH")).c_str(), 1);
      }
      KillingStore killing(*vars_, &point, report_path_);
      auto manager = boot::SlotManager::Create(killing, layout_, "ralph.slot=a");
      if (!manager) ::_exit(3);
      auto report = Install(options, *manager, layout_);
      if (!report) std::fprintf(stderr, "install child: %s\n", report.error().ToString().c_str());
      ::_exit(report ? 0 : 1);
    }
    EXPECT_GT(pid, 0);
    int status = 0;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    // Reap the rest of a killed group (mcopy, the stand-in's children): a
    // spawned child killed before its exec still holds a copy of the lock
    // fd, and the next install would find the lock taken. As a child
    // subreaper (main), this process inherits those orphans.
    ::kill(-pid, SIGKILL);
    while (::waitpid(-pid, nullptr, 0) > 0) {
    }
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
      ADD_FAILURE() << "the install child was not killed: status " << status;
      return "";
    }
    std::vector<uint8_t> report = ReadFileBytes(report_path_);
    return std::string(report.begin(), report.end());
  }

  std::string report_path_;
  std::string stand_in_dir_;
};

TEST_F(InstallFaultTest, KilledAtEveryKindOfPointLeavesBootedSlotCommittedAndRerunCompletes) {
  BundleSpec spec = DefaultSpec(21);
  std::string bundle = MakeBundle("v2.rbundle", spec);
  std::mt19937 rng(::ralph::testing::TestSeed());

  std::vector<std::string> sequence = RecordHookSequence(bundle);
  ASSERT_FALSE(sequence.empty());
  ASSERT_EQ(sequence.front(), "begin-write");
  ASSERT_EQ(sequence.back(), "finish-write");
  ASSERT_EQ(std::count(sequence.begin(), sequence.end(), "chunk"),
            static_cast<long>((spec.rootfs.size() + kTestChunk - 1) / kTestChunk));
  ExpectSafe(spec.rootfs, spec.uki);
  std::vector<std::string> hooks;
  for (const std::string& point : sequence) {
    if (std::find(hooks.begin(), hooks.end(), point) == hooks.end()) hooks.push_back(point);
  }

  constexpr int kRuns = 36;
  std::map<KillKind, int> kills;
  for (int run = 0; run < kRuns; ++run) {
    KillPoint point;
    point.kind = static_cast<KillKind>(run % 3);
    switch (point.kind) {
      case KillKind::kHook: {
        // Each point alike, then one of its calls ("chunk" has one a chunk).
        point.hook = hooks[std::uniform_int_distribution<size_t>(0, hooks.size() - 1)(rng)];
        int calls = static_cast<int>(std::count(sequence.begin(), sequence.end(), point.hook));
        point.occurrence = std::uniform_int_distribution<int>(1, calls)(rng);
        break;
      }
      case KillKind::kVariableWrite: {
        int planned = PlannedVariableWrites(spec);
        ASSERT_GT(planned, 0);
        fmt::print("run {}: the install would make {} variable writes\n", run, planned);
        point.occurrence = std::uniform_int_distribution<int>(1, planned)(rng);
        point.after = rng() % 2;
        break;
      }
      case KillKind::kEspWrite:
        point.bytes = std::uniform_int_distribution<uint64_t>(0, spec.uki.size() - 1)(rng);
        break;
    }
    SCOPED_TRACE(fmt::format("run {}: kill at {}", run, point.Describe()));
    std::string died_at = RunChild(bundle, point);
    EXPECT_EQ(died_at, point.Describe()) << "the child did not die where aimed";
    fmt::print("run {}: killed at {}\n", run, died_at);
    ++kills[point.kind];
    ExpectSafe(spec.rootfs, spec.uki);
    if (HasFatalFailure()) return;
    // Every few runs, rerun to completion in-process and check the result.
    if (run % 9 == 8) {
      auto report = InstallAs(bundle);
      ASSERT_TRUE(report.has_value()) << report.error().ToString();
      EXPECT_EQ(Record().b.status, boot::SlotStatus::kTrial);
      ExpectSafe(spec.rootfs, spec.uki);
    }
  }
  // Whatever state the last kill left, rerunning completes the install.
  auto report = InstallAs(bundle);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  boot::SlotState record = Record();
  EXPECT_EQ(record.b.status, boot::SlotStatus::kTrial);
  EXPECT_EQ(record.b.digest, *Sha256::Of(spec.rootfs));
  ExpectSafe(spec.rootfs, spec.uki);
  std::printf(
      "fault injection: %d runs: %d at hook points, %d at variable writes, %d in ESP writes\n",
      kRuns, kills[KillKind::kHook], kills[KillKind::kVariableWrite], kills[KillKind::kEspWrite]);
}

}  // namespace
}  // namespace ralph::ota::testing

int main(int argc, char** argv) {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  return ralph::ota::testing::RunWithEfivarDirectory(argc, argv);
}
