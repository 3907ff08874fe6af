// TerminalHub: output goes to the attachments of its job only, callbacks
// may detach (themselves or others) while output is handed out, a job's end
// closes each attachment once, and what waits for a job not yet running is
// bounded.
#include "services/ralphd/terminals.h"

#include <gtest/gtest.h>

namespace ralph::ralphd {
namespace {

TEST(TerminalHub, OutputReachesTheJobsAttachmentsFromWhenTheyAttached) {
  TerminalHub hub;
  std::string a, b, other;
  TerminalAttachment first = hub.Attach(7, "uid:0", {.output = [&](auto s) { a += s; }});
  hub.Output(7, "one ");
  hub.Attach(7, "cert:ab", {.output = [&](auto s) { b += s; }});
  hub.Attach(8, "uid:0", {.output = [&](auto s) { other += s; }});
  hub.Output(7, "two");
  EXPECT_EQ(a, "one two");
  EXPECT_EQ(b, "two");
  EXPECT_EQ(other, "");
  ASSERT_TRUE(hub.Find(first.id));
  EXPECT_EQ(hub.Find(first.id)->caller, "uid:0");
  EXPECT_EQ(hub.Detach(first.id)->job, 7u);
  EXPECT_FALSE(hub.Detach(first.id));
  hub.Output(7, "three");
  EXPECT_EQ(a, "one two");
  EXPECT_EQ(hub.count(), 2u);
}

TEST(TerminalHub, ACallbackMayDetachItselfAndOthers) {
  TerminalHub hub;
  int calls_second = 0;
  uint64_t first = 0, second = 0;
  first = hub.Attach(1, "uid:0",
                     {.output =
                          [&](std::string_view) {
                            hub.Detach(first);
                            hub.Detach(second);
                          }})
              .id;
  second = hub.Attach(1, "uid:0", {.output = [&](std::string_view) { ++calls_second; }}).id;
  hub.Output(1, "x");
  EXPECT_EQ(calls_second, 0);
  EXPECT_EQ(hub.count(), 0u);
}

TEST(TerminalHub, TheJobsEndClosesEachAttachmentOnce) {
  TerminalHub hub;
  std::vector<int> statuses;
  auto closed = [&](int status) { statuses.push_back(status); };
  hub.Attach(3, "uid:0", {.closed = closed});
  hub.Attach(3, "cert:ab", {.closed = closed});
  hub.Attach(4, "uid:0", {.closed = closed});
  std::vector<TerminalAttachment> gone = hub.Close(3, 7);
  ASSERT_EQ(gone.size(), 2u);
  EXPECT_EQ(gone[1].caller, "cert:ab");
  EXPECT_EQ(statuses, (std::vector<int>{7, 7}));
  EXPECT_TRUE(hub.Close(3, 7).empty());
  EXPECT_EQ(hub.count(), 1u);
}

TEST(TerminalHub, WhatWaitsForAJobToRunIsBounded) {
  TerminalHub hub;
  EXPECT_TRUE(hub.QueueInput(5, "abc", 4));
  EXPECT_FALSE(hub.QueueInput(5, "de", 4));
  EXPECT_TRUE(hub.QueueInput(5, "d", 4));
  EXPECT_EQ(hub.TakeInput(5), "abcd");
  EXPECT_EQ(hub.TakeInput(5), "");
  hub.SetSize(5, 120, 40);
  hub.SetSize(5, 100, 30);
  auto size = hub.TakeSize(5);
  ASSERT_TRUE(size);
  EXPECT_EQ(size->first, 100);
  EXPECT_EQ(size->second, 30);
  EXPECT_FALSE(hub.TakeSize(5));
  // A job's end drops what waited for it.
  hub.QueueInput(6, "x", 4);
  hub.Close(6, -1);
  EXPECT_EQ(hub.TakeInput(6), "");
}

}  // namespace
}  // namespace ralph::ralphd
