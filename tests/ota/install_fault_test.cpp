// Fault injection: the installer runs in a child process that is SIGKILLed
// at random points — between chunks, around fsync and verification, while
// mcopy writes the ESP (the whole process group dies), between the slot
// manager's EFI variable writes, and at random times. After every kill the
// booted slot A must still be committed, good and first in BootOrder, and B
// must not be on trial (nor BootNext at it) unless B and the ESP hold exactly
// the new image. Rerunning the install then completes it.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "install_fixture.h"
#include "platform/sha256.h"

namespace ralph::ota::testing {
namespace {

// Kills the process (group) on the n-th variable write, before or after it.
class KillingStore final : public EfiVarStoreInterface {
 public:
  KillingStore(EfiVarStoreInterface& inner, int kill_at, bool after)
      : inner_(inner), kill_at_(kill_at), after_(after) {}
  Result<EfiVariable> Get(const EfiGuid& guid, std::string_view name) override {
    return inner_.Get(guid, name);
  }
  Result<void> Set(const EfiGuid& guid, std::string_view name, std::span<const uint8_t> data,
                   uint32_t attributes) override {
    MaybeKill(false);
    auto r = inner_.Set(guid, name, data, attributes);
    MaybeKill(true);
    ++writes_;
    return r;
  }
  Result<void> Delete(const EfiGuid& guid, std::string_view name) override {
    MaybeKill(false);
    auto r = inner_.Delete(guid, name);
    MaybeKill(true);
    ++writes_;
    return r;
  }
  Result<std::vector<std::string>> List(const EfiGuid& guid) override { return inner_.List(guid); }

 private:
  void MaybeKill(bool after) {
    if (writes_ + 1 == kill_at_ && after == after_) ::kill(0, SIGKILL);
  }
  EfiVarStoreInterface& inner_;
  int kill_at_;
  bool after_;
  int writes_ = 0;
};

enum class KillMode { kHookPoint, kVariableWrite, kRandomTime, kDuringEspWrite };

class InstallFaultTest : public ApplianceFixture {
 protected:
  // Runs one install in a child (its own process group) with the given kill
  // plan. Returns true when the child was killed, false when it completed.
  bool RunChild(const std::string& bundle, KillMode mode, std::mt19937& rng) {
    std::uniform_int_distribution<int> chunk_pick(1, 100);
    std::uniform_int_distribution<int> point_pick(0, 6);
    std::uniform_int_distribution<int> var_pick(1, 6);
    std::uniform_int_distribution<int> ms_pick(0, 1500);
    int kill_chunk = chunk_pick(rng);
    int point = point_pick(rng);
    int var_write = var_pick(rng);
    bool after = rng() % 2;
    int delay_ms = ms_pick(rng);
    static const char* kPoints[] = {"begin-write", "chunk",       "flushed",     "verified",
                                    "esp-staged",  "esp-written", "finish-write"};
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      InstallOptions options = Options(bundle);
      options.status_path.clear();
      int chunks = 0;
      if (mode == KillMode::kHookPoint) {
        options.hook = [&](std::string_view at) {
          if (at == "chunk" && ++chunks != kill_chunk) return;
          if (at == kPoints[point]) ::kill(0, SIGKILL);
        };
      } else if (mode == KillMode::kDuringEspWrite) {
        // A full install always rewrites the UKI (an adaptive one skips it
        // when the ESP already holds it).
        options.mode = WriteOptions::Mode::kFull;
        options.hook = [&](std::string_view at) {
          if (at != "esp-staged") return;
          // Kill the group (this process and mcopy) while the ESP is written.
          std::thread([delay = delay_ms % 40] {
            std::this_thread::sleep_for(std::chrono::milliseconds(delay));
            ::kill(0, SIGKILL);
          }).detach();
        };
      }
      KillingStore killing(*vars_, mode == KillMode::kVariableWrite ? var_write : -1, after);
      auto manager = boot::SlotManager::Create(killing, layout_, "ralph.slot=a");
      if (!manager) ::_exit(3);
      auto report = Install(options, *manager, layout_);
      if (!report) std::fprintf(stderr, "install child: %s\n", report.error().ToString().c_str());
      ::_exit(report ? 0 : 1);
    }
    EXPECT_GT(pid, 0);
    if (mode == KillMode::kRandomTime) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      ::kill(-pid, SIGKILL);
    }
    int status = 0;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    // Let any orphaned grandchild (mcopy) of a killed group finish dying: a
    // spawned child killed before its exec still holds a copy of the lock
    // fd, and the next install would find the lock taken. As a child
    // subreaper (main), this process inherits those orphans and reaps them.
    ::kill(-pid, SIGKILL);
    while (::waitpid(-pid, nullptr, 0) > 0) {
    }
    if (WIFSIGNALED(status)) return true;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "install child failed without being killed, status " << status;
    return false;
  }
};

TEST_F(InstallFaultTest, KilledAnywhereLeavesBootedSlotCommittedAndRerunCompletes) {
  BundleSpec spec = DefaultSpec(21);
  std::string bundle = MakeBundle("v2.rbundle", spec);
  std::mt19937 rng(12345);
  constexpr int kRuns = 40;
  int killed = 0, completed = 0;
  for (int run = 0; run < kRuns; ++run) {
    KillMode mode = static_cast<KillMode>(run % 4);
    SCOPED_TRACE(fmt::format("run {} mode {}", run, static_cast<int>(mode)));
    (RunChild(bundle, mode, rng) ? killed : completed)++;
    ExpectSafe(spec.rootfs, spec.uki);
    if (HasFatalFailure()) return;
    // Every few runs, rerun to completion in-process and check the result.
    if (run % 8 == 7) {
      auto report = InstallAs(bundle);
      ASSERT_TRUE(report.has_value()) << report.error().ToString();
      EXPECT_EQ(Record().b.status, boot::SlotStatus::kTrial);
      ExpectSafe(spec.rootfs, spec.uki);
    }
  }
  EXPECT_GE(killed, kRuns / 2) << "the kill points were not reached";
  // Whatever state the last kill left, rerunning completes the install.
  auto report = InstallAs(bundle);
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  boot::SlotState record = Record();
  EXPECT_EQ(record.b.status, boot::SlotStatus::kTrial);
  EXPECT_EQ(record.b.digest, *Sha256::Of(spec.rootfs));
  ExpectSafe(spec.rootfs, spec.uki);
  std::printf("fault injection: %d runs, %d killed, %d completed\n", kRuns, killed, completed);
}

}  // namespace
}  // namespace ralph::ota::testing

int main(int argc, char** argv) {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  return ralph::ota::testing::RunWithEfivarDirectory(argc, argv);
}
