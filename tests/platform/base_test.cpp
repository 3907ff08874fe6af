#include <fcntl.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "platform/crc32.h"
#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph {
namespace {

Result<int> ParsePositive(int value) {
  if (value <= 0) return Error::Make(ErrorCode::kInvalidArgument, "not positive");
  return value;
}

Result<int> Doubled(int value) {
  int parsed = TRY_CTX(ParsePositive(value), "doubling");
  return parsed * 2;
}

Result<void> OpenMissing() {
  int fd = ::open("/nonexistent/ralph", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error::FromErrno("open /nonexistent/ralph", errno);
  ::close(fd);
  return {};
}

TEST(ResultTest, TryPropagatesValueAndContext) {
  Result<int> ok = Doubled(4);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok, 8);

  Result<int> bad = Doubled(-1);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().message(), "doubling: not positive");
  EXPECT_EQ(bad.error().ToString(), "doubling: not positive [invalid-argument]");
}

TEST(ResultTest, ErrnoIsCapturedAndMapped) {
  Result<void> result = OpenMissing();
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(result.error().sys_errno(), ENOENT);
  EXPECT_NE(result.error().message().find("open /nonexistent/ralph: "), std::string::npos);
}

TEST(UniqueFdTest, ResetPreservesErrnoAndReleaseTransfers) {
  UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  errno = EXDEV;
  fd.reset();
  EXPECT_EQ(errno, EXDEV);
  EXPECT_FALSE(fd.valid());

  UniqueFd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  int raw = a.get();
  UniqueFd b = std::move(a);
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): checking the move
  EXPECT_EQ(b.get(), raw);
  int released = b.release();
  EXPECT_EQ(released, raw);
  EXPECT_EQ(::close(released), 0);
}

TEST(Crc32Test, MatchesKnownVector) {
  // The standard check value of CRC-32/ISO-HDLC for "123456789".
  const std::string text = "123456789";
  EXPECT_EQ(Crc32({reinterpret_cast<const uint8_t*>(text.data()), text.size()}), 0xCBF43926u);
}

}  // namespace
}  // namespace ralph
