// The memory socket's protocol (docs/memory.md "From inside a job"): what a
// job speaks on the unix socket ralphd mounts into its sandbox. One JSON
// object per line each way; a connection carries any number of requests,
// answered in order.
//
//   {"op": "put", "key": K, "value": <any JSON>}
//   {"op": "get", "hash": H}
//   {"op": "query", "prefix": P, "after": N, "limit": N}     (prefix "" = all)
//   {"op": "history", "key": K, "after": N, "limit": N}
//   {"op": "list", "agent": A, "after": N, "limit": N}      (agent: default the job's own)
//
//   {"ok": true, "entry": {...}, "created": true|false}     (put)
//   {"ok": true, "entry": {...}}                            (get)
//   {"ok": true, "entries": [...], "next_after": N}         (next_after only when more follow)
//   {"ok": false, "error": {"code": "invalid-argument", "message": "key: must not be empty"}}
//
// Strict: a member the op does not take, a wrong type or a value out of
// range is an error naming it ("request.limit: 5000 is out of range
// 1..1000"); the connection stays open. The agent of a put is never in the
// request: it is who the socket belongs to (ralphd's "job:<id>").
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "platform/result.h"
#include "services/memory/store.h"

namespace ralph::memory {

// A request line, newline excluded: a put's value is at most kMaxValueBytes
// canonical, and escapes may make its text up to 6x longer.
inline constexpr size_t kMaxRequestBytes = 6 * kMaxValueBytes + 4096;

// What a job's policy grants (docs/policy.md <memory>).
enum class Access {
  kRead,       // get, query, history, list
  kReadWrite,  // and put
};
std::string_view AccessName(Access access);  // "read", "read-write"

enum class Op { kPut, kGet, kQuery, kHistory, kList };

struct SocketRequest {
  Op op = Op::kGet;
  std::string key;                   // put, history
  nlohmann::json value;              // put
  std::string hash;                  // get
  std::string prefix;                // query
  std::optional<std::string> agent;  // list
  PageRequest page;                  // query, history, list
};

// kInvalidArgument naming the member ("request.op: 'del' is not one of put,
// get, query, history, list").
Result<SocketRequest> DecodeSocketRequest(std::string_view line);

struct Served {
  nlohmann::json reply;          // the reply object
  std::optional<PutResult> put;  // a put that succeeded (stored or found)
  std::optional<Error> error;    // why the request failed
  std::string op;                // its op, "" when the line did not decode
};

// One request line from the job whose agent identity is `agent`, carried
// out on `store` under `access`.
Served Serve(MemoryStore& store, std::string_view agent, Access access, std::string_view line);

// {"ok": false, "error": {"code": .., "message": ..}}
nlohmann::json ErrorReply(const Error& error);

}  // namespace ralph::memory
