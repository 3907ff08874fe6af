#include "services/ralphd/memory_server.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

namespace ralph::ralphd {
namespace {

using nlohmann::json;

// Token 0 is the wake eventfd.
constexpr uint64_t kWakeToken = 0;

std::string DumpLine(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace

struct MemoryServer::Listener {
  UniqueFd fd;
  uint64_t job = 0;
  memory::Access access = memory::Access::kRead;
  std::string dir;
  size_t connections = 0;
};

struct MemoryServer::Connection {
  UniqueFd fd;
  uint64_t job = 0;
  uint64_t listener = 0;  // its listener's token
  memory::Access access = memory::Access::kRead;
  std::string in;
  std::string out;
  bool close_after_flush = false;
};

MemoryServer::MemoryServer(MemoryServerOptions options, std::unique_ptr<memory::MemoryStore> store,
                           std::unique_ptr<audit::AuditSinkInterface> audit, UniqueFd epoll,
                           UniqueFd wake)
    : options_(std::move(options)),
      store_(std::move(store)),
      audit_(std::move(audit)),
      epoll_(std::move(epoll)),
      wake_(std::move(wake)) {}

Result<std::unique_ptr<MemoryServer>> MemoryServer::Create(
    MemoryServerOptions options, std::unique_ptr<audit::AuditSinkInterface> audit) {
  // Sockets of a daemon that died: their jobs died with it.
  std::error_code ec;
  std::filesystem::remove_all(options.socket_dir, ec);
  if (ec) {
    return Error::FromErrno(fmt::format("removing {}", options.socket_dir), ec.value());
  }
  // The jobs' root passes through (never lists) it to mount its own directory.
  if (::mkdir(options.socket_dir.c_str(), 0711) != 0) {
    return Error::FromErrno(fmt::format("mkdir {}", options.socket_dir), errno);
  }
  std::unique_ptr<memory::MemoryStore> store =
      TRY(memory::MemoryStore::Open(options.store_path, options.store));
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return Error::FromErrno("epoll_create1", errno);
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Error::FromErrno("eventfd", errno);
  epoll_event event{.events = EPOLLIN, .data = {.u64 = kWakeToken}};
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &event) != 0) {
    return Error::FromErrno("epoll_ctl", errno);
  }
  std::unique_ptr<MemoryServer> server(new MemoryServer(
      std::move(options), std::move(store), std::move(audit), std::move(epoll), std::move(wake)));
  server->thread_ = std::thread([raw = server.get()] { raw->Loop(); });
  return server;
}

MemoryServer::~MemoryServer() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t written = ::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mutex_);
  while (!job_listener_.empty()) CloseJobLocked(job_listener_.begin()->first);
}

void MemoryServer::Log(LogLevel level, const std::string& message) const {
  if (options_.log) options_.log(level, message);
}

Result<std::string> MemoryServer::AddJob(uint64_t job, memory::Access access) {
  std::string dir = fmt::format("{}/{}", options_.socket_dir, job);
  std::string path = dir + "/" + std::string(kMemorySocketName);
  sockaddr_un address{.sun_family = AF_UNIX, .sun_path = {}};
  if (path.size() >= sizeof address.sun_path) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("memory socket path {} is too long", path));
  }
  path.copy(address.sun_path, path.size());
  std::lock_guard lock(mutex_);
  CloseJobLocked(job);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (::mkdir(dir.c_str(), 0711) != 0) return Error::FromErrno(fmt::format("mkdir {}", dir), errno);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::FromErrno("socket", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return Error::FromErrno(fmt::format("bind {}", path), errno);
  }
  // Only this job's sandbox sees the directory; its root owns the socket.
  if (::chmod(path.c_str(), 0600) != 0 ||
      ::lchown(path.c_str(), options_.job_uid, options_.job_uid) != 0) {
    return Error::FromErrno(fmt::format("chown {}", path), errno);
  }
  if (::listen(fd.get(), 16) != 0) return Error::FromErrno(fmt::format("listen {}", path), errno);
  uint64_t token = next_token_++;
  epoll_event event{.events = EPOLLIN, .data = {.u64 = token}};
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &event) != 0) {
    return Error::FromErrno("epoll_ctl", errno);
  }
  auto listener = std::make_unique<Listener>();
  listener->fd = std::move(fd);
  listener->job = job;
  listener->access = access;
  listener->dir = dir;
  listeners_[token] = std::move(listener);
  job_listener_[job] = token;
  return dir;
}

void MemoryServer::RemoveJob(uint64_t job) {
  std::lock_guard lock(mutex_);
  CloseJobLocked(job);
}

void MemoryServer::CloseJobLocked(uint64_t job) {
  auto it = job_listener_.find(job);
  if (it == job_listener_.end()) return;
  uint64_t token = it->second;
  job_listener_.erase(it);
  auto listener = listeners_.find(token);
  if (listener == listeners_.end()) return;
  std::string dir = listener->second->dir;
  listeners_.erase(listener);  // closing the fd takes it out of epoll
  for (auto c = connections_.begin(); c != connections_.end();) {
    c = c->second->listener == token ? connections_.erase(c) : std::next(c);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (ec) Log(LogLevel::kError, fmt::format("removing {}: {}", dir, ec.message()));
}

void MemoryServer::Loop() {
  epoll_event events[32];
  while (true) {
    int n = ::epoll_wait(epoll_.get(), events, 32, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Log(LogLevel::kError, fmt::format("memory server: epoll_wait: {}", std::strerror(errno)));
      return;
    }
    std::lock_guard lock(mutex_);
    if (stop_) return;
    for (int i = 0; i < n; ++i) {
      uint64_t token = events[i].data.u64;
      if (token == kWakeToken) continue;
      if (listeners_.count(token)) {
        Accept(token);
      } else if (connections_.count(token)) {
        OnConnection(token, events[i].events);
      }
    }
  }
}

void MemoryServer::Accept(uint64_t token) {
  Listener& listener = *listeners_.at(token);
  while (true) {
    UniqueFd fd(::accept4(listener.fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) return;
    if (listener.connections >= options_.max_connections_per_job) {
      std::string line = DumpLine(memory::ErrorReply(
          Error::Make(ErrorCode::kBusy, fmt::format("more than {} connections to the memory socket",
                                                    options_.max_connections_per_job))));
      [[maybe_unused]] ssize_t sent = ::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL);
      continue;
    }
    uint64_t connection_token = next_token_++;
    epoll_event event{.events = EPOLLIN | EPOLLRDHUP, .data = {.u64 = connection_token}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &event) != 0) continue;
    auto connection = std::make_unique<Connection>();
    connection->fd = std::move(fd);
    connection->job = listener.job;
    connection->listener = token;
    connection->access = listener.access;
    connections_[connection_token] = std::move(connection);
    ++listener.connections;
  }
}

void MemoryServer::CloseConnection(uint64_t token) {
  auto it = connections_.find(token);
  if (it == connections_.end()) return;
  auto listener = listeners_.find(it->second->listener);
  if (listener != listeners_.end()) --listener->second->connections;
  connections_.erase(it);
}

void MemoryServer::OnConnection(uint64_t token, uint32_t events) {
  Connection& connection = *connections_.at(token);
  if (events & EPOLLERR) {
    CloseConnection(token);
    return;
  }
  if (events & EPOLLOUT) {
    Flush(token, connection);
    if (!connections_.count(token)) return;
  }
  bool eof = false;
  char buffer[65536];
  // Backpressure: no more requests are read while replies wait.
  while (connection.out.empty() && !connection.close_after_flush) {
    ssize_t n = ::read(connection.fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      eof = true;
      break;
    }
    connection.in.append(buffer, static_cast<size_t>(n));
    size_t newline;
    while ((newline = connection.in.find('\n')) != std::string::npos) {
      std::string line = connection.in.substr(0, newline);
      connection.in.erase(0, newline + 1);
      memory::Served served =
          memory::Serve(*store_, fmt::format("job:{}", connection.job), connection.access, line);
      if (served.op == "put") Audit(connection.job, served);
      connection.out += DumpLine(served.reply);
    }
    if (connection.in.size() > memory::kMaxRequestBytes) {
      connection.out += DumpLine(memory::ErrorReply(
          Error::Make(ErrorCode::kInvalidArgument,
                      fmt::format("request: longer than {} bytes", memory::kMaxRequestBytes))));
      connection.in.clear();
      connection.close_after_flush = true;
    }
  }
  if (eof) connection.close_after_flush = true;
  Flush(token, connection);
}

void MemoryServer::Flush(uint64_t token, Connection& connection) {
  while (!connection.out.empty()) {
    ssize_t n =
        ::send(connection.fd.get(), connection.out.data(), connection.out.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n < 0) {
      CloseConnection(token);
      return;
    }
    connection.out.erase(0, static_cast<size_t>(n));
  }
  if (connection.out.size() > options_.max_pending_bytes ||
      (connection.out.empty() && connection.close_after_flush)) {
    CloseConnection(token);
    return;
  }
  uint32_t want = connection.out.empty() ? uint32_t{EPOLLIN | EPOLLRDHUP} : uint32_t{EPOLLOUT};
  epoll_event event{.events = want, .data = {.u64 = token}};
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, connection.fd.get(), &event);
}

void MemoryServer::Audit(uint64_t job, const memory::Served& served) {
  json details = {{"agent", fmt::format("job:{}", job)}};
  if (served.put) {
    details["key"] = served.put->entry.key;
    details["hash"] = served.put->entry.hash;
    details["created"] = served.put->created;
    details["bytes"] = served.put->entry.value.size();
    details["result"] = "ok";
  } else if (served.error) {
    details["result"] = std::string(ErrorCodeName(served.error->code()));
    details["error"] = served.error->message();
  }
  Result<audit::AuditRecord> record = audit_->Append({.actor = "ralphd",
                                                      .type = "memory.put",
                                                      .subject = fmt::format("job {}", job),
                                                      .details = std::move(details)});
  if (!record) Log(LogLevel::kError, fmt::format("audit: {}", record.error().ToString()));
}

}  // namespace ralph::ralphd
