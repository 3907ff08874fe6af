// A client of ralphd's local socket (services/ralphd/local_socket.h):
// one JSON frame per line each way. Private to ralphctl.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "platform/result.h"
#include "platform/unique_fd.h"

namespace ralph::ralphctl {

inline constexpr std::string_view kDefaultRalphdSocket = "/run/ralphd.sock";

class RalphdClient {
 public:
  // kNotFound / kNetwork naming the socket when ralphd does not answer.
  static Result<RalphdClient> Connect(const std::string& socket_path);

  // Sends one request; the reply frame ({"ok": ...}). A reply with
  // "ok": false becomes an Error carrying the daemon's code and message.
  Result<nlohmann::json> Call(const nlohmann::json& frame);
  // The next frame of a following request; nullopt when the daemon closed.
  Result<std::optional<nlohmann::json>> Next();
  // Sends one frame without waiting for a reply (an attached terminal's).
  Result<void> Send(const nlohmann::json& frame);
  // For poll(): readable when Next has more, unless a whole frame is
  // already buffered (has_buffered_frame).
  int fd() const { return fd_.get(); }
  bool has_buffered_frame() const { return buffer_.find('\n') != std::string::npos; }

 private:
  explicit RalphdClient(UniqueFd fd) : fd_(std::move(fd)) {}
  Result<std::optional<std::string>> ReadLine();

  UniqueFd fd_;
  std::string buffer_;
};

// The frame's "error" as an Error (its code by name, its message).
Error ReplyError(const nlohmann::json& reply);

}  // namespace ralph::ralphctl
