// The shared agent memory's job sockets (docs/memory.md): for each running
// job whose policy grants memory access (<memory access=".."/>), a unix
// socket in a directory of its own, which ralphd binds into the job's
// sandbox at kMemorySocketDir. The protocol is services/memory/protocol.h.
//
// ralphd knows which job's socket a connection came in on, so that is the
// agent identity of every write ("job:<id>"): a job cannot write as another.
// Every put (stored, found, or refused) is a "memory.put" audit row with the
// job as subject.
//
// It runs on a thread of its own with its own connection to the store and
// to the audit log: a job's memory traffic never waits for the daemon's
// event loop, nor the loop for a memory write's fsync. AddJob and RemoveJob
// are called from the daemon's thread.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "platform/log.h"
#include "platform/result.h"
#include "platform/unique_fd.h"
#include "services/audit/audit_log.h"
#include "services/memory/protocol.h"
#include "services/memory/store.h"

namespace ralph::ralphd {

// Where the socket is inside a job's sandbox, and the variable that says so.
inline constexpr std::string_view kMemorySocketDir = "/run/ralph-memory";
inline constexpr std::string_view kMemorySocketName = "memory.sock";
inline constexpr std::string_view kMemorySocketEnv = "RALPH_MEMORY_SOCKET";

struct MemoryServerOptions {
  std::string store_path;  // <state dir>/memory.db
  // One directory per job below it, made here; what a dead daemon left in
  // it is removed at Create.
  std::string socket_dir;
  uid_t job_uid = 0;  // the jobs' root on the host (IdMapping::host_base): owns each socket
  size_t max_connections_per_job = 16;
  // A client that does not read its replies is disconnected past this.
  size_t max_pending_bytes = 16u << 20;
  memory::MemoryStoreOptions store;
  std::function<void(LogLevel level, const std::string& message)> log;
};

class MemoryServer {
 public:
  // `audit`: used by the server's thread only (an AuditLog of its own).
  static Result<std::unique_ptr<MemoryServer>> Create(
      MemoryServerOptions options, std::unique_ptr<audit::AuditSinkInterface> audit);
  // Stops the thread, closes every socket and removes their directories.
  ~MemoryServer();
  MemoryServer(const MemoryServer&) = delete;
  MemoryServer& operator=(const MemoryServer&) = delete;

  // Makes job `job`'s socket; returns the host directory holding it (to be
  // bound at kMemorySocketDir). A socket the job had already is replaced.
  Result<std::string> AddJob(uint64_t job, memory::Access access);
  // Closes the job's socket and its connections and removes its directory;
  // nothing for a job without one.
  void RemoveJob(uint64_t job);

 private:
  struct Listener;
  struct Connection;
  MemoryServer(MemoryServerOptions options, std::unique_ptr<memory::MemoryStore> store,
               std::unique_ptr<audit::AuditSinkInterface> audit, UniqueFd epoll, UniqueFd wake);
  void Loop();
  void Accept(uint64_t token);
  void OnConnection(uint64_t token, uint32_t events);
  void Flush(uint64_t token, Connection& connection);
  void CloseConnection(uint64_t token);
  void CloseJobLocked(uint64_t job);
  void Audit(uint64_t job, const memory::Served& served);
  void Log(LogLevel level, const std::string& message) const;

  MemoryServerOptions options_;
  std::unique_ptr<memory::MemoryStore> store_;
  std::unique_ptr<audit::AuditSinkInterface> audit_;
  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd: stop

  // Everything below is under mutex_: the daemon's thread adds and removes
  // jobs while the server's thread serves them. epoll events carry a token,
  // never an fd, so an event of a closed socket finds nothing.
  std::mutex mutex_;
  uint64_t next_token_ = 1;
  std::map<uint64_t, std::unique_ptr<Listener>> listeners_;      // by token
  std::map<uint64_t, std::unique_ptr<Connection>> connections_;  // by token
  std::map<uint64_t, uint64_t> job_listener_;                    // job -> listener token
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ralph::ralphd
