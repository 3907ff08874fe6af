// The audit log's time format read back: what ralphd's and ralphctl's
// --since/--until accept.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "services/audit/audit_log.h"

namespace ralph::audit {
namespace {

using ::testing::HasSubstr;

TEST(ParseAuditTimeTest, AcceptsTheStoredFormatAndWholeSeconds) {
  EXPECT_EQ(*ParseAuditTime("2026-11-22T16:40:01.123Z"), "2026-11-22T16:40:01.123Z");
  EXPECT_EQ(*ParseAuditTime("2026-11-22T16:40:01Z"), "2026-11-22T16:40:01.000Z");
  EXPECT_EQ(*ParseAuditTime("2028-02-29T23:59:59.999Z"), "2028-02-29T23:59:59.999Z");
  // What FormatAuditTime writes reads back unchanged.
  auto now = std::chrono::system_clock::now();
  EXPECT_EQ(*ParseAuditTime(FormatAuditTime(now)), FormatAuditTime(now));
}

TEST(ParseAuditTimeTest, RefusesAnythingElseSayingWhy) {
  struct Case {
    const char* text;
    const char* why;
  };
  for (Case c :
       {Case{"", "wrong length"}, Case{"2026-11-22", "wrong length"},
        Case{"2026-11-22 16:40:01Z", "unexpected ' ' at offset 10"},
        Case{"2026-11-22T16:40:01.123+", "unexpected '+' at offset 23"},
        Case{"2026-11-22T16:40:01.12Z", "wrong length"},
        Case{"2026-11-22t16:40:01Z", "unexpected 't' at offset 10"},
        Case{"2026-02-30T00:00:00Z", "out of range"}, Case{"2026-13-01T00:00:00Z", "out of range"},
        Case{"2026-11-22T24:00:00Z", "out of range"},
        Case{"2026-11-22T16:60:00Z", "out of range"}}) {
    Result<std::string> parsed = ParseAuditTime(c.text);
    ASSERT_FALSE(parsed.has_value()) << c.text;
    EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(parsed.error().message(), HasSubstr(c.why)) << c.text;
    EXPECT_THAT(parsed.error().message(), HasSubstr(std::string("'") + c.text + "'"));
  }
}

}  // namespace
}  // namespace ralph::audit
