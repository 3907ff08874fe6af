// The bridge from the HTTPS server to ralphd's core: a request the server
// does not serve itself becomes a ralphd::Request, is decoded strictly by
// the core's DecodeRequest and dispatched with the paired client as the
// Caller; the core's Reply becomes the HTTP reply. The same decoder serves
// the local socket, so both transports accept exactly the same requests
// with exactly the same errors.
//
//   DispatcherHandler handler(daemon, [&](auto task) { local_server.Post(std::move(task)); });
//   ApiServer::Start(options, {.identity = ..., .registry = ..., .handler = handler});
#pragma once

#include <functional>

#include "services/ralphd/api/server.h"
#include "services/ralphd/commands.h"

namespace ralph::ralphd::api {

// "a=1&b=x%20y" as the core's query map, percent-decoded; kInvalidArgument
// naming the parameter for a duplicate or a bad escape.
Result<std::map<std::string, std::string, std::less<>>> ParseQuery(std::string_view query);

class DispatcherHandler final : public RequestHandlerInterface {
 public:
  // Runs `task` on the thread the dispatcher belongs to (the daemon's event
  // loop), later. Empty: Dispatch is called on the server's thread.
  using Post = std::function<void(std::function<void()> task)>;

  // `dispatcher` is borrowed and must outlive the server.
  explicit DispatcherHandler(DispatcherInterface& dispatcher, Post post = {})
      : dispatcher_(dispatcher), post_(std::move(post)) {}

  // Decodes on the calling thread, dispatches through `post` (Handle
  // waits for the answer, HandleAsync does not).
  ApiReply Handle(const Caller& caller, const ApiRequest& request) override;
  void HandleAsync(const Caller& caller, ApiRequest request, Done done) override;
  // The core route's own limit (CoreRoutes: a workspace upload's is the
  // core's upload maximum), else the server's.
  std::optional<size_t> BodyLimit(std::string_view method, std::string_view path) override;
  // The dispatcher's SessionOpened, posted without waiting: it runs on the
  // loop before the session's first request does.
  void SessionOpened(const Caller& caller, std::string_view remote) override;

 private:
  DispatcherInterface& dispatcher_;
  Post post_;
};

}  // namespace ralph::ralphd::api
