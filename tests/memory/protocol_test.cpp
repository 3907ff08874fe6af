// The memory socket's protocol against a real store: each op, the agent
// taken from the socket and never from the request, read-only access
// refusing put, and malformed requests refused naming the member.
#include "services/memory/protocol.h"

#include <gtest/gtest.h>

#include "tests/support/temp_dir.h"

namespace ralph::memory {
namespace {

using nlohmann::json;

class ProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto opened = MemoryStore::Open(dir_ / "memory.db");
    ASSERT_TRUE(opened) << opened.error().ToString();
    store_ = std::move(*opened);
  }
  Served Call(std::string_view line, Access access = Access::kReadWrite,
              std::string_view agent = "job:5") {
    return Serve(*store_, agent, access, line);
  }
  std::string Error(std::string_view line, Access access = Access::kReadWrite) {
    Served served = Call(line, access);
    EXPECT_EQ(served.reply["ok"], false) << served.reply.dump();
    EXPECT_TRUE(served.error);
    return served.reply["error"].value("message", "");
  }

  ralph::testing::TempDir dir_{"memory-protocol"};
  std::unique_ptr<MemoryStore> store_;
};

TEST_F(ProtocolTest, PutGetQueryHistoryAndListAnswerAsDocumented) {
  Served put = Call(R"({"op":"put","key":"notes/a","value":{"b":1,"a":[true]}})");
  ASSERT_EQ(put.reply["ok"], true) << put.reply.dump();
  EXPECT_EQ(put.reply["created"], true);
  EXPECT_EQ(put.op, "put");
  ASSERT_TRUE(put.put);
  const json& entry = put.reply["entry"];
  EXPECT_EQ(entry["agent"], "job:5");
  EXPECT_EQ(entry["key"], "notes/a");
  EXPECT_EQ(entry["value"], json::parse(R"({"a":[true],"b":1})"));
  std::string hash = entry["hash"];
  EXPECT_EQ(hash, *EntryHash("job:5", "notes/a", R"({"a":[true],"b":1})"));

  Served again = Call(R"({"value":{"a":[true],"b":1},"key":"notes/a","op":"put"})");
  EXPECT_EQ(again.reply["created"], false);
  EXPECT_EQ(again.reply["entry"]["hash"], hash);

  Served get = Call(json({{"op", "get"}, {"hash", hash}}).dump());
  EXPECT_EQ(get.reply["entry"]["hash"], hash);
  EXPECT_FALSE(get.put);

  Call(R"({"op":"put","key":"notes/a","value":2})", Access::kReadWrite, "job:6");
  Call(R"({"op":"put","key":"other","value":3})");
  Served query = Call(R"({"op":"query","prefix":"notes/"})");
  EXPECT_EQ(query.reply["entries"].size(), 2u);
  EXPECT_FALSE(query.reply.contains("next_after"));
  Served paged = Call(R"({"op":"query","limit":1})");
  EXPECT_EQ(paged.reply["entries"].size(), 1u);
  EXPECT_EQ(paged.reply["next_after"], 1);
  Served history = Call(R"({"op":"history","key":"notes/a"})");
  ASSERT_EQ(history.reply["entries"].size(), 2u);
  EXPECT_EQ(history.reply["entries"][1]["agent"], "job:6");
  // list: the socket's own agent unless another is named.
  Served own = Call(R"({"op":"list"})");
  EXPECT_EQ(own.reply["entries"].size(), 2u);
  Served other = Call(R"({"op":"list","agent":"job:6"})");
  ASSERT_EQ(other.reply["entries"].size(), 1u);
  EXPECT_EQ(other.reply["entries"][0]["value"], 2);
}

TEST_F(ProtocolTest, ReadAccessReadsButCannotWrite) {
  Call(R"({"op":"put","key":"k","value":1})");
  EXPECT_EQ(Error(R"({"op":"put","key":"k","value":2})", Access::kRead),
            "request.op: put needs read-write memory access; this job's policy grants read");
  EXPECT_EQ(Call(R"({"op":"history","key":"k"})", Access::kRead).reply["entries"].size(), 1u);
}

TEST_F(ProtocolTest, MalformedRequestsAreRefusedNamingTheMember) {
  EXPECT_EQ(Error("not json"), "request: not JSON");
  EXPECT_EQ(Error("[1]"), "request: expected a JSON object, got array");
  EXPECT_EQ(Error(R"({"key":"k"})"), "request.op: required");
  EXPECT_EQ(Error(R"({"op":"del"})"),
            "request.op: 'del' is not one of put, get, query, history, list");
  EXPECT_EQ(Error(R"({"op":"put","key":"k"})"), "request.value: required");
  EXPECT_EQ(Error(R"({"op":"put","key":"k","value":1,"agent":"job:1"})"),
            "request.agent: unknown member for op put");
  EXPECT_EQ(Error(R"({"op":"put","key":"","value":1})"), "request.key: must not be empty");
  EXPECT_EQ(Error(R"({"op":"put","key":7,"value":1})"),
            "request.key: expected a string, got number");
  EXPECT_EQ(Error(R"({"op":"get","hash":"xyz"})"),
            "request.hash: 'xyz' is not a SHA-256 (64 lower-case hex digits)");
  EXPECT_EQ(Error(R"({"op":"query","limit":5000})"), "request.limit: 5000 is out of range 1..1000");
  EXPECT_EQ(Error(R"({"op":"query","limit":-1})"), "request.limit: -1 is out of range 1..1000");
  EXPECT_EQ(Error(R"({"op":"query","after":"3"})"),
            "request.after: expected an unsigned integer, got \"3\"");
  EXPECT_EQ(Error(R"({"op":"list","agent":"Root"})"),
            "request.agent: 'Root' is not made of [a-z0-9:._-]");
  std::string big = json({{"op", "put"}, {"key", "k"}, {"value", std::string(70000, 'x')}}).dump();
  EXPECT_EQ(Error(big),
            "request.value: 70002 bytes (canonical JSON) is longer than the limit of 65536");
  EXPECT_EQ(store_->GetUsage()->entries, 0u);
}

}  // namespace
}  // namespace ralph::memory
