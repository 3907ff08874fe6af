// The bridge from the server's requests to the core's decoder and
// dispatcher: the core's strict errors come back as HTTP replies, the paired
// client is the Caller, and Dispatch runs on the thread it is posted to.
#include "services/ralphd/api/dispatcher_handler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace ralph::ralphd::api {
namespace {

using ::testing::HasSubstr;

class FakeDispatcher : public DispatcherInterface {
 public:
  Reply Dispatch(const ralphd::Caller& caller, const Command& command) override {
    callers.push_back(caller);
    names.push_back(std::string(CommandName(command)));
    thread = std::this_thread::get_id();
    return next;
  }
  void SessionOpened(const ralphd::Caller& caller, std::string_view peer) override {
    names.push_back(fmt::format("session {} {}", caller.ToString(), peer));
  }
  std::vector<ralphd::Caller> callers;
  std::vector<std::string> names;
  std::thread::id thread;
  Reply next = Reply::Json({{"state", "ok"}});
};

const Caller kClient{"4f00aa", "laptop"};

TEST(DispatcherHandlerTest, DecodesDispatchesAndAnswersWithTheClientAsCaller) {
  FakeDispatcher core;
  DispatcherHandler handler(core);
  ApiReply reply = handler.Handle(kClient, {"GET", "/v1/status", "", ""});
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(nlohmann::json::parse(reply.body)["state"], "ok");
  ASSERT_EQ(core.names.size(), 1u);
  EXPECT_EQ(core.names[0], "status");
  EXPECT_EQ(core.callers[0].kind, ralphd::Caller::Kind::kClientCertificate);
  EXPECT_EQ(core.callers[0].certificate_id, "4f00aa");
}

TEST(DispatcherHandlerTest, TheCoresDecodingErrorsNameTheFieldAndNeverDispatch) {
  FakeDispatcher core;
  DispatcherHandler handler(core);
  ApiReply unknown =
      handler.Handle(kClient, {"POST", "/v1/jobs", "", R"({"argv":["make"],"colour":1})"});
  EXPECT_EQ(unknown.status, 400);
  EXPECT_THAT(unknown.body, HasSubstr("body.colour: unknown field"));
  ApiReply malformed = handler.Handle(kClient, {"POST", "/v1/jobs", "", "{\"argv\":"});
  EXPECT_EQ(malformed.status, 400);
  EXPECT_THAT(malformed.body, HasSubstr("line"));
  EXPECT_EQ(handler.Handle(kClient, {"GET", "/v1/nothing", "", ""}).status, 404);
  EXPECT_EQ(handler.Handle(kClient, {"DELETE", "/v1/status", "", ""}).status, 405);
  ApiReply twice = handler.Handle(kClient, {"GET", "/v1/jobs", "limit=1&limit=2", ""});
  EXPECT_EQ(twice.status, 400);
  EXPECT_THAT(twice.body, HasSubstr("query.limit: given more than once"));
  EXPECT_TRUE(core.names.empty());
}

TEST(DispatcherHandlerTest, MapsReplyKindsAndFailures) {
  FakeDispatcher core;
  DispatcherHandler handler(core);
  core.next = Reply::Bytes(ReplyKind::kTar, "tar bytes");
  ApiReply tar = handler.Handle(kClient, {"GET", "/v1/jobs/1/workspace", "format=tar", ""});
  EXPECT_EQ(tar.status, 200);
  EXPECT_EQ(tar.content_type, "application/x-tar");
  EXPECT_EQ(tar.body, "tar bytes");
  core.next = Reply::Failure(Error::Make(ErrorCode::kNotFound, "job 1: no such job"));
  ApiReply missing = handler.Handle(kClient, {"GET", "/v1/jobs/1", "", ""});
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(nlohmann::json::parse(missing.body)["error"]["code"], "not-found");
}

TEST(DispatcherHandlerTest, AFailuresBodyKeepsTheCoresDetails) {
  FakeDispatcher core;
  DispatcherHandler handler(core);
  core.next = Reply::Failure(Error::Make(ErrorCode::kInvalidArgument, "invalid policy"));
  core.next.body["error"]["issues"] = {{{"line", 3}, {"column", 13}, {"message", "bad"}}};
  ApiReply refused = handler.Handle(kClient, {"PUT", "/v1/policy", "", R"({"document":"x"})"});
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(nlohmann::json::parse(refused.body)["error"]["issues"][0]["line"], 3);
}

// A workspace upload has the core's own limit; every other route the
// server's.
TEST(DispatcherHandlerTest, TheUploadRouteHasTheCoresBodyLimit) {
  FakeDispatcher core;
  DispatcherHandler handler(core);
  EXPECT_EQ(handler.BodyLimit("PUT", "/v1/jobs/7/workspace"), kMaxWorkspaceTarBytes);
  EXPECT_EQ(handler.BodyLimit("GET", "/v1/jobs/7/workspace"), std::nullopt);
  EXPECT_EQ(handler.BodyLimit("POST", "/v1/jobs"), std::nullopt);
  EXPECT_EQ(handler.BodyLimit("PUT", "/v1/nothing"), std::nullopt);
}

TEST(DispatcherHandlerTest, DispatchRunsOnTheThreadItIsPostedTo) {
  FakeDispatcher core;
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::function<void()>> tasks;
  bool stop = false;
  std::thread loop([&] {
    std::unique_lock lock(mutex);
    while (true) {
      cv.wait(lock, [&] { return stop || !tasks.empty(); });
      if (tasks.empty()) return;
      auto task = std::move(tasks.front());
      tasks.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  });
  DispatcherHandler handler(core, [&](std::function<void()> task) {
    std::lock_guard lock(mutex);
    tasks.push_back(std::move(task));
    cv.notify_one();
  });
  EXPECT_EQ(handler.Handle(kClient, {"GET", "/v1/status", "", ""}).status, 200);
  EXPECT_EQ(core.thread, loop.get_id());
  {
    std::lock_guard lock(mutex);
    stop = true;
    cv.notify_one();
  }
  loop.join();
}

// The server's thread is not held: HandleAsync returns once the request is
// posted, and the reply comes through `done` when the loop has run it; the
// session's record is posted first, so it runs first.
TEST(DispatcherHandlerTest, HandleAsyncAnswersWhenThePostedTaskRuns) {
  FakeDispatcher core;
  std::deque<std::function<void()>> tasks;
  DispatcherHandler handler(core,
                            [&](std::function<void()> task) { tasks.push_back(std::move(task)); });
  handler.SessionOpened(kClient, "127.0.0.1");
  std::optional<ApiReply> reply;
  handler.HandleAsync(kClient, {"GET", "/v1/status", "", ""},
                      [&](ApiReply answered) { reply = std::move(answered); });
  EXPECT_FALSE(reply);
  EXPECT_TRUE(core.names.empty());
  ASSERT_EQ(tasks.size(), 2u);
  for (auto& task : tasks) task();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(core.names, (std::vector<std::string>{"session cert:4f00aa 127.0.0.1", "status"}));
  // A request the decoder refuses is answered at once, never posted.
  std::optional<ApiReply> refused;
  handler.HandleAsync(kClient, {"GET", "/v1/nothing", "", ""},
                      [&](ApiReply answered) { refused = std::move(answered); });
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 404);
  EXPECT_EQ(tasks.size(), 2u);
}

TEST(ParseQueryTest, DecodesPercentEscapesAndRefusesBadOnes) {
  auto query = ParseQuery("type=job.state&job=a%2Fb&x=1+2&flag");
  ASSERT_TRUE(query) << query.error().ToString();
  EXPECT_EQ(query->at("job"), "a/b");
  EXPECT_EQ(query->at("x"), "1 2");
  EXPECT_EQ(query->at("flag"), "");
  auto bad = ParseQuery("job=%zz");
  ASSERT_FALSE(bad);
  EXPECT_THAT(bad.error().message(), HasSubstr("query.job"));
}

}  // namespace
}  // namespace ralph::ralphd::api
