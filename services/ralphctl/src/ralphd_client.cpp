#include "ralphd_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

namespace ralph::ralphctl {

Error ReplyError(const nlohmann::json& reply) {
  ErrorCode code = ErrorCode::kInternal;
  std::string message = "ralphd failed without saying why";
  if (reply.contains("error") && reply["error"].is_object()) {
    const nlohmann::json& error = reply["error"];
    if (error.contains("message") && error["message"].is_string()) {
      message = error["message"].get<std::string>();
    }
    if (error.contains("code") && error["code"].is_string()) {
      for (uint16_t n = 1; n <= 64; ++n) {
        if (ErrorCodeName(static_cast<ErrorCode>(n)) == error["code"].get<std::string>()) {
          code = static_cast<ErrorCode>(n);
        }
      }
    }
    if (error.contains("issues") && error["issues"].is_array()) message = "see the issues below";
  }
  return Error::Make(code, message);
}

Result<RalphdClient> RalphdClient::Connect(const std::string& socket_path) {
  sockaddr_un address{.sun_family = AF_UNIX, .sun_path = {}};
  if (socket_path.size() >= sizeof address.sun_path) {
    return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{}: path too long", socket_path));
  }
  socket_path.copy(address.sun_path, socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::FromErrno("socket", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return Error::FromErrno(fmt::format("connecting to ralphd at {} (is it running?)", socket_path),
                            errno);
  }
  return RalphdClient(std::move(fd));
}

Result<std::optional<std::string>> RalphdClient::ReadLine() {
  while (true) {
    size_t newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return std::optional<std::string>(std::move(line));
    }
    char chunk[65536];
    ssize_t n = ::read(fd_.get(), chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("reading from ralphd", errno);
    if (n == 0) return std::optional<std::string>();
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

Result<std::optional<nlohmann::json>> RalphdClient::Next() {
  std::optional<std::string> line = TRY(ReadLine());
  if (!line) return std::optional<nlohmann::json>();
  nlohmann::json frame = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
  if (frame.is_discarded() || !frame.is_object()) {
    return Error::Make(ErrorCode::kCorrupt, "ralphd sent a frame that is not a JSON object");
  }
  return std::optional<nlohmann::json>(std::move(frame));
}

Result<void> RalphdClient::Send(const nlohmann::json& frame) {
  std::string line = frame.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  size_t sent = 0;
  while (sent < line.size()) {
    ssize_t n = ::send(fd_.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("writing to ralphd", errno);
    sent += static_cast<size_t>(n);
  }
  return {};
}

Result<nlohmann::json> RalphdClient::Call(const nlohmann::json& frame) {
  if (Result<void> sent = Send(frame); !sent) {
    // The daemon may have refused the connection with a frame saying why
    // (SO_PEERCRED, too many connections) and closed it.
    Result<std::optional<nlohmann::json>> refusal = Next();
    if (refusal && *refusal) return std::move(**refusal);
    return std::move(sent).error();
  }
  std::optional<nlohmann::json> reply = TRY(Next());
  if (!reply) return Error::Make(ErrorCode::kNetwork, "ralphd closed the connection");
  return std::move(*reply);
}

}  // namespace ralph::ralphctl
