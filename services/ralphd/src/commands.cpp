#include "services/ralphd/commands.h"

#include <algorithm>
#include <charconv>
#include <set>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "services/audit/audit_log.h"
#include "services/memory/store.h"

namespace ralph::ralphd {
namespace {

using nlohmann::json;

Error Invalid(std::string message) {
  return Error::Make(ErrorCode::kInvalidArgument, std::move(message));
}

// Captures the parser's own error (position and reason) without exceptions:
// the SAX interface hands the would-be exception object to parse_error.
struct ErrorCapture {
  std::string message;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(size_t) { return true; }
  bool key(json::string_t&) { return true; }
  bool end_object() { return true; }
  bool start_array(size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& ex) {
    message = ex.what();
    return false;
  }
};

std::string JsonErrorReason(std::string_view text) {
  ErrorCapture capture;
  json::sax_parse(text, &capture, json::input_format_t::json, /*strict=*/true,
                  /*ignore_comments=*/false);
  std::string message = capture.message;
  // "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
  if (size_t bracket = message.find("] ");
      message.rfind("[json.", 0) == 0 && bracket != message.npos) {
    message.erase(0, bracket + 2);
  }
  if (message.rfind("parse error at ", 0) == 0) message.erase(0, 15);
  return message.empty() ? "not JSON" : message;
}

std::string Describe(const json& value) {
  if (value.is_number_float()) return fmt::format("number {}", DumpJson(value));
  if (value.is_number_integer()) return fmt::format("integer {}", DumpJson(value));
  return value.type_name();
}

bool IsIdentifier(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

bool IsEnvName(std::string_view s) {
  if (s.empty() || s.size() > 256 || (s[0] >= '0' && s[0] <= '9')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// --- The route table (commands.h CoreRoutes) ---

constexpr std::string_view kIdentifierPattern = "^[a-z0-9._-]{1,64}$";
constexpr std::string_view kJobStateNames[] = {"created", "queued",    "running",   "succeeded",
                                               "failed",  "timed-out", "cancelled", "lost"};
constexpr std::string_view kStreamNames[] = {"stdout", "stderr"};
constexpr std::string_view kFormatNames[] = {"tar", "list"};
constexpr uint64_t kMaxSeq = INT64_MAX;

constexpr FieldInfo Unsigned(std::string_view name, uint64_t min, uint64_t max,
                             bool required = false) {
  return {.name = name, .type = ValueType::kUnsigned, .required = required, .min = min, .max = max};
}
constexpr FieldInfo Text(std::string_view name, uint64_t max_bytes, bool required = false,
                         std::string_view pattern = {}) {
  return {.name = name,
          .type = ValueType::kString,
          .required = required,
          .max = max_bytes,
          .pattern = pattern};
}
constexpr FieldInfo OneOf(std::string_view name, std::span<const std::string_view> values) {
  return {.name = name, .type = ValueType::kEnum, .values = values};
}

constexpr FieldInfo kLimitFields[] = {
    Unsigned("memory_bytes", 1, uint64_t{1} << 44),
    Unsigned("cpu_millis", 1, 1024 * 1000),
    Unsigned("pids", 1, 1u << 22),
    Unsigned("disk_bytes", 1, uint64_t{1} << 46),
    Unsigned("timeout_ms", 1, uint64_t{30} * 24 * 3600 * 1000),
};
constexpr std::string_view kIsolationNames[] = {"namespaces", "vm"};
constexpr std::string_view kAgentProfileNames[] = {"claude", "codex", "opencode", "command"};
constexpr FieldInfo kAgentFields[] = {
    {.name = "profile", .type = ValueType::kEnum, .required = true, .values = kAgentProfileNames},
    Text("prompt", kMaxAgentPromptBytes),
    Text("prompt_file", kMaxArgBytes),
    Text("model", 256),
    Unsigned("max_turns", 1, 10000),
};
constexpr uint64_t kMaxCounter = uint64_t{1} << 53;  // exact in every JSON reader
constexpr FieldInfo kLoopFields[] = {
    Unsigned("max_iterations", 1, 100000),
    Text("promise", 1024),
    Text("stop_file", kMaxArgBytes),
    Unsigned("max_wall_ms", 1, uint64_t{30} * 24 * 3600 * 1000),
    Unsigned("max_tokens", 1, kMaxCounter),
    Unsigned("max_cost_microusd", 1, kMaxCounter),
    Unsigned("stall_iterations", 1, 10000),
};
// A branch or tag name: what `git check-ref-format --branch` takes, less
// what a shell or git option could read differently (a leading '-').
constexpr std::string_view kGitRefPattern = "^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$";
constexpr FieldInfo kWorkspaceGitFields[] = {
    Text("url", kMaxGitUrlBytes, true, "^https?://"),
    Text("ref", kMaxGitRefBytes, false, kGitRefPattern),
};
constexpr FieldInfo kSubmitFields[] = {
    {.name = "argv",
     .type = ValueType::kStringArray,
     .min = 1,
     .max = kMaxArgs,
     .item_max = kMaxArgBytes},
    {.name = "env",
     .type = ValueType::kStringMap,
     .max = kMaxEnv,
     .item_max = kMaxEnvValueBytes,
     .pattern = "^[A-Za-z_][A-Za-z0-9_]{0,255}$"},
    Text("cwd", kMaxArgBytes),
    Text("profile", 64, false, kIdentifierPattern),
    {.name = "limits", .type = ValueType::kObject, .fields = kLimitFields},
    OneOf("isolation", kIsolationNames),
    {.name = "start", .type = ValueType::kBool},
    {.name = "tty", .type = ValueType::kBool},
    Unsigned("columns", 1, kMaxTerminalDimension),
    Unsigned("rows", 1, kMaxTerminalDimension),
    {.name = "agent", .type = ValueType::kObject, .fields = kAgentFields},
    {.name = "loop", .type = ValueType::kObject, .fields = kLoopFields},
    {.name = "workspace_git", .type = ValueType::kObject, .fields = kWorkspaceGitFields},
};
constexpr FieldInfo kJobListQuery[] = {OneOf("state", kJobStateNames),
                                       Unsigned("limit", 1, kMaxListLimit)};
constexpr FieldInfo kLogsQuery[] = {OneOf("stream", kStreamNames),
                                    Unsigned("offset", 0, UINT64_MAX),
                                    Unsigned("limit", 1, kMaxLogReadBytes)};
constexpr FieldInfo kDownloadQuery[] = {OneOf("format", kFormatNames)};
constexpr FieldInfo kPolicyGetQuery[] = {Unsigned("version", 1, kMaxSeq)};
constexpr FieldInfo kPolicySetFields[] = {Text("document", kMaxPolicyDocumentBytes, true),
                                          Text("comment", 1024)};
constexpr FieldInfo kPolicyValidateFields[] = {Text("document", kMaxPolicyDocumentBytes, true)};
constexpr FieldInfo kLimitQuery[] = {Unsigned("limit", 1, kMaxListLimit)};
constexpr FieldInfo kRollbackFields[] = {Unsigned("version", 1, kMaxSeq, true)};
// The audit log's stored UTC time (audit::ParseAuditTime), with or without
// the milliseconds.
constexpr std::string_view kAuditTimePattern =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{3})?Z$";
constexpr FieldInfo kAuditListQuery[] = {Unsigned("after", 0, kMaxSeq),
                                         Unsigned("job", 1, kMaxSeq),
                                         Text("type", 64, false, kIdentifierPattern),
                                         Text("since", 24, false, kAuditTimePattern),
                                         Text("until", 24, false, kAuditTimePattern),
                                         Unsigned("limit", 1, kMaxListLimit)};
// SEQ:HASH, parsed by the audit log (services/audit chain.h) when verifying.
constexpr FieldInfo kAuditVerifyQuery[] = {Text("anchor", 256)};
constexpr FieldInfo kAuditExportQuery[] = {
    Unsigned("after", 0, kMaxSeq), Unsigned("job", 1, kMaxSeq),
    Text("type", 64, false, kIdentifierPattern), Text("since", 24, false, kAuditTimePattern),
    Text("until", 24, false, kAuditTimePattern)};
constexpr FieldInfo kEventsQuery[] = {Unsigned("after", 0, kMaxSeq), Unsigned("job", 1, kMaxSeq),
                                      Unsigned("limit", 1, 10000)};
constexpr FieldInfo kRevokeFields[] = {Text("id", 64, true)};
constexpr std::string_view kLoginProfileNames[] = {"claude", "codex", "opencode"};
constexpr std::string_view kScopeNames[] = {"agent", "tenant", "global"};
constexpr FieldInfo kCredsRevokeFields[] = {
    {.name = "profile", .type = ValueType::kEnum, .required = true, .values = kLoginProfileNames},
    {.name = "scope", .type = ValueType::kEnum, .required = true, .values = kScopeNames},
    Text("name", 64, false, kIdentifierPattern),
};
constexpr FieldInfo kCredsLoginFields[] = {
    {.name = "profile", .type = ValueType::kEnum, .required = true, .values = kLoginProfileNames},
    OneOf("scope", kScopeNames),
    Text("name", 64, false, kIdentifierPattern),
    Text("policy_profile", 64, false, kIdentifierPattern),
    Unsigned("columns", 1, kMaxTerminalDimension),
    Unsigned("rows", 1, kMaxTerminalDimension),
};
constexpr FieldInfo kDiffQuery[] = {Unsigned("iteration", 1, kMaxCounter, true),
                                    Unsigned("from", 1, kMaxCounter),
                                    Unsigned("limit", 1, kMaxDiffBytes)};
constexpr FieldInfo kJobRollbackFields[] = {Unsigned("iteration", 1, kMaxCounter, true)};
constexpr FieldInfo kMemoryPutFields[] = {
    Text("key", memory::kMaxKeyBytes, true),
    {.name = "value", .type = ValueType::kJson, .required = true, .max = memory::kMaxValueBytes}};
constexpr std::string_view kHashPattern = "^[0-9a-f]{64}$";
constexpr FieldInfo kMemoryGetQuery[] = {Text("hash", 64, false, kHashPattern)};
constexpr FieldInfo kMemoryQueryQuery[] = {Text("prefix", memory::kMaxKeyBytes),
                                           Unsigned("after", 0, kMaxSeq),
                                           Unsigned("limit", 1, memory::kMaxPageLimit)};
constexpr FieldInfo kMemoryHistoryQuery[] = {Text("key", memory::kMaxKeyBytes),
                                             Unsigned("after", 0, kMaxSeq),
                                             Unsigned("limit", 1, memory::kMaxPageLimit)};
constexpr std::string_view kAgentPattern = "^[a-z0-9:._-]{1,64}$";
constexpr FieldInfo kMemoryListQuery[] = {
    Text("agent", memory::kMaxAgentBytes, false, kAgentPattern), Unsigned("after", 0, kMaxSeq),
    Unsigned("limit", 1, memory::kMaxPageLimit)};
constexpr FieldInfo kAgentImageInstallFields[] = {Text("path", kMaxArgBytes, true, "^/")};
constexpr FieldInfo kRecoveryRebootFields[] = {Text("reason", kMaxRecoveryReasonBytes)};

constexpr RouteInfo kRouteInfos[] = {
    {"GET", "/v1/status", StatusCommand::kName},
    {"POST", "/v1/jobs", JobSubmitCommand::kName, {}, BodyKind::kJson, kSubmitFields},
    {"GET", "/v1/jobs", JobListCommand::kName, kJobListQuery},
    {"GET", "/v1/jobs/{id}", JobShowCommand::kName},
    {"POST", "/v1/jobs/{id}/start", JobStartCommand::kName},
    {"POST", "/v1/jobs/{id}/cancel", JobCancelCommand::kName},
    {"GET", "/v1/jobs/{id}/logs", JobLogsCommand::kName, kLogsQuery},
    {"GET", "/v1/jobs/{id}/files", JobFilesCommand::kName},
    {"GET", "/v1/jobs/{id}/iterations", JobIterationsCommand::kName},
    {"POST", "/v1/jobs/{id}/pause", JobPauseCommand::kName},
    {"POST", "/v1/jobs/{id}/resume", JobResumeCommand::kName},
    {"GET", "/v1/jobs/{id}/diff", JobDiffCommand::kName, kDiffQuery},
    {"POST",
     "/v1/jobs/{id}/rollback",
     JobRollbackCommand::kName,
     {},
     BodyKind::kJson,
     kJobRollbackFields},
    {"GET", "/v1/jobs/{id}/terminal", TerminalAttachCommand::kName},
    {"PUT",
     "/v1/jobs/{id}/workspace",
     WorkspaceUploadCommand::kName,
     {},
     BodyKind::kTar,
     {},
     kMaxWorkspaceTarBytes},
    {"GET", "/v1/jobs/{id}/workspace", WorkspaceDownloadCommand::kName, kDownloadQuery},
    {"GET", "/v1/policy", PolicyGetCommand::kName, kPolicyGetQuery},
    {"PUT", "/v1/policy", PolicySetCommand::kName, {}, BodyKind::kJson, kPolicySetFields},
    {"POST",
     "/v1/policy/validate",
     PolicyValidateCommand::kName,
     {},
     BodyKind::kJson,
     kPolicyValidateFields},
    {"GET", "/v1/policy/history", PolicyHistoryCommand::kName, kLimitQuery},
    {"POST",
     "/v1/policy/rollback",
     PolicyRollbackCommand::kName,
     {},
     BodyKind::kJson,
     kRollbackFields},
    {"GET", "/v1/audit", AuditListCommand::kName, kAuditListQuery},
    {"GET", "/v1/audit/verify", AuditVerifyCommand::kName, kAuditVerifyQuery},
    {"GET", "/v1/audit/export", AuditExportCommand::kName, kAuditExportQuery},
    {"GET", "/v1/events", EventsCommand::kName, kEventsQuery},
    {"POST", "/v1/memory", MemoryPutCommand::kName, {}, BodyKind::kJson, kMemoryPutFields},
    {"GET", "/v1/memory/entry", MemoryGetCommand::kName, kMemoryGetQuery},
    {"GET", "/v1/memory/query", MemoryQueryCommand::kName, kMemoryQueryQuery},
    {"GET", "/v1/memory/history", MemoryHistoryCommand::kName, kMemoryHistoryQuery},
    {"GET", "/v1/memory/agent", MemoryListCommand::kName, kMemoryListQuery},
    {"POST", "/v1/pairing/offers", PairCommand::kName},
    {"GET", "/v1/pairings", PairingsListCommand::kName},
    {"POST",
     "/v1/pairings/revoke",
     PairingRevokeCommand::kName,
     {},
     BodyKind::kJson,
     kRevokeFields},
    {"GET", "/v1/agent-image", AgentImageStatusCommand::kName},
    {"POST",
     "/v1/agent-image/install",
     AgentImageInstallCommand::kName,
     {},
     BodyKind::kJson,
     kAgentImageInstallFields},
    {"POST", "/v1/agent-image/rollback", AgentImageRollbackCommand::kName},
    {"POST",
     "/v1/recovery/reboot",
     RecoveryRebootCommand::kName,
     {},
     BodyKind::kJson,
     kRecoveryRebootFields},
    {"GET", "/v1/creds", CredsListCommand::kName},
    {"POST",
     "/v1/creds/revoke",
     CredsRevokeCommand::kName,
     {},
     BodyKind::kJson,
     kCredsRevokeFields},
    {"POST", "/v1/creds/login", CredsLoginCommand::kName, {}, BodyKind::kJson, kCredsLoginFields},
};

const FieldInfo* FindField(std::span<const FieldInfo> fields, std::string_view name) {
  for (const FieldInfo& field : fields) {
    if (field.name == name) return &field;
  }
  return nullptr;
}

// A decoder that reads a name or bound the table does not have: the
// route's every request fails with this, so no test of it passes.
Error Drift(std::string_view field, std::string_view what) {
  return Error::Make(
      ErrorCode::kInternal,
      fmt::format("{}: the decoder and the route table (CoreRoutes) disagree: {}", field, what));
}

std::vector<std::string_view> Segments(std::string_view path);

// Reads the members of one JSON object, each once, by name; Finish() names
// the first member nobody asked for.
class ObjectReader {
 public:
  // A map (env): any member names, no table to check against.
  ObjectReader(const json& object, std::string prefix)
      : object_(object), prefix_(std::move(prefix)) {}
  // An object the route table describes with `fields`.
  ObjectReader(const json& object, std::string prefix, std::span<const FieldInfo> fields)
      : object_(object), prefix_(std::move(prefix)), fields_(fields), checked_(true) {}

  std::string Field(std::string_view name) const { return fmt::format("{}.{}", prefix_, name); }

  // The table's members of field `name` (an object's).
  std::span<const FieldInfo> Members(std::string_view name) const {
    const FieldInfo* field = FindField(fields_, name);
    return field ? field->fields : std::span<const FieldInfo>();
  }

  const json* Find(std::string_view name) {
    if (checked_ && !FindField(fields_, name) && !drift_) {
      drift_ = Drift(Field(name), "not in the table");
    }
    known_.emplace(name);
    auto it = object_.find(name);
    return it == object_.end() ? nullptr : &*it;
  }

  // The table's entry for member `name`, which must be of `type`.
  Result<const FieldInfo*> Info(std::string_view name, ValueType type) const {
    const FieldInfo* field = FindField(fields_, name);
    if (!field || field->type != type) return Drift(Field(name), "not in the table as read");
    return field;
  }

  // A string member, at most the table's bytes.
  Result<std::optional<std::string>> String(std::string_view name) {
    const FieldInfo* field = TRY(Info(name, ValueType::kString));
    return Text(name, field->max);
  }

  // A string member of a map (no table: env).
  Result<std::optional<std::string>> Text(std::string_view name, size_t max_bytes) {
    const json* value = Find(name);
    if (!value) return std::optional<std::string>();
    if (!value->is_string()) {
      return Invalid(fmt::format("{}: expected a string, got {}", Field(name), Describe(*value)));
    }
    const std::string& text = value->get_ref<const std::string&>();
    if (text.size() > max_bytes) {
      return Invalid(fmt::format("{}: {} bytes is longer than the limit of {}", Field(name),
                                 text.size(), max_bytes));
    }
    if (text.find('\0') != std::string::npos) {
      return Invalid(fmt::format("{}: contains a NUL character", Field(name)));
    }
    return std::optional<std::string>(text);
  }

  // An unsigned member in the table's range.
  Result<std::optional<uint64_t>> Unsigned(std::string_view name) {
    const FieldInfo* field = TRY(Info(name, ValueType::kUnsigned));
    const uint64_t min = field->min, max = field->max;
    const json* value = Find(name);
    if (!value) return std::optional<uint64_t>();
    if (value->is_number_unsigned()) {
      uint64_t n = value->get<uint64_t>();
      if (n < min || n > max) {
        return Invalid(fmt::format("{}: {} is out of range {}..{}", Field(name), n, min, max));
      }
      return std::optional<uint64_t>(n);
    }
    if (value->is_number_integer()) {
      return Invalid(fmt::format("{}: {} is out of range {}..{}", Field(name),
                                 value->get<int64_t>(), min, max));
    }
    return Invalid(
        fmt::format("{}: expected an unsigned integer, got {}", Field(name), Describe(*value)));
  }

  // A string member that is one of the table's values.
  Result<std::optional<std::string>> Enum(std::string_view name) {
    const FieldInfo* field = TRY(Info(name, ValueType::kEnum));
    const json* value = Find(name);
    if (!value) return std::optional<std::string>();
    if (!value->is_string()) {
      return Invalid(fmt::format("{}: expected a string, got {}", Field(name), Describe(*value)));
    }
    const std::string& text = value->get_ref<const std::string&>();
    for (std::string_view allowed : field->values) {
      if (allowed == text) return std::optional<std::string>(text);
    }
    std::string names;
    for (std::string_view allowed : field->values) {
      names += names.empty() ? "" : ", ";
      names += allowed;
    }
    return Invalid(fmt::format("{}: '{}' is not one of {}", Field(name), text, names));
  }

  // Any JSON value whose compact text is at most the table's bytes.
  Result<std::optional<json>> Json(std::string_view name) {
    const FieldInfo* field = TRY(Info(name, ValueType::kJson));
    const json* value = Find(name);
    if (!value) return std::optional<json>();
    size_t size = DumpJson(*value).size();
    if (size > field->max) {
      return Invalid(fmt::format("{}: {} bytes (canonical JSON) is longer than the limit of {}",
                                 Field(name), size, field->max));
    }
    return std::optional<json>(*value);
  }

  Result<std::optional<bool>> Bool(std::string_view name) {
    TRY(Info(name, ValueType::kBool));
    const json* value = Find(name);
    if (!value) return std::optional<bool>();
    if (!value->is_boolean()) {
      return Invalid(
          fmt::format("{}: expected true or false, got {}", Field(name), Describe(*value)));
    }
    return std::optional<bool>(value->get<bool>());
  }

  Result<void> Finish() const {
    if (drift_) return *drift_;
    for (const auto& [key, value] : object_.items()) {
      if (!known_.count(key)) return Invalid(fmt::format("{}: unknown field", Field(key)));
    }
    return {};
  }

 private:
  const json& object_;
  std::string prefix_;
  std::span<const FieldInfo> fields_;
  bool checked_ = false;
  std::optional<Error> drift_;
  std::set<std::string, std::less<>> known_;
};

// Reads the query parameters, each once, by name.
class QueryReader {
 public:
  explicit QueryReader(const Request& request) : query_(request.query) {
    const RouteInfo* route = FindRoute(request.verb, request.path);
    if (route) fields_ = route->query;
  }

  std::optional<std::string> Find(std::string_view name) {
    if (!FindField(fields_, name) && !drift_) {
      drift_ = Drift(fmt::format("query.{}", name), "not in the table");
    }
    known_.emplace(name);
    auto it = query_.find(name);
    if (it == query_.end()) return std::nullopt;
    return it->second;
  }

  // A decimal parameter in the table's range.
  Result<std::optional<uint64_t>> Unsigned(std::string_view name) {
    const FieldInfo* field = FindField(fields_, name);
    if (!field || field->type != ValueType::kUnsigned) {
      return Drift(fmt::format("query.{}", name), "not in the table as read");
    }
    const uint64_t min = field->min, max = field->max;
    std::optional<std::string> text = Find(name);
    if (!text) return std::optional<uint64_t>();
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), n);
    if (text->empty() || ec != std::errc() || end != text->data() + text->size()) {
      return Invalid(fmt::format("query.{}: expected an unsigned integer, got '{}'", name, *text));
    }
    if (n < min || n > max) {
      return Invalid(fmt::format("query.{}: {} is out of range {}..{}", name, n, min, max));
    }
    return std::optional<uint64_t>(n);
  }

  // A string parameter within the table's bytes (Finish checks the bound
  // too; this names it where it is read).
  Result<std::optional<std::string>> Text(std::string_view name) {
    const FieldInfo* field = FindField(fields_, name);
    if (!field || field->type != ValueType::kString) {
      return Drift(fmt::format("query.{}", name), "not in the table as read");
    }
    std::optional<std::string> text = Find(name);
    if (text && text->size() > field->max) {
      return Invalid(fmt::format("query.{}: {} bytes is longer than the limit of {}", name,
                                 text->size(), field->max));
    }
    return text;
  }

  Result<std::optional<std::string>> Identifier(std::string_view name) {
    std::optional<std::string> text = Find(name);
    if (text && !IsIdentifier(*text)) {
      return Invalid(fmt::format("query.{}: '{}' is not a name ([a-z0-9._-], 1..64)", name, *text));
    }
    return text;
  }

  Result<void> Finish() const {
    if (drift_) return *drift_;
    for (const auto& [key, value] : query_) {
      if (!known_.count(key)) return Invalid(fmt::format("query.{}: unknown parameter", key));
      const FieldInfo* field = FindField(fields_, key);
      if (field && field->type == ValueType::kString && value.size() > field->max) {
        return Invalid(fmt::format("query.{}: {} bytes is longer than the limit of {}", key,
                                   value.size(), field->max));
      }
    }
    return {};
  }

 private:
  const std::map<std::string, std::string, std::less<>>& query_;
  std::span<const FieldInfo> fields_;
  std::optional<Error> drift_;
  std::set<std::string, std::less<>> known_;
};

// The route table's body members for the request's route.
std::span<const FieldInfo> BodyFields(const Request& request) {
  const RouteInfo* route = FindRoute(request.verb, request.path);
  return route ? route->fields : std::span<const FieldInfo>();
}

bool IsBlank(std::string_view text) {
  return text.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

// The body as a JSON object (an empty body is an empty object).
Result<json> BodyObject(const Request& request) {
  if (IsBlank(request.body)) return json::object();
  if (request.body.size() > kMaxJsonBodyBytes) {
    return Invalid(fmt::format("body: {} bytes is longer than the limit of {}", request.body.size(),
                               kMaxJsonBodyBytes));
  }
  json body = TRY(ParseJson(request.body, "body"));
  if (!body.is_object()) {
    return Invalid(fmt::format("body: expected a JSON object, got {}", Describe(body)));
  }
  return body;
}

// For commands that take no body (an empty one, or "{}", is accepted).
Result<void> NoBody(const Request& request) {
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  return reader.Finish();
}

// For commands that take nothing: no query parameters, no body.
Result<void> NoArguments(const Request& request) {
  TRY(QueryReader(request).Finish());
  return NoBody(request);
}

Result<uint64_t> ParseId(std::string_view text) {
  uint64_t id = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || id == 0) {
    return Invalid(fmt::format("path: job id '{}' is not a positive number", text));
  }
  return id;
}

// No ".." among the path's parts.
Result<void> CheckNoDotDot(std::string_view field, std::string_view path) {
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (path.substr(start, end - start) == "..") {
      return Invalid(fmt::format("{}: '{}' contains '..'", field, path));
    }
    start = end + 1;
  }
  return {};
}

Result<void> CheckAbsolutePath(std::string_view field, std::string_view path) {
  if (path.empty() || path[0] != '/') {
    return Invalid(fmt::format("{}: '{}' is not an absolute path", field, path));
  }
  return CheckNoDotDot(field, path);
}

// A path inside the workspace: relative, without "..", not empty.
Result<void> CheckRelativePath(std::string_view field, std::string_view path) {
  if (path.empty()) return Invalid(fmt::format("{}: must not be empty", field));
  if (path[0] == '/') {
    return Invalid(
        fmt::format("{}: '{}' is absolute; give a path inside the workspace", field, path));
  }
  return CheckNoDotDot(field, path);
}

Result<AgentRequest> DecodeAgent(const json& value, std::span<const FieldInfo> fields) {
  if (!value.is_object()) {
    return Invalid(fmt::format("body.agent: expected an object, got {}", Describe(value)));
  }
  ObjectReader reader(value, "body.agent", fields);
  AgentRequest agent;
  auto profile = TRY(reader.Enum("profile"));
  if (!profile) return Invalid("body.agent.profile: required");
  agent.profile = *profile;
  agent.prompt = TRY(reader.String("prompt"));
  agent.prompt_file = TRY(reader.String("prompt_file"));
  agent.model = TRY(reader.String("model"));
  if (auto turns = TRY(reader.Unsigned("max_turns"))) agent.max_turns = *turns;
  TRY(reader.Finish());
  if (agent.profile == "command") {
    if (agent.prompt || agent.prompt_file) {
      return Invalid(
          fmt::format("body.agent.{}: the command profile takes no prompt (its argv is "
                      "the command)",
                      agent.prompt ? "prompt" : "prompt_file"));
    }
    return agent;
  }
  if (agent.prompt && agent.prompt_file) {
    return Invalid("body.agent.prompt_file: give either a prompt or a prompt file, not both");
  }
  if (!agent.prompt && !agent.prompt_file) {
    return Invalid(
        fmt::format("body.agent.prompt: required (or body.agent.prompt_file) for the "
                    "{} profile",
                    agent.profile));
  }
  if (agent.prompt && agent.prompt->empty()) return Invalid("body.agent.prompt: must not be empty");
  if (agent.prompt_file) TRY(CheckRelativePath("body.agent.prompt_file", *agent.prompt_file));
  return agent;
}

Result<LoopRequest> DecodeLoop(const json& value, std::span<const FieldInfo> fields) {
  if (!value.is_object()) {
    return Invalid(fmt::format("body.loop: expected an object, got {}", Describe(value)));
  }
  ObjectReader reader(value, "body.loop", fields);
  LoopRequest loop;
  if (auto n = TRY(reader.Unsigned("max_iterations"))) loop.max_iterations = *n;
  loop.promise = TRY(reader.String("promise"));
  if (loop.promise && loop.promise->empty()) return Invalid("body.loop.promise: must not be empty");
  loop.stop_file = TRY(reader.String("stop_file"));
  if (loop.stop_file) TRY(CheckRelativePath("body.loop.stop_file", *loop.stop_file));
  loop.max_wall_ms = TRY(reader.Unsigned("max_wall_ms"));
  loop.max_tokens = TRY(reader.Unsigned("max_tokens"));
  loop.max_cost_microusd = TRY(reader.Unsigned("max_cost_microusd"));
  loop.stall_iterations = TRY(reader.Unsigned("stall_iterations"));
  TRY(reader.Finish());
  return loop;
}

Result<WorkspaceGitRequest> DecodeWorkspaceGit(const json& value,
                                               std::span<const FieldInfo> fields) {
  if (!value.is_object()) {
    return Invalid(fmt::format("body.workspace_git: expected an object, got {}", Describe(value)));
  }
  ObjectReader reader(value, "body.workspace_git", fields);
  WorkspaceGitRequest git;
  std::optional<std::string> url = TRY(reader.String("url"));
  if (!url) return Invalid("body.workspace_git.url: required");
  TRY(ParseGitUrl(*url));
  git.url = *url;
  git.ref = TRY(reader.String("ref"));
  if (git.ref) {
    const std::string& ref = *git.ref;
    bool chars = !ref.empty() && ref.front() != '-' && ref.front() != '.' && ref.front() != '/';
    for (char c : ref) {
      chars = chars && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '/' || c == '-');
    }
    if (!chars || ref.find("..") != std::string::npos || ref.find("//") != std::string::npos ||
        ref.ends_with('/') || ref.ends_with(".lock") || ref.ends_with('.')) {
      return Invalid(fmt::format(
          "body.workspace_git.ref: '{}' is not a branch or tag name ([A-Za-z0-9._/-], not "
          "starting with '-', '.' or '/', no '..')",
          ref));
    }
  }
  TRY(reader.Finish());
  return git;
}

Result<Command> DecodeSubmit(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  JobSubmitCommand command;

  const FieldInfo* argv_info = TRY(reader.Info("argv", ValueType::kStringArray));
  const json* argv = reader.Find("argv");
  TRY(reader.Info("agent", ValueType::kObject));
  if (const json* agent = reader.Find("agent")) {
    command.agent = TRY(DecodeAgent(*agent, reader.Members("agent")));
    if (command.agent->profile != "command" && argv) {
      return Invalid(
          fmt::format("body.argv: the {} profile makes the command line; argv goes "
                      "with profile command only",
                      command.agent->profile));
    }
    if (command.agent->profile == "command" && !argv) {
      return Invalid("body.argv: required (the command profile runs the job's argv)");
    }
  } else if (!argv) {
    return Invalid("body.argv: required (or body.agent)");
  }
  if (argv && !argv->is_array()) {
    return Invalid(fmt::format("body.argv: expected an array of strings, got {}", Describe(*argv)));
  }
  if (argv && (argv->size() < argv_info->min || argv->size() > argv_info->max)) {
    return Invalid(fmt::format("body.argv: {} elements is out of range {}..{}", argv->size(),
                               argv_info->min, argv_info->max));
  }
  for (size_t i = 0; argv && i < argv->size(); ++i) {
    const json& arg = (*argv)[i];
    if (!arg.is_string()) {
      return Invalid(fmt::format("body.argv[{}]: expected a string, got {}", i, Describe(arg)));
    }
    const std::string& text = arg.get_ref<const std::string&>();
    if (text.size() > argv_info->item_max) {
      return Invalid(fmt::format("body.argv[{}]: {} bytes is longer than the limit of {}", i,
                                 text.size(), argv_info->item_max));
    }
    if (text.find('\0') != std::string::npos) {
      return Invalid(fmt::format("body.argv[{}]: contains a NUL character", i));
    }
    if (i == 0 && text.empty()) return Invalid("body.argv[0]: must not be empty");
    command.argv.push_back(text);
  }

  const FieldInfo* env_info = TRY(reader.Info("env", ValueType::kStringMap));
  if (const json* env = reader.Find("env")) {
    if (!env->is_object()) {
      return Invalid(
          fmt::format("body.env: expected an object of strings, got {}", Describe(*env)));
    }
    if (env->size() > env_info->max) {
      return Invalid(fmt::format("body.env: {} variables is more than the limit of {}", env->size(),
                                 env_info->max));
    }
    ObjectReader vars(*env, "body.env");
    for (const auto& [name, value] : env->items()) {
      if (!IsEnvName(name)) {
        return Invalid(
            fmt::format("body.env.{}: not a variable name ([A-Za-z_][A-Za-z0-9_]*)", name));
      }
      command.env[name] = *TRY(vars.Text(name, env_info->item_max));
    }
  }

  if (auto cwd = TRY(reader.String("cwd"))) {
    TRY(CheckAbsolutePath("body.cwd", *cwd));
    command.cwd = *cwd;
  }
  if (auto profile = TRY(reader.String("profile"))) {
    if (!IsIdentifier(*profile)) {
      return Invalid(
          fmt::format("body.profile: '{}' is not a profile name ([a-z0-9._-], 1..64)", *profile));
    }
    command.profile = *profile;
  }
  TRY(reader.Info("limits", ValueType::kObject));
  if (const json* limits = reader.Find("limits")) {
    if (!limits->is_object()) {
      return Invalid(fmt::format("body.limits: expected an object, got {}", Describe(*limits)));
    }
    ObjectReader l(*limits, "body.limits", reader.Members("limits"));
    command.limits.memory_bytes = TRY(l.Unsigned("memory_bytes"));
    if (auto cpu = TRY(l.Unsigned("cpu_millis"))) command.limits.cpu_millis = *cpu;
    if (auto pids = TRY(l.Unsigned("pids"))) command.limits.pids = *pids;
    command.limits.disk_bytes = TRY(l.Unsigned("disk_bytes"));
    command.limits.timeout_ms = TRY(l.Unsigned("timeout_ms"));
    TRY(l.Finish());
  }
  if (auto isolation = TRY(reader.Enum("isolation"))) {
    command.isolation = ParseIsolation(*isolation);
  }
  if (auto start = TRY(reader.Bool("start"))) command.start = *start;
  if (auto tty = TRY(reader.Bool("tty"))) command.tty = *tty;
  for (auto [name, field] :
       {std::pair{"columns", &command.columns}, std::pair{"rows", &command.rows}}) {
    if (auto value = TRY(reader.Unsigned(name))) {
      if (!command.tty) {
        return Invalid(fmt::format("body.{}: a window size needs \"tty\": true", name));
      }
      *field = static_cast<uint16_t>(*value);
    }
  }
  TRY(reader.Info("loop", ValueType::kObject));
  if (const json* loop = reader.Find("loop")) {
    command.loop = TRY(DecodeLoop(*loop, reader.Members("loop")));
    if (!command.agent) {
      return Invalid(
          "body.loop: needs body.agent (a loop runs an agent profile, or the command "
          "profile's argv)");
    }
  }
  if (command.agent && command.tty) {
    return Invalid("body.tty: not for an agent job (its stdout is the tool's event stream)");
  }
  TRY(reader.Info("workspace_git", ValueType::kObject));
  if (const json* git = reader.Find("workspace_git")) {
    command.workspace_git = TRY(DecodeWorkspaceGit(*git, reader.Members("workspace_git")));
    if (!command.start) {
      return Invalid(
          "body.start: false is for a workspace upload; a job with body.workspace_git has its "
          "workspace from the clone");
    }
    if (command.agent && command.agent->prompt_file) {
      return Invalid(
          "body.agent.prompt_file: not with body.workspace_git (the clone is made when the job "
          "runs); give body.agent.prompt");
    }
  }
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodeJobList(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  JobListCommand command;
  if (auto state = query.Find("state")) {
    command.state = ParseJobState(*state);
    if (!command.state) {
      return Invalid(fmt::format("query.state: '{}' is not a job state", *state));
    }
  }
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeLogs(const Request& request, uint64_t id) {
  TRY(NoBody(request));
  QueryReader query(request);
  JobLogsCommand command{.id = id};
  if (auto stream = query.Find("stream")) {
    if (*stream == "stdout") {
      command.stream = OutputStream::kStdout;
    } else if (*stream == "stderr") {
      command.stream = OutputStream::kStderr;
    } else {
      return Invalid(fmt::format("query.stream: '{}' is not stdout or stderr", *stream));
    }
  }
  if (auto offset = TRY(query.Unsigned("offset"))) command.offset = *offset;
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeJobDiff(const Request& request, uint64_t id) {
  TRY(NoBody(request));
  QueryReader query(request);
  JobDiffCommand command{.id = id};
  auto iteration = TRY(query.Unsigned("iteration"));
  if (!iteration) return Invalid("query.iteration: required (the loop iteration to show)");
  command.iteration = *iteration;
  command.from = TRY(query.Unsigned("from"));
  if (command.from && *command.from == command.iteration) {
    return Invalid(
        fmt::format("query.from: {} is the iteration itself (an empty diff)", *command.from));
  }
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeJobRollback(const Request& request, uint64_t id) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  auto iteration = TRY(reader.Unsigned("iteration"));
  if (!iteration) return Invalid("body.iteration: required (the loop iteration to restore)");
  TRY(reader.Finish());
  return JobRollbackCommand{.id = id, .iteration = *iteration};
}

Result<Command> DecodeWorkspaceDownload(const Request& request, uint64_t id) {
  TRY(NoBody(request));
  QueryReader query(request);
  WorkspaceDownloadCommand command{.id = id};
  if (auto format = query.Find("format")) {
    if (*format == "tar") {
      command.format = WorkspaceFormat::kTar;
    } else if (*format == "list") {
      command.format = WorkspaceFormat::kList;
    } else {
      return Invalid(fmt::format("query.format: '{}' is not tar or list", *format));
    }
  }
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeWorkspaceUpload(const Request& request, uint64_t id) {
  TRY(QueryReader(request).Finish());
  if (request.body.empty()) return Invalid("body: expected a tar archive, got nothing");
  if (request.body.size() > kMaxWorkspaceTarBytes) {
    return Invalid(fmt::format("body: {} bytes is longer than the limit of {}", request.body.size(),
                               kMaxWorkspaceTarBytes));
  }
  return WorkspaceUploadCommand{.id = id, .tar = request.body};
}

Result<std::string> PolicyDocument(ObjectReader& reader) {
  auto document = TRY(reader.String("document"));
  if (!document) return Invalid("body.document: required");
  return *document;
}

Result<Command> DecodePolicySet(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  PolicySetCommand command;
  command.document = TRY(PolicyDocument(reader));
  if (auto comment = TRY(reader.String("comment"))) command.comment = *comment;
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodePolicyValidate(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  PolicyValidateCommand command{.document = TRY(PolicyDocument(reader))};
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodePolicyRollback(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  auto version = TRY(reader.Unsigned("version"));
  if (!version) return Invalid("body.version: required");
  TRY(reader.Finish());
  return PolicyRollbackCommand{.version = *version};
}

Result<Command> DecodePairingRevoke(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  auto id = TRY(reader.String("id"));
  if (!id || id->empty()) return Invalid("body.id: required");
  TRY(reader.Finish());
  return PairingRevokeCommand{.id = *id};
}

Result<Command> DecodeRecoveryReboot(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  RecoveryRebootCommand command;
  command.reason = TRY(reader.String("reason")).value_or("");
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodeAgentImageInstall(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  auto path = TRY(reader.String("path"));
  if (!path) return Invalid("body.path: required");
  if (path->empty() || path->front() != '/') {
    return Invalid(fmt::format("body.path: '{}' is not an absolute path on the appliance", *path));
  }
  TRY(reader.Finish());
  return AgentImageInstallCommand{.path = *path};
}

// A name field: an identifier ([a-z0-9._-], 1..64) when present.
Result<std::string> IdentifierField(ObjectReader& reader, std::string_view name) {
  auto text = TRY(reader.String(name));
  if (!text) return std::string();
  if (!IsIdentifier(*text)) {
    return Invalid(
        fmt::format("{}: '{}' is not a name ([a-z0-9._-], 1..64)", reader.Field(name), *text));
  }
  return *text;
}

Result<Command> DecodeCredsRevoke(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  CredsRevokeCommand command;
  auto profile = TRY(reader.Enum("profile"));
  if (!profile) return Invalid("body.profile: required (claude, codex, opencode)");
  auto scope = TRY(reader.Enum("scope"));
  if (!scope) return Invalid("body.scope: required (agent, tenant, global)");
  command.profile = *profile;
  command.scope = *scope;
  command.name = TRY(IdentifierField(reader, "name"));
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodeCredsLogin(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  CredsLoginCommand command;
  auto profile = TRY(reader.Enum("profile"));
  if (!profile) return Invalid("body.profile: required (claude, codex, opencode)");
  command.profile = *profile;
  if (auto scope = TRY(reader.Enum("scope"))) command.scope = *scope;
  command.name = TRY(IdentifierField(reader, "name"));
  std::string policy_profile = TRY(IdentifierField(reader, "policy_profile"));
  if (!policy_profile.empty()) command.policy_profile = policy_profile;
  if (auto columns = TRY(reader.Unsigned("columns"))) {
    command.columns = static_cast<uint16_t>(*columns);
  }
  if (auto rows = TRY(reader.Unsigned("rows"))) command.rows = static_cast<uint16_t>(*rows);
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodePolicyGet(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  PolicyGetCommand command{.version = TRY(query.Unsigned("version"))};
  TRY(query.Finish());
  return command;
}

Result<Command> DecodePolicyHistory(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  PolicyHistoryCommand command;
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  TRY(query.Finish());
  return command;
}

struct AuditFilter {
  uint64_t after = 0;
  std::optional<uint64_t> job;
  std::optional<std::string> type;
  std::optional<std::string> since;
  std::optional<std::string> until;
};

Result<std::optional<std::string>> ReadAuditTime(QueryReader& query, std::string_view name) {
  std::optional<std::string> text = query.Find(name);
  if (!text) return text;
  Result<std::string> time = audit::ParseAuditTime(*text);
  if (!time) return Invalid(fmt::format("query.{}: {}", name, time.error().message()));
  return std::optional<std::string>(*time);
}

Result<AuditFilter> ReadAuditFilter(QueryReader& query) {
  AuditFilter filter;
  if (auto after = TRY(query.Unsigned("after"))) filter.after = *after;
  filter.job = TRY(query.Unsigned("job"));
  filter.type = TRY(query.Identifier("type"));
  filter.since = TRY(ReadAuditTime(query, "since"));
  filter.until = TRY(ReadAuditTime(query, "until"));
  // Both in one fixed-width format: the text compares as the time.
  if (filter.since && filter.until && *filter.until <= *filter.since) {
    return Invalid(
        fmt::format("query.until: {} is not after query.since ({})", *filter.until, *filter.since));
  }
  return filter;
}

Result<Command> DecodeAuditList(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  AuditFilter filter = TRY(ReadAuditFilter(query));
  AuditListCommand command{.after = filter.after,
                           .job = filter.job,
                           .type = filter.type,
                           .since = filter.since,
                           .until = filter.until};
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeAuditExport(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  AuditFilter filter = TRY(ReadAuditFilter(query));
  TRY(query.Finish());
  return AuditExportCommand{.after = filter.after,
                            .job = filter.job,
                            .type = filter.type,
                            .since = filter.since,
                            .until = filter.until};
}

Result<Command> DecodeAuditVerify(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  AuditVerifyCommand command{.anchor = query.Find("anchor")};
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeEvents(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  EventsCommand command;
  if (auto after = TRY(query.Unsigned("after"))) command.after = *after;
  command.job = TRY(query.Unsigned("job"));
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeMemoryPut(const Request& request) {
  TRY(QueryReader(request).Finish());
  json body = TRY(BodyObject(request));
  ObjectReader reader(body, "body", BodyFields(request));
  MemoryPutCommand command;
  auto key = TRY(reader.String("key"));
  if (!key) return Invalid("body.key: required");
  TRY(memory::CheckKey(*key, "body.key"));
  command.key = *key;
  auto value = TRY(reader.Json("value"));
  if (!value) return Invalid("body.value: required");
  command.value = std::move(*value);
  TRY(reader.Finish());
  return command;
}

Result<Command> DecodeMemoryGet(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  auto hash = TRY(query.Text("hash"));
  if (!hash) return Invalid("query.hash: required");
  TRY(memory::CheckHash(*hash, "query.hash"));
  TRY(query.Finish());
  return MemoryGetCommand{.hash = *hash};
}

// The after and limit of a memory page.
template <typename C>
Result<void> ReadMemoryPage(QueryReader& query, C& command) {
  if (auto after = TRY(query.Unsigned("after"))) command.after = *after;
  if (auto limit = TRY(query.Unsigned("limit"))) command.limit = *limit;
  return {};
}

Result<Command> DecodeMemoryQuery(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  MemoryQueryCommand command;
  if (auto prefix = TRY(query.Text("prefix"))) {
    TRY(memory::CheckPrefix(*prefix, "query.prefix"));
    command.prefix = *prefix;
  }
  TRY(ReadMemoryPage(query, command));
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeMemoryHistory(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  MemoryHistoryCommand command;
  auto key = TRY(query.Text("key"));
  if (!key) return Invalid("query.key: required");
  TRY(memory::CheckKey(*key, "query.key"));
  command.key = *key;
  TRY(ReadMemoryPage(query, command));
  TRY(query.Finish());
  return command;
}

Result<Command> DecodeMemoryList(const Request& request) {
  TRY(NoBody(request));
  QueryReader query(request);
  MemoryListCommand command;
  auto agent = TRY(query.Text("agent"));
  if (!agent) return Invalid("query.agent: required");
  TRY(memory::CheckAgent(*agent, "query.agent"));
  command.agent = *agent;
  TRY(ReadMemoryPage(query, command));
  TRY(query.Finish());
  return command;
}

std::vector<std::string_view> Segments(std::string_view path) {
  std::vector<std::string_view> out;
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    out.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// The routing table: decoders by (path pattern, verb). "{id}" matches a job id.
struct Route {
  std::string_view pattern;
  std::string_view verb;
  Result<Command> (*decode)(const Request& request, uint64_t id);
};

template <typename C>
Result<Command> Plain(const Request& request, uint64_t id) {
  TRY(NoArguments(request));
  C command;
  if constexpr (requires(C c) { c.id; }) command.id = id;
  return command;
}

constexpr Route kRoutes[] = {
    {"/v1/status", "GET", Plain<StatusCommand>},
    {"/v1/jobs", "POST", [](const Request& r, uint64_t) { return DecodeSubmit(r); }},
    {"/v1/jobs", "GET", [](const Request& r, uint64_t) { return DecodeJobList(r); }},
    {"/v1/jobs/{id}", "GET", Plain<JobShowCommand>},
    {"/v1/jobs/{id}/start", "POST", Plain<JobStartCommand>},
    {"/v1/jobs/{id}/cancel", "POST", Plain<JobCancelCommand>},
    {"/v1/jobs/{id}/logs", "GET", DecodeLogs},
    {"/v1/jobs/{id}/files", "GET", Plain<JobFilesCommand>},
    {"/v1/jobs/{id}/iterations", "GET", Plain<JobIterationsCommand>},
    {"/v1/jobs/{id}/pause", "POST", Plain<JobPauseCommand>},
    {"/v1/jobs/{id}/resume", "POST", Plain<JobResumeCommand>},
    {"/v1/jobs/{id}/diff", "GET", DecodeJobDiff},
    {"/v1/jobs/{id}/rollback", "POST", DecodeJobRollback},
    {"/v1/jobs/{id}/terminal", "GET", Plain<TerminalAttachCommand>},
    {"/v1/jobs/{id}/workspace", "PUT", DecodeWorkspaceUpload},
    {"/v1/jobs/{id}/workspace", "GET", DecodeWorkspaceDownload},
    {"/v1/policy", "GET", [](const Request& r, uint64_t) { return DecodePolicyGet(r); }},
    {"/v1/policy", "PUT", [](const Request& r, uint64_t) { return DecodePolicySet(r); }},
    {"/v1/policy/validate", "POST",
     [](const Request& r, uint64_t) { return DecodePolicyValidate(r); }},
    {"/v1/policy/history", "GET",
     [](const Request& r, uint64_t) { return DecodePolicyHistory(r); }},
    {"/v1/policy/rollback", "POST",
     [](const Request& r, uint64_t) { return DecodePolicyRollback(r); }},
    {"/v1/audit", "GET", [](const Request& r, uint64_t) { return DecodeAuditList(r); }},
    {"/v1/audit/verify", "GET", [](const Request& r, uint64_t) { return DecodeAuditVerify(r); }},
    {"/v1/audit/export", "GET", [](const Request& r, uint64_t) { return DecodeAuditExport(r); }},
    {"/v1/events", "GET", [](const Request& r, uint64_t) { return DecodeEvents(r); }},
    {"/v1/memory", "POST", [](const Request& r, uint64_t) { return DecodeMemoryPut(r); }},
    {"/v1/memory/entry", "GET", [](const Request& r, uint64_t) { return DecodeMemoryGet(r); }},
    {"/v1/memory/query", "GET", [](const Request& r, uint64_t) { return DecodeMemoryQuery(r); }},
    {"/v1/memory/history", "GET",
     [](const Request& r, uint64_t) { return DecodeMemoryHistory(r); }},
    {"/v1/memory/agent", "GET", [](const Request& r, uint64_t) { return DecodeMemoryList(r); }},
    {"/v1/pairing/offers", "POST", Plain<PairCommand>},
    {"/v1/pairings", "GET", Plain<PairingsListCommand>},
    {"/v1/pairings/revoke", "POST",
     [](const Request& r, uint64_t) { return DecodePairingRevoke(r); }},
    {"/v1/agent-image", "GET", Plain<AgentImageStatusCommand>},
    {"/v1/agent-image/install", "POST",
     [](const Request& r, uint64_t) { return DecodeAgentImageInstall(r); }},
    {"/v1/agent-image/rollback", "POST", Plain<AgentImageRollbackCommand>},
    {"/v1/recovery/reboot", "POST",
     [](const Request& r, uint64_t) { return DecodeRecoveryReboot(r); }},
    {"/v1/creds", "GET", Plain<CredsListCommand>},
    {"/v1/creds/revoke", "POST", [](const Request& r, uint64_t) { return DecodeCredsRevoke(r); }},
    {"/v1/creds/login", "POST", [](const Request& r, uint64_t) { return DecodeCredsLogin(r); }},
};

static_assert(std::size(kRoutes) == std::size(kRouteInfos),
              "every decoder route is in the route table (CoreRoutes)");

// Whether `path` matches `pattern`; a "{id}" segment must then be a job id
// (a malformed one is the request's error, not another route).
Result<bool> Matches(std::string_view pattern, std::string_view path, uint64_t& id) {
  std::vector<std::string_view> want = Segments(pattern);
  std::vector<std::string_view> got = Segments(path);
  if (want.size() != got.size()) return false;
  std::optional<std::string_view> id_text;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == "{id}") {
      id_text = got[i];
    } else if (want[i] != got[i]) {
      return false;
    }
  }
  if (id_text) id = TRY(ParseId(*id_text));
  return true;
}

}  // namespace

std::span<const RouteInfo> CoreRoutes() {
  return kRouteInfos;
}

const RouteInfo* FindRoute(std::string_view verb, std::string_view path) {
  std::vector<std::string_view> got = Segments(path);
  for (const RouteInfo& route : kRouteInfos) {
    if (route.verb != verb) continue;
    std::vector<std::string_view> want = Segments(route.path);
    if (want.size() != got.size()) continue;
    bool same = true;
    for (size_t i = 0; i < want.size() && same; ++i) {
      same = want[i] == "{id}" ? !got[i].empty() : want[i] == got[i];
    }
    if (same) return &route;
  }
  return nullptr;
}

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kCreated: return "created";
    case JobState::kQueued: return "queued";
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kTimedOut: return "timed-out";
    case JobState::kCancelled: return "cancelled";
    case JobState::kLost: return "lost";
  }
  return "?";
}

std::optional<JobState> ParseJobState(std::string_view name) {
  for (JobState state : kAllJobStates) {
    if (JobStateName(state) == name) return state;
  }
  return std::nullopt;
}

bool IsFinal(JobState state) {
  return state != JobState::kCreated && state != JobState::kQueued && state != JobState::kRunning;
}

Result<GitUrl> ParseGitUrl(std::string_view url, std::string_view field) {
  auto bad = [&](std::string_view why) {
    return Invalid(fmt::format("{}: '{}' {}", field, url, why));
  };
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return bad("has whitespace or a control character");
    }
  }
  GitUrl parsed;
  std::string_view rest;
  if (url.starts_with("https://")) {
    rest = url.substr(8);
  } else if (url.starts_with("http://")) {
    parsed.https = false;
    parsed.port = 80;
    rest = url.substr(7);
  } else {
    // ssh and git:// would need their own egress story; file:// and a
    // path would read the host's files.
    return bad("is not an http:// or https:// URL");
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
  if (authority.find('@') != std::string_view::npos) {
    // It would be stored with the job and in the audit log; agents and
    // their repositories log in through their own flows.
    return bad("carries credentials (user@): give a URL without them");
  }
  if (authority.starts_with('[')) return bad("names an address: give a host name");
  std::string_view host = authority;
  if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    std::string_view port = authority.substr(colon + 1);
    uint32_t number = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || number == 0 ||
        number > 65535) {
      return bad("has a port that is not a number in 1..65535");
    }
    parsed.port = static_cast<uint16_t>(number);
  }
  if (host.empty()) return bad("has no host");
  bool all_digits_and_dots = true;
  for (char c : host) {
    char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    if (!((lower >= 'a' && lower <= 'z') || (lower >= '0' && lower <= '9') || lower == '-' ||
          lower == '.')) {
      return bad(fmt::format("has a host with the character '{}'", c));
    }
    all_digits_and_dots = all_digits_and_dots && (lower == '.' || (lower >= '0' && lower <= '9'));
    parsed.host.push_back(lower);
  }
  // The job's egress allows names (its DNS allowlist), not addresses.
  if (all_digits_and_dots) return bad("names an address: give a host name");
  if (path.empty() || path.find('\\') != std::string_view::npos) {
    return bad("has no repository path");
  }
  return parsed;
}

std::string_view IsolationName(Isolation isolation) {
  return isolation == Isolation::kVm ? "vm" : "namespaces";
}

std::optional<Isolation> ParseIsolation(std::string_view text) {
  if (text == "namespaces") return Isolation::kNamespaces;
  if (text == "vm") return Isolation::kVm;
  return std::nullopt;
}

std::string_view OutputStreamName(OutputStream stream) {
  return stream == OutputStream::kStdout ? "stdout" : "stderr";
}

std::string_view CommandName(const Command& command) {
  return std::visit([](const auto& c) { return std::decay_t<decltype(c)>::kName; }, command);
}

bool IsReadOnly(const Command& command) {
  // A command missing here is audited every time: the safe side.
  static constexpr std::string_view kReadOnly[] = {
      StatusCommand::kName,     JobListCommand::kName,          JobShowCommand::kName,
      JobLogsCommand::kName,    JobFilesCommand::kName,         WorkspaceDownloadCommand::kName,
      PolicyGetCommand::kName,  PolicyHistoryCommand::kName,    PolicyValidateCommand::kName,
      AuditListCommand::kName,  AuditVerifyCommand::kName,      AuditExportCommand::kName,
      EventsCommand::kName,     PairingsListCommand::kName,     JobDiffCommand::kName,
      MemoryGetCommand::kName,  MemoryQueryCommand::kName,      MemoryHistoryCommand::kName,
      MemoryListCommand::kName, AgentImageStatusCommand::kName, CredsListCommand::kName,
  };
  std::string_view name = CommandName(command);
  return std::find(std::begin(kReadOnly), std::end(kReadOnly), name) != std::end(kReadOnly);
}

Result<nlohmann::json> ParseJson(std::string_view text, std::string_view what) {
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    return Invalid(fmt::format("{}: malformed JSON at {}", what, JsonErrorReason(text)));
  }
  return value;
}

std::string DumpJson(const nlohmann::json& value, int indent) {
  return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

Result<Command> DecodeRequest(const Request& request) {
  if (request.path.empty() || request.path[0] != '/') {
    return Invalid(fmt::format("path: '{}' does not start with '/'", request.path));
  }
  if (request.path.rfind("/v1/", 0) != 0) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("path: '{}' is not an API path (/v1/...)", request.path));
  }
  bool path_known = false;
  for (const Route& route : kRoutes) {
    uint64_t id = 0;
    bool matches = TRY(Matches(route.pattern, request.path, id));
    if (!matches) continue;
    path_known = true;
    if (route.verb == request.verb) {
      if (!FindRoute(route.verb, route.pattern)) {
        return Drift(fmt::format("{} {}", route.verb, route.pattern), "not in the table");
      }
      return route.decode(request, id);
    }
  }
  if (path_known) {
    return Error::Make(ErrorCode::kUnsupported,
                       fmt::format("verb: {} is not allowed on {}", request.verb, request.path));
  }
  return Error::Make(ErrorCode::kNotFound, fmt::format("path: no such route {}", request.path));
}

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> Base64Decode(std::string_view text, std::string_view what) {
  if (text.size() % 4 != 0) {
    return Invalid(
        fmt::format("{}: not base64 (length {} is not a multiple of 4)", what, text.size()));
  }
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return Invalid(fmt::format("{}: not base64", what));
  // EVP_DecodeBlock counts the padding as zero bytes.
  size_t padding = 0;
  if (!text.empty() && text.back() == '=') ++padding;
  if (text.size() > 1 && text[text.size() - 2] == '=') ++padding;
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

std::string Caller::ToString() const {
  if (kind == Kind::kLocalUid) return fmt::format("uid:{}", uid);
  return fmt::format("cert:{}", certificate_id);
}

Reply Reply::Failure(Error error) {
  Reply reply;
  reply.body = ErrorJson(error);
  reply.error = std::move(error);
  return reply;
}

nlohmann::json ErrorJson(const Error& error) {
  return {{"error",
           {{"code", std::string(ErrorCodeName(error.code()))}, {"message", error.message()}}}};
}

}  // namespace ralph::ralphd
