// ralphd's typed command set: what every transport (the local unix socket,
// the HTTPS API) hands to the core, and what the core hands back.
//
//   Request request{.verb = "POST", .path = "/v1/jobs", .body = R"({"argv":["make"]})"};
//   Result<Command> command = DecodeRequest(request);   // strict: see below
//   if (!command) -> ErrorReply(command.error())         // names the field
//   Reply reply = dispatcher.Dispatch(caller, *command);
//   reply.ToJson() / reply.bytes                         // back to the transport
//
// A transport maps its wire format onto Request (verb, path, query, body) and
// a Reply back onto its wire format; it never interprets a command itself,
// so both transports accept exactly the same requests with exactly the same
// errors. The core never sees HTTP: "verb" and "path" are names, not a
// protocol (the local socket sends them in a JSON frame).
//
// Decoding is strict. A body must be a JSON object with only the fields the
// command names; every field is checked for its type and range; the first
// violation is an Error with code kInvalidArgument whose message starts with
// the field ("body.limits.memory_bytes: expected an unsigned integer, got
// string"; "query.limit: 5000 is out of range 1..1000"; "body.colour: unknown
// field"). Malformed JSON reports line and column. An unknown path is
// kNotFound, a known path with another verb kUnsupported.
//
// Routes (v1):
//   GET    /v1/status                        StatusCommand
//   POST   /v1/jobs                          JobSubmitCommand
//   GET    /v1/jobs[?state=S&limit=N]        JobListCommand
//   GET    /v1/jobs/{id}                     JobShowCommand
//   POST   /v1/jobs/{id}/start               JobStartCommand
//   POST   /v1/jobs/{id}/cancel              JobCancelCommand
//   GET    /v1/jobs/{id}/logs[?stream=stdout|stderr&offset=N&limit=N]
//                                            JobLogsCommand
//   GET    /v1/jobs/{id}/files               JobFilesCommand
//   GET    /v1/jobs/{id}/iterations          JobIterationsCommand
//   GET    /v1/jobs/{id}/diff?iteration=N[&from=M&limit=B]
//                                            JobDiffCommand
//   POST   /v1/jobs/{id}/rollback            JobRollbackCommand ({"iteration": N})
//   POST   /v1/jobs/{id}/pause               JobPauseCommand
//   POST   /v1/jobs/{id}/resume              JobResumeCommand
//   GET    /v1/jobs/{id}/terminal            TerminalAttachCommand (a streaming
//                                            transport attaches: the local
//                                            socket's "attach", the API's
//                                            WebSocket; Dispatch refuses it)
//   PUT    /v1/jobs/{id}/workspace           WorkspaceUploadCommand (body: a tar)
//   GET    /v1/jobs/{id}/workspace[?format=tar|list]
//                                            WorkspaceDownloadCommand
//   GET    /v1/policy[?version=N]            PolicyGetCommand
//   PUT    /v1/policy                        PolicySetCommand
//   POST   /v1/policy/validate               PolicyValidateCommand
//   GET    /v1/policy/history[?limit=N]      PolicyHistoryCommand
//   POST   /v1/policy/rollback               PolicyRollbackCommand
//   GET    /v1/audit[?after=SEQ&limit=N&job=ID&type=T&since=TIME&until=TIME]
//                                            AuditListCommand
//   GET    /v1/audit/verify[?anchor=SEQ:HASH] AuditVerifyCommand
//   GET    /v1/audit/export[?after=SEQ&job=ID&type=T&since=TIME&until=TIME]
//                                            AuditExportCommand (JSON lines)
//   (TIME: the audit log's UTC time, 2026-11-22T16:40:01.123Z or without
//   the milliseconds; since is inclusive, until exclusive and after since)
//   GET    /v1/events[?after=SEQ&job=ID&limit=N]
//                                            EventsCommand
//   POST   /v1/memory                        MemoryPutCommand
//   GET    /v1/memory/entry?hash=H           MemoryGetCommand
//   GET    /v1/memory/query[?prefix=P&after=SEQ&limit=N]
//                                            MemoryQueryCommand
//   GET    /v1/memory/history?key=K[&after=SEQ&limit=N]
//                                            MemoryHistoryCommand
//   GET    /v1/memory/agent?agent=A[&after=SEQ&limit=N]
//                                            MemoryListCommand
//   POST   /v1/pairing/offers                PairCommand
//   GET    /v1/pairings                      PairingsListCommand
//   POST   /v1/pairings/revoke               PairingRevokeCommand
//   GET    /v1/agent-image                   AgentImageStatusCommand
//   POST   /v1/agent-image/install           AgentImageInstallCommand
//   POST   /v1/agent-image/rollback          AgentImageRollbackCommand
//   POST   /v1/recovery/reboot               RecoveryRebootCommand
//   GET    /v1/creds                         CredsListCommand
//   POST   /v1/creds/revoke                  CredsRevokeCommand
//   POST   /v1/creds/login                   CredsLoginCommand (a login job on a
//                                            pty: attach to its terminal)
//
// CoreRoutes() is this list as data (each query parameter and body field
// with its type and bounds). The decoder takes every bound from it and
// reads no name it lacks (one that is not there fails the route's every
// request as kInternal; a decoder route without a table entry does not
// compile), and services/ralphd/api/openapi.json is tested against it
// (tests/ralphd_api/openapi_test.cpp): a route changed here and not there
// fails a test.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "platform/error.h"
#include "platform/result.h"

namespace ralph::ralphd {

// --- Requests ---

struct Request {
  std::string verb;  // "GET", "POST", "PUT"
  std::string path;  // "/v1/jobs/17/logs" (no query string)
  std::map<std::string, std::string, std::less<>> query;
  // JSON text for most commands; the raw tar for a workspace upload; may be
  // empty for commands without a body.
  std::string body;
};

// Bounds every decoder enforces.
inline constexpr size_t kMaxArgs = 256;
inline constexpr size_t kMaxArgBytes = 4096;
inline constexpr size_t kMaxEnv = 256;
inline constexpr size_t kMaxEnvValueBytes = 32 * 1024;
inline constexpr size_t kMaxJsonBodyBytes = 1 << 20;
inline constexpr size_t kMaxPolicyDocumentBytes = 256 * 1024;
inline constexpr size_t kMaxWorkspaceTarBytes = 256u << 20;
inline constexpr uint64_t kMaxLogReadBytes = 1 << 20;
inline constexpr uint64_t kDefaultLogReadBytes = 64 * 1024;
// A loop iteration's diff in one reply (JobDiffCommand).
inline constexpr uint64_t kMaxDiffBytes = 1 << 20;
inline constexpr uint64_t kDefaultDiffBytes = 256 * 1024;
inline constexpr uint64_t kMaxListLimit = 1000;
// A terminal's columns and rows (the sandbox's kMaxTerminalDimension).
inline constexpr uint64_t kMaxTerminalDimension = 10000;

enum class JobState {
  kCreated,    // submitted with start=false: waiting for a workspace upload and a start
  kQueued,     // waiting for a free slot (the concurrency limit)
  kRunning,    // its sandbox is running
  kSucceeded,  // exited with status 0
  kFailed,     // exited non-zero, was killed by a signal, or could not start
  kTimedOut,   // killed by its timeout
  kCancelled,  // cancelled before or while running
  kLost,       // ralphd restarted and could not re-adopt it (the reason is recorded)
};
inline constexpr JobState kAllJobStates[] = {
    JobState::kCreated, JobState::kQueued,   JobState::kRunning,   JobState::kSucceeded,
    JobState::kFailed,  JobState::kTimedOut, JobState::kCancelled, JobState::kLost,
};
std::string_view JobStateName(JobState state);  // "queued"
std::optional<JobState> ParseJobState(std::string_view name);
// Succeeded, failed, timed out, cancelled, lost: nothing will change it again.
bool IsFinal(JobState state);

enum class OutputStream { kStdout, kStderr };
std::string_view OutputStreamName(OutputStream stream);

// How a job is walled off (docs/policy.md "Isolation"): the namespace
// sandbox on the host's kernel, or a VM of its own with the namespace
// sandbox inside it (sandbox/vm). More isolated is greater.
enum class Isolation { kNamespaces, kVm };
std::string_view IsolationName(Isolation isolation);  // "namespaces", "vm"
std::optional<Isolation> ParseIsolation(std::string_view text);

// Limits a job asks for; each absent one is the policy's. A value above the
// policy's is refused with the limit named (policy.h).
struct LimitsRequest {
  std::optional<uint64_t> memory_bytes;
  std::optional<uint32_t> cpu_millis;
  std::optional<uint32_t> pids;
  std::optional<uint64_t> disk_bytes;
  std::optional<uint64_t> timeout_ms;
};

struct StatusCommand {
  static constexpr std::string_view kName = "status";
};

// An agent job (docs/agent-profiles.md): ralphd makes the command line,
// environment and home settings from the agent profile, and parses the
// tool's stdout into agent events. `profile` is one of "claude", "codex",
// "opencode" (exactly one of prompt, prompt_file) or "command" (the job's
// argv is the command; no prompt).
inline constexpr size_t kMaxAgentPromptBytes = 100 * 1024;
struct AgentRequest {
  std::string profile;
  std::optional<std::string> prompt;
  // Relative to the workspace, without "..": read from the uploaded
  // workspace when the job starts.
  std::optional<std::string> prompt_file;
  std::optional<std::string> model;
  std::optional<uint32_t> max_turns;
};

// Loop mode (docs/ralphd.md "Loop mode"): the agent runs again and again on
// the same prompt in the same workspace until the first stop condition.
inline constexpr uint64_t kDefaultLoopIterations = 100;
struct LoopRequest {
  uint64_t max_iterations = kDefaultLoopIterations;
  std::optional<std::string> promise;    // an exact string in the agent's text
  std::optional<std::string> stop_file;  // relative to the workspace, no ".."
  std::optional<uint64_t> max_wall_ms;   // since the first iteration started
  std::optional<uint64_t> max_tokens;    // input + output tokens, all iterations
  std::optional<uint64_t> max_cost_microusd;
  std::optional<uint64_t> stall_iterations;  // this many in a row changing nothing
};

// A workspace cloned from a git repository before the job's command runs
// (docs/ralphd.md "Cloned workspaces"). The clone runs inside the job's
// sandbox, through the job's own network, so the URL's host must be a
// name the job's profile allows by domain (checked at submit: policy.h
// CheckWorkspaceGit).
inline constexpr size_t kMaxGitUrlBytes = 2048;
inline constexpr size_t kMaxGitRefBytes = 255;
struct WorkspaceGitRequest {
  std::string url;                 // http:// or https://, a host name, no credentials
  std::optional<std::string> ref;  // a branch or tag; the remote's HEAD when absent
};

// A clone URL taken apart: what the egress check needs.
struct GitUrl {
  bool https = true;
  std::string host;  // lower case, a DNS name (never an address)
  uint16_t port = 443;
};
// kInvalidArgument naming `field` and what is wrong: another scheme (ssh,
// file, a local path), credentials in the URL, an address instead of a
// name, a bad port, no path, whitespace or control characters.
Result<GitUrl> ParseGitUrl(std::string_view url, std::string_view field = "body.workspace_git.url");

struct JobSubmitCommand {
  static constexpr std::string_view kName = "job.submit";
  // 1..kMaxArgs, argv[0] non-empty; empty for an agent job of an agent
  // profile (the profile makes it).
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // NAME -> value
  std::optional<std::string> cwd;          // absolute; the policy's workspace when absent
  // The policy profile it runs under. Absent: "agent" for a job of an
  // agent profile other than command when the active policy has one, else
  // "default".
  std::optional<std::string> profile;
  LimitsRequest limits;
  // At least this isolation (never less than its profile's); absent: the
  // profile's.
  std::optional<Isolation> isolation;
  // false: the job waits in kCreated for a workspace upload and a start.
  bool start = true;
  // true: one pty for the job's stdin, stdout and stderr (all output is
  // stdout), which clients attach to (TerminalAttachCommand); columns and
  // rows (only with tty, 1..kMaxTerminalDimension) are its initial window
  // size, 80x24 when absent.
  bool tty = false;
  std::optional<uint16_t> columns;
  std::optional<uint16_t> rows;
  std::optional<AgentRequest> agent;
  std::optional<LoopRequest> loop;  // only with agent
  // The workspace comes from this clone (then no upload: start stays true,
  // and an agent's prompt is given, not read from a file of the workspace).
  std::optional<WorkspaceGitRequest> workspace_git;
};

struct JobListCommand {
  static constexpr std::string_view kName = "job.list";
  std::optional<JobState> state;
  uint64_t limit = 100;  // newest first, 1..kMaxListLimit
};

struct JobShowCommand {
  static constexpr std::string_view kName = "job.show";
  uint64_t id = 0;
};
struct JobStartCommand {
  static constexpr std::string_view kName = "job.start";
  uint64_t id = 0;
};
struct JobCancelCommand {
  static constexpr std::string_view kName = "job.cancel";
  uint64_t id = 0;
};

struct JobLogsCommand {
  static constexpr std::string_view kName = "job.logs";
  uint64_t id = 0;
  OutputStream stream = OutputStream::kStdout;
  uint64_t offset = 0;  // a byte offset into everything the stream ever wrote
  uint64_t limit = kDefaultLogReadBytes;
};

struct JobFilesCommand {
  static constexpr std::string_view kName = "job.files";
  uint64_t id = 0;
};

// Loop mode between iterations: pause lets the running iteration finish
// and starts no next one until resume (the job stays running); cancel of
// a paused loop ends it at once.
struct JobPauseCommand {
  static constexpr std::string_view kName = "job.pause";
  uint64_t id = 0;
};
struct JobResumeCommand {
  static constexpr std::string_view kName = "job.resume";
  uint64_t id = 0;
};

// A loop job's iterations, in order (store.h IterationRecord).
struct JobIterationsCommand {
  static constexpr std::string_view kName = "job.iterations";
  uint64_t id = 0;
};

// A loop iteration's change: the diff of its commit against `from`'s
// commit, or against its parent (what the workspace was when it started:
// the previous iteration's commit or a rollback's; the empty tree for the
// first) when absent. At most `limit` bytes of it (docs/ralphd.md "Diff
// and rollback").
struct JobDiffCommand {
  static constexpr std::string_view kName = "job.diff";
  uint64_t id = 0;
  uint64_t iteration = 0;
  std::optional<uint64_t> from;
  uint64_t limit = kDefaultDiffBytes;
};

// The loop job's workspace restored to `iteration`'s commit, while the loop
// is paused between iterations or after the job ended.
struct JobRollbackCommand {
  static constexpr std::string_view kName = "job.rollback";
  uint64_t id = 0;
  uint64_t iteration = 0;
};

// Attaching to a tty job's terminal: only a streaming transport can carry
// it (Daemon::AttachTerminal); Dispatch answers kInvalidArgument.
struct TerminalAttachCommand {
  static constexpr std::string_view kName = "job.terminal";
  uint64_t id = 0;
};

struct WorkspaceUploadCommand {
  static constexpr std::string_view kName = "workspace.upload";
  uint64_t id = 0;
  std::string tar;  // a tar archive, extracted into the job's workspace
};

enum class WorkspaceFormat { kTar, kList };
struct WorkspaceDownloadCommand {
  static constexpr std::string_view kName = "workspace.download";
  uint64_t id = 0;
  WorkspaceFormat format = WorkspaceFormat::kTar;
};

struct PolicyGetCommand {
  static constexpr std::string_view kName = "policy.get";
  std::optional<uint64_t> version;  // the active one when absent
};
struct PolicySetCommand {
  static constexpr std::string_view kName = "policy.set";
  std::string document;  // the XML policy document (docs/policy.md)
  std::string comment;   // recorded in the history
};
struct PolicyValidateCommand {
  static constexpr std::string_view kName = "policy.validate";
  std::string document;
};
struct PolicyHistoryCommand {
  static constexpr std::string_view kName = "policy.history";
  uint64_t limit = 50;
};
struct PolicyRollbackCommand {
  static constexpr std::string_view kName = "policy.rollback";
  uint64_t version = 0;
};

struct AuditListCommand {
  static constexpr std::string_view kName = "audit.list";
  uint64_t after = 0;  // rows with seq > after
  uint64_t limit = 100;
  std::optional<uint64_t> job;
  std::optional<std::string> type;
  // Rows with since <= time < until, in the stored format (with milliseconds).
  std::optional<std::string> since;
  std::optional<std::string> until;
};
struct AuditVerifyCommand {
  static constexpr std::string_view kName = "audit.verify";
  std::optional<std::string> anchor;  // "SEQ:HASH" (services/audit chain.h)
};
struct AuditExportCommand {
  static constexpr std::string_view kName = "audit.export";
  uint64_t after = 0;
  std::optional<uint64_t> job;
  std::optional<std::string> type;
  std::optional<std::string> since;  // as in AuditListCommand
  std::optional<std::string> until;
};

// Events (job output, job state, audit) with seq > after that are still
// retained (events.h). A streaming transport repeats it with the last seq it
// sent.
struct EventsCommand {
  static constexpr std::string_view kName = "events";
  uint64_t after = 0;
  std::optional<uint64_t> job;
  uint64_t limit = 1000;
};

// The shared agent memory (docs/memory.md): the same store jobs reach
// through their memory socket. A put's agent is the caller ("uid:0",
// "cert:<id>"); a job's is "job:<id>". Pages: entries with seq > after, in
// write order, at most limit (1..1000); the reply's next_after, when
// present, is the next page's after.
struct MemoryPutCommand {
  static constexpr std::string_view kName = "memory.put";
  std::string key;
  nlohmann::json value;  // any JSON value (canonical form at most 64 KiB)
};
struct MemoryGetCommand {
  static constexpr std::string_view kName = "memory.get";
  std::string hash;
};
struct MemoryQueryCommand {
  static constexpr std::string_view kName = "memory.query";
  std::string prefix;  // "" for every key; bytewise, no wildcards
  uint64_t after = 0;
  uint64_t limit = 100;
};
struct MemoryHistoryCommand {
  static constexpr std::string_view kName = "memory.history";
  std::string key;
  uint64_t after = 0;
  uint64_t limit = 100;
};
struct MemoryListCommand {
  static constexpr std::string_view kName = "memory.list";
  std::string agent;
  uint64_t after = 0;
  uint64_t limit = 100;
};

// The HTTPS API's pairings (docs/api.md "Pairing"): local callers only, so
// a paired client can neither pair others nor revoke anyone.
struct PairCommand {
  static constexpr std::string_view kName = "pair";  // a one-time pairing offer
};
struct PairingsListCommand {
  static constexpr std::string_view kName = "pairings.list";
};
struct PairingRevokeCommand {
  static constexpr std::string_view kName = "pairings.revoke";
  std::string id;  // the client id (its certificate serial, hex)
};

// The agent image on VAR (docs/agents.md "On the appliance"): the installed
// current and previous images; installing a signed agent-image bundle that
// is a file on the appliance; rolling back to the previous image.
struct AgentImageStatusCommand {
  static constexpr std::string_view kName = "agent-image.status";
};
struct AgentImageInstallCommand {
  static constexpr std::string_view kName = "agent-image.install";
  std::string path;  // absolute, on the appliance
};
struct AgentImageRollbackCommand {
  static constexpr std::string_view kName = "agent-image.rollback";
};
// The operator's break-glass (docs/ralphd.md "Recovery reboot"): RECOVERY
// armed for the next boot only (BootNext) and the machine rebooted into it.
inline constexpr size_t kMaxRecoveryReasonBytes = 1024;
struct RecoveryRebootCommand {
  static constexpr std::string_view kName = "recovery.reboot";
  std::string reason;  // recorded in the audit log; may be empty
};
// The agents' credentials (docs/credentials.md): the accounts stored, a
// revocation, and a login (the tool's own flow in a sandbox, on a pty the
// caller attaches to as a job's terminal).
struct CredsListCommand {
  static constexpr std::string_view kName = "creds.list";
};
struct CredsRevokeCommand {
  static constexpr std::string_view kName = "creds.revoke";
  std::string profile;  // claude, codex, opencode
  std::string scope;    // agent, tenant, global
  std::string name;     // empty: "default" (the global account)
};
struct CredsLoginCommand {
  static constexpr std::string_view kName = "creds.login";
  std::string profile;
  std::string scope = "global";
  std::string name;  // empty: "default" (the global account)
  // The policy profile whose limits and mounts the login's sandbox gets
  // (its egress is replaced by the tool's login hosts).
  std::string policy_profile = "default";
  std::optional<uint16_t> columns;
  std::optional<uint16_t> rows;
};

using Command =
    std::variant<StatusCommand, JobSubmitCommand, JobListCommand, JobShowCommand, JobStartCommand,
                 JobCancelCommand, JobLogsCommand, JobFilesCommand, WorkspaceUploadCommand,
                 WorkspaceDownloadCommand, PolicyGetCommand, PolicySetCommand,
                 PolicyValidateCommand, PolicyHistoryCommand, PolicyRollbackCommand,
                 AuditListCommand, AuditVerifyCommand, AuditExportCommand, EventsCommand,
                 PairCommand, PairingsListCommand, PairingRevokeCommand, TerminalAttachCommand,
                 JobIterationsCommand, JobPauseCommand, JobResumeCommand, JobDiffCommand,
                 JobRollbackCommand, MemoryPutCommand, MemoryGetCommand, MemoryQueryCommand,
                 MemoryHistoryCommand, MemoryListCommand, AgentImageStatusCommand,
                 AgentImageInstallCommand, AgentImageRollbackCommand, CredsListCommand,
                 CredsRevokeCommand, CredsLoginCommand, RecoveryRebootCommand>;

// The command's name for the audit log and logs (its kName: "job.submit").
std::string_view CommandName(const Command& command);

// Whether the command only reads (status, job list/show/logs/files,
// workspace download, policy get/history/validate, audit list/verify/export,
// events, pairings list, memory get/query/history/list, agent-image
// status). Its success is not an audit record: the connection's one session
// record ("api.session", "local.session") says who read. A command that
// changes something, and every refusal or failure, is a record of its own
// (docs/ralphd.md, "Audit and events").
bool IsReadOnly(const Command& command);

// Decodes a request strictly (see the top of this file).
Result<Command> DecodeRequest(const Request& request);

// Parses JSON text without exceptions; kInvalidArgument "<what>: malformed
// JSON at line L, column C: <reason>" when it is not JSON.
Result<nlohmann::json> ParseJson(std::string_view text, std::string_view what);

// nlohmann::json::dump that never aborts (-fno-exceptions): invalid UTF-8
// in strings is replaced with U+FFFD.
std::string DumpJson(const nlohmann::json& value, int indent = -1);

// Base64 (RFC 4648, with padding) for bytes inside JSON: job output,
// archives on the local socket.
std::string Base64Encode(std::string_view bytes);
// kInvalidArgument naming `what` when `text` is not base64.
Result<std::string> Base64Decode(std::string_view text, std::string_view what);

// --- The route table ---

enum class ValueType {
  kUnsigned,     // min..max (a query parameter: its decimal text)
  kString,       // at most max bytes; `pattern` (a regex) when it has one
  kEnum,         // one of `values`
  kBool,         // true or false
  kStringArray,  // min..max strings of at most `item_max` bytes
  kStringMap,  // at most max members, names matching `pattern`, values of at most `item_max` bytes
  kObject,     // `fields`
  kJson,       // any JSON value whose compact text is at most max bytes
};

struct FieldInfo {
  std::string_view name;
  ValueType type = ValueType::kString;
  bool required = false;
  uint64_t min = 0;
  uint64_t max = 0;
  uint64_t item_max = 0;
  std::string_view pattern;
  std::span<const std::string_view> values;
  std::span<const FieldInfo> fields;
};

enum class BodyKind { kNone, kJson, kTar };

struct RouteInfo {
  std::string_view verb;     // "GET"
  std::string_view path;     // "/v1/jobs/{id}/logs": {id} is a job id (1..2^63-1)
  std::string_view command;  // the command's kName
  std::span<const FieldInfo> query;
  BodyKind body = BodyKind::kNone;
  std::span<const FieldInfo> fields;  // kJson: the object's members
  size_t max_body_bytes = kMaxJsonBodyBytes;
};

// Every route the core decodes, in the order of the list above.
std::span<const RouteInfo> CoreRoutes();
// The route `verb` `path` ("/v1/jobs/7/logs") is, or null.
const RouteInfo* FindRoute(std::string_view verb, std::string_view path);

// --- Who asked ---

struct Caller {
  enum class Kind { kLocalUid, kClientCertificate };
  Kind kind = Kind::kLocalUid;
  uint32_t uid = 0;            // kLocalUid: from SO_PEERCRED
  std::string certificate_id;  // kClientCertificate: the paired client's id

  static Caller LocalUid(uint32_t uid) { return {.kind = Kind::kLocalUid, .uid = uid}; }
  static Caller ClientCertificate(std::string id) {
    return {.kind = Kind::kClientCertificate, .certificate_id = std::move(id)};
  }
  // "uid:0", "cert:<id>": the audit log's actor detail.
  std::string ToString() const;
};

// --- Replies ---

enum class ReplyKind {
  kJson,       // body
  kTar,        // bytes: a tar archive
  kJsonLines,  // bytes: one JSON object per line (audit export)
};

struct Reply {
  ReplyKind kind = ReplyKind::kJson;
  // Set when the command failed; body is then ErrorJson(*error).
  std::optional<Error> error;
  nlohmann::json body = nlohmann::json::object();
  std::string bytes;

  bool ok() const { return !error.has_value(); }
  static Reply Json(nlohmann::json body) { return {.body = std::move(body)}; }
  static Reply Bytes(ReplyKind kind, std::string bytes) {
    return {.kind = kind, .bytes = std::move(bytes)};
  }
  static Reply Failure(Error error);
};

// {"error": {"code": "invalid-argument", "message": "..."}}
nlohmann::json ErrorJson(const Error& error);

// The core's entry point, one per daemon. Transports call it from the
// daemon's event loop thread.
class DispatcherInterface {
 public:
  virtual ~DispatcherInterface() = default;
  virtual Reply Dispatch(const Caller& caller, const Command& command) = 0;
  // A transport's connection (an API TLS session, a local socket
  // connection) is serving its first request from `caller`; `peer` says
  // where it comes from (an address, "pid 812"). The session's record is
  // what traces its reads (IsReadOnly). A dispatcher that audits nothing
  // ignores it.
  virtual void SessionOpened(const Caller& caller, std::string_view peer) {
    (void)caller;
    (void)peer;
  }
  // What must wait until a reply is on its way (a reboot): a transport
  // calls it once it has handed Dispatch's reply to its connection.
  virtual void AfterReply() {}
};

}  // namespace ralph::ralphd
