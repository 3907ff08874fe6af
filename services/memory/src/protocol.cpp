#include "services/memory/protocol.h"

#include <fmt/format.h>

namespace ralph::memory {
namespace {

using nlohmann::json;

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

Result<std::string> StringMember(const json& request, std::string_view name) {
  auto it = request.find(name);
  if (it == request.end()) return Invalid(fmt::format("request.{}: required", name));
  if (!it->is_string()) {
    return Invalid(fmt::format("request.{}: expected a string, got {}", name, it->type_name()));
  }
  return it->get<std::string>();
}

Result<std::optional<uint64_t>> UnsignedMember(const json& request, std::string_view name,
                                               uint64_t min, uint64_t max) {
  auto it = request.find(name);
  if (it == request.end()) return std::optional<uint64_t>();
  if (!it->is_number_integer()) {
    return Invalid(
        fmt::format("request.{}: expected an unsigned integer, got {}", name, it->dump()));
  }
  if (it->is_number_unsigned()) {
    uint64_t n = it->get<uint64_t>();
    if (n >= min && n <= max) return std::optional<uint64_t>(n);
  }
  return Invalid(fmt::format("request.{}: {} is out of range {}..{}", name, it->dump(), min, max));
}

Result<PageRequest> PageMembers(const json& request) {
  PageRequest page;
  if (auto after = TRY(UnsignedMember(request, "after", 0, INT64_MAX))) page.after = *after;
  if (auto limit = TRY(UnsignedMember(request, "limit", 1, kMaxPageLimit))) page.limit = *limit;
  return page;
}

json EntriesReply(const Page& page) {
  json entries = json::array();
  for (const Entry& entry : page.entries) entries.push_back(entry.ToJson());
  json reply = {{"ok", true}, {"entries", entries}};
  if (page.next_after) reply["next_after"] = *page.next_after;
  return reply;
}

std::string_view OpName(Op op) {
  switch (op) {
    case Op::kPut: return "put";
    case Op::kGet: return "get";
    case Op::kQuery: return "query";
    case Op::kHistory: return "history";
    case Op::kList: return "list";
  }
  return "?";
}

}  // namespace

std::string_view AccessName(Access access) {
  return access == Access::kRead ? "read" : "read-write";
}

json ErrorReply(const Error& error) {
  return {{"ok", false},
          {"error",
           {{"code", std::string(ErrorCodeName(error.code()))}, {"message", error.message()}}}};
}

Result<SocketRequest> DecodeSocketRequest(std::string_view line) {
  if (line.size() > kMaxRequestBytes) {
    return Invalid(fmt::format("request: {} bytes is longer than the limit of {}", line.size(),
                               kMaxRequestBytes));
  }
  json request = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) return Invalid("request: not JSON");
  if (!request.is_object()) {
    return Invalid(fmt::format("request: expected a JSON object, got {}", request.type_name()));
  }
  std::string op = TRY(StringMember(request, "op"));
  SocketRequest out;
  std::vector<std::string_view> members;
  if (op == "put") {
    out.op = Op::kPut;
    members = {"op", "key", "value"};
    out.key = TRY(StringMember(request, "key"));
    auto value = request.find("value");
    if (value == request.end()) return Invalid("request.value: required");
    out.value = *value;
  } else if (op == "get") {
    out.op = Op::kGet;
    members = {"op", "hash"};
    out.hash = TRY(StringMember(request, "hash"));
  } else if (op == "query") {
    out.op = Op::kQuery;
    members = {"op", "prefix", "after", "limit"};
    if (request.contains("prefix")) out.prefix = TRY(StringMember(request, "prefix"));
    out.page = TRY(PageMembers(request));
  } else if (op == "history") {
    out.op = Op::kHistory;
    members = {"op", "key", "after", "limit"};
    out.key = TRY(StringMember(request, "key"));
    out.page = TRY(PageMembers(request));
  } else if (op == "list") {
    out.op = Op::kList;
    members = {"op", "agent", "after", "limit"};
    if (request.contains("agent")) out.agent = TRY(StringMember(request, "agent"));
    out.page = TRY(PageMembers(request));
  } else {
    return Invalid(
        fmt::format("request.op: '{}' is not one of put, get, query, history, list", op));
  }
  for (const auto& [name, value] : request.items()) {
    if (std::find(members.begin(), members.end(), name) == members.end()) {
      return Invalid(fmt::format("request.{}: unknown member for op {}", name, op));
    }
  }
  return out;
}

Served Serve(MemoryStore& store, std::string_view agent, Access access, std::string_view line) {
  Served served;
  auto fail = [&](Error error) {
    served.reply = ErrorReply(error);
    served.error = std::move(error);
    return std::move(served);
  };
  Result<SocketRequest> request = DecodeSocketRequest(line);
  if (!request) return fail(request.error());
  served.op = OpName(request->op);
  switch (request->op) {
    case Op::kPut: {
      if (access != Access::kReadWrite) {
        return fail(Error::Make(ErrorCode::kPermissionDenied,
                                "request.op: put needs read-write memory access; this job's "
                                "policy grants read"));
      }
      // Checked here first so that an error names the request's member.
      if (Result<void> ok = CheckKey(request->key, "request.key"); !ok) return fail(ok.error());
      if (Result<std::string> ok = CanonicalValue(request->value, "request.value"); !ok) {
        return fail(ok.error());
      }
      Result<PutResult> put = store.Put(agent, request->key, request->value);
      if (!put) return fail(put.error());
      served.reply = {{"ok", true}, {"entry", put->entry.ToJson()}, {"created", put->created}};
      served.put = std::move(*put);
      return served;
    }
    case Op::kGet: {
      if (Result<void> ok = CheckHash(request->hash, "request.hash"); !ok) return fail(ok.error());
      Result<Entry> entry = store.Get(request->hash);
      if (!entry) return fail(entry.error());
      served.reply = {{"ok", true}, {"entry", entry->ToJson()}};
      return served;
    }
    case Op::kQuery:
    case Op::kHistory:
    case Op::kList: {
      Result<void> ok =
          request->op == Op::kQuery ? CheckPrefix(request->prefix, "request.prefix")
          : request->op == Op::kHistory
              ? CheckKey(request->key, "request.key")
              : CheckAgent(request->agent.value_or(std::string(agent)), "request.agent");
      if (!ok) return fail(ok.error());
      Result<Page> page =
          request->op == Op::kQuery ? store.Query(request->prefix, request->page)
          : request->op == Op::kHistory
              ? store.History(request->key, request->page)
              : store.ByAgent(request->agent.value_or(std::string(agent)), request->page);
      if (!page) return fail(page.error());
      served.reply = EntriesReply(*page);
      return served;
    }
  }
  return fail(Error::Make(ErrorCode::kInternal, "unhandled op"));
}

}  // namespace ralph::memory
