#include "services/ralphd/api/dispatcher_handler.h"

#include <condition_variable>
#include <mutex>
#include <optional>

#include <fmt/format.h>

#include "platform/hex.h"

namespace ralph::ralphd::api {
namespace {

Result<std::string> PercentDecode(std::string_view text, std::string_view what) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%') {
      int high = i + 1 < text.size() ? HexDigitValue(text[i + 1]) : -1;
      int low = i + 2 < text.size() ? HexDigitValue(text[i + 2]) : -1;
      if (high < 0 || low < 0) {
        return Error::Make(ErrorCode::kInvalidArgument,
                           fmt::format("{}: bad percent-escape at offset {}", what, i));
      }
      out += static_cast<char>(high << 4 | low);
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

}  // namespace

Result<std::map<std::string, std::string, std::less<>>> ParseQuery(std::string_view query) {
  std::map<std::string, std::string, std::less<>> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string key = TRY(PercentDecode(pair.substr(0, eq), "query"));
    std::string value = eq == std::string_view::npos
                            ? std::string()
                            : TRY(PercentDecode(pair.substr(eq + 1), fmt::format("query.{}", key)));
    if (!out.emplace(key, std::move(value)).second) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("query.{}: given more than once", key));
    }
  }
  return out;
}

std::optional<size_t> DispatcherHandler::BodyLimit(std::string_view method, std::string_view path) {
  const ralphd::RouteInfo* route = FindRoute(method, path);
  if (!route || route->body != BodyKind::kTar) return std::nullopt;
  return route->max_body_bytes;
}

void DispatcherHandler::SessionOpened(const Caller& caller, std::string_view remote) {
  auto open = [&dispatcher = dispatcher_,
               core_caller = ralphd::Caller::ClientCertificate(caller.client_id),
               peer = std::string(remote)] { dispatcher.SessionOpened(core_caller, peer); };
  if (post_) {
    post_(std::move(open));
  } else {
    open();
  }
}

namespace {

ApiReply ErrorReply(const Error& error) {
  ApiReply reply = ReplyForError(error);
  reply.body = DumpJson(ErrorJson(error));
  return reply;
}

ApiReply ToApiReply(Reply reply) {
  if (reply.error) {
    // The core's error body as it is: a bad policy's carries its "issues".
    ApiReply refused = ErrorReply(*reply.error);
    if (reply.body.is_object() && reply.body.contains("error")) refused.body = DumpJson(reply.body);
    return refused;
  }
  switch (reply.kind) {
    case ReplyKind::kJson: return {200, DumpJson(reply.body)};
    case ReplyKind::kTar: return {200, std::move(reply.bytes), "application/x-tar"};
    case ReplyKind::kJsonLines: return {200, std::move(reply.bytes), "application/jsonl"};
  }
  return {500, ErrorBody("internal", "the core returned an unknown reply kind")};
}

}  // namespace

ApiReply DispatcherHandler::Handle(const Caller& caller, const ApiRequest& request) {
  std::mutex mutex;
  std::condition_variable done_cv;
  std::optional<ApiReply> out;
  HandleAsync(caller, request, [&](ApiReply reply) {
    std::lock_guard lock(mutex);
    out = std::move(reply);
    done_cv.notify_one();
  });
  std::unique_lock lock(mutex);
  done_cv.wait(lock, [&] { return out.has_value(); });
  return std::move(*out);
}

void DispatcherHandler::HandleAsync(const Caller& caller, ApiRequest request, Done done) {
  auto query = ParseQuery(request.query);
  if (!query) return done(ErrorReply(query.error()));
  Request core_request{.verb = std::move(request.method),
                       .path = std::move(request.path),
                       .query = std::move(*query),
                       .body = std::move(request.body)};
  auto command = DecodeRequest(core_request);
  if (!command) {
    // An unknown route is a 404, a known route with another verb a 405.
    if (command.error().code() == ErrorCode::kUnsupported) {
      return done({405, DumpJson(ErrorJson(command.error()))});
    }
    return done(ErrorReply(command.error()));
  }
  auto dispatch = [&dispatcher = dispatcher_,
                   core_caller = ralphd::Caller::ClientCertificate(caller.client_id),
                   command = std::move(*command), done = std::move(done)] {
    done(ToApiReply(dispatcher.Dispatch(core_caller, command)));
    dispatcher.AfterReply();
  };
  if (post_) {
    post_(std::move(dispatch));
  } else {
    dispatch();
  }
}

}  // namespace ralph::ralphd::api
