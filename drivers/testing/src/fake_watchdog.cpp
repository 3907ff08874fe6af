#include "drivers/testing/fake_watchdog.h"

#include <fmt/format.h>

namespace ralph::testing {

Result<void> FakeWatchdog::MaybeFail(Op op, const char* what) {
  if (fail_ && fail_->op == op) {
    int err = fail_->err;
    fail_.reset();
    return Error::FromErrno(fmt::format("{} the fake watchdog", what), err);
  }
  return {};
}

Result<void> FakeWatchdog::Start(std::chrono::seconds timeout) {
  if (armed_) return Error::Make(ErrorCode::kInvalidState, "fake watchdog already started");
  if (timeout.count() <= 0) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("watchdog timeout of {} s is out of range", timeout.count()));
  }
  TRY(MaybeFail(Op::kStart, "starting"));
  ++starts_;
  armed_ = true;
  timeout_ = std::max(granularity_, timeout / granularity_ * granularity_);
  return {};
}

Result<void> FakeWatchdog::Pet() {
  if (!armed_) return Error::Make(ErrorCode::kInvalidState, "fake watchdog not started");
  TRY(MaybeFail(Op::kPet, "petting"));
  ++pets_;
  return {};
}

Result<void> FakeWatchdog::Stop() {
  if (!armed_) return Error::Make(ErrorCode::kInvalidState, "fake watchdog not started");
  TRY(MaybeFail(Op::kStop, "stopping"));
  ++magic_closes_;
  armed_ = false;
  timeout_ = std::chrono::seconds(0);
  return {};
}

}  // namespace ralph::testing
