// `ralphctl audit ...`: read and verify the audit log (services/audit).
#include <charconv>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include <unistd.h>

#include "ralphd_client.h"
#include "services/audit/audit_log.h"
#include "services/ralphctl/command.h"
#include "services/ralphd/commands.h"
#include "transport.h"

namespace ralph::ralphctl {
namespace {

constexpr std::string_view kUsage =
    R"(usage: ralphctl audit <subcommand> [options]

subcommands:
  list [--json] [--limit N] [--after SEQ] [--job ID] [--type T]
       [--since TIME] [--until TIME]
                              the newest N events, oldest first (default 50;
                              0 lists all)
  verify [--json] [--anchor SEQ:HASH]
                              walk the hash chain; exits 1 naming the first
                              broken row. --anchor is a tip printed by an
                              earlier verify, kept elsewhere: it must still be
                              in the log (detects truncation and rewrites)
  export [--after SEQ] [--job ID] [--type T] [--since TIME] [--until TIME]
                              the rows as JSON lines, oldest first

TIME is UTC as the log stores it: 2026-11-22T16:40:01.123Z (or without the
milliseconds); --since is inclusive, --until exclusive.

options:
  --socket PATH               ask ralphd (default /run/ralphd.sock, when it exists)
  --remote https://HOST:PORT  ask an appliance's ralphd over HTTPS
  --identity DIR              the paired client identity for --remote
  --audit-db PATH             read the audit log file itself (default
                              /var/lib/ralph/audit.db when ralphd's socket is absent)
)";

constexpr OptionSpec kOptions[] = {
    {"--json", false}, {"--limit", true},  {"--anchor", true}, {"--audit-db", true},
    {"--help", false}, {"--socket", true}, {"--after", true},  {"--job", true},
    {"--type", true},  {"--since", true},  {"--until", true},  kRemoteOption,
    kIdentityOption,
};

// Through ralphd (its socket, or --remote) unless the file is named (or
// there is no daemon to ask).
bool ThroughRalphd(const ParsedArgs& args) {
  if (args.Has("--audit-db")) return false;
  if (args.Has("--remote") || args.Has("--socket")) return true;
  return ::access(std::string(kDefaultRalphdSocket).c_str(), F_OK) == 0;
}

// One request to ralphd; the reply's body (or bytes), or the error.
Result<nlohmann::json> AskRalphd(const ParsedArgs& args, std::string path, nlohmann::json query) {
  std::unique_ptr<RalphdTransport> transport = TRY(OpenTransport(args));
  return transport->Call({.verb = "GET", .path = std::move(path), .query = std::move(query)});
}

nlohmann::json FilterQuery(const ParsedArgs& args) {
  nlohmann::json query = nlohmann::json::object();
  for (const char* name : {"after", "job", "type", "since", "until"}) {
    if (auto value = args.Value(std::string("--") + name)) query[name] = *value;
  }
  return query;
}

constexpr size_t kDefaultLimit = 50;

// --since/--until into `query`, checked here so that a bad time is a usage
// error whichever way the log is read. The exit status when one is bad.
std::optional<int> ReadTimeRange(const ParsedArgs& args, const std::string& command,
                                 audit::ListQuery& query) {
  for (auto [flag, out] :
       {std::pair{"--since", &query.since}, std::pair{"--until", &query.until}}) {
    std::optional<std::string> text = args.Value(flag);
    if (!text) continue;
    Result<std::string> time = audit::ParseAuditTime(*text);
    if (!time) return UsageError(command, fmt::format("{}: {}", flag, time.error().message()));
    *out = *time;
  }
  if (query.since && query.until && *query.until <= *query.since) {
    return UsageError(command, "--until must be after --since");
  }
  return std::nullopt;
}

Result<std::unique_ptr<audit::AuditLog>> OpenLog(const ParsedArgs& args) {
  std::string path = args.Value("--audit-db").value_or(std::string(audit::kDefaultAuditLogPath));
  return audit::AuditLog::Open(path, audit::OpenMode::kReadOnly);
}

int List(const ParsedArgs& args) {
  const std::string command = "audit list";
  if (args.Has("--anchor")) return UsageError(command, "--anchor goes with verify");
  audit::ListQuery query{.limit = kDefaultLimit};
  if (auto limit = args.Value("--limit")) {
    auto [end, ec] = std::from_chars(limit->data(), limit->data() + limit->size(), query.limit);
    if (ec != std::errc() || end != limit->data() + limit->size() || limit->empty()) {
      return UsageError(command, fmt::format("--limit {} is not a number of rows", *limit));
    }
  }
  if (std::optional<int> exit = ReadTimeRange(args, command, query)) return *exit;
  std::vector<audit::AuditRecord> rows;
  if (ThroughRalphd(args)) {
    nlohmann::json q = FilterQuery(args);
    if (query.limit > 0) q["limit"] = std::to_string(std::min<size_t>(query.limit, 1000));
    auto reply = AskRalphd(args, "/v1/audit", q);
    if (!reply) return Failed(command, reply.error());
    for (const nlohmann::json& r : (*reply)["records"]) {
      rows.push_back({.seq = r.value("seq", int64_t{0}),
                      .time = r.value("time", ""),
                      .actor = r.value("actor", ""),
                      .type = r.value("type", ""),
                      .subject = r.value("subject", ""),
                      .details = r.contains("details") ? ralphd::DumpJson(r["details"]) : "",
                      .prev_hash = r.value("prev_hash", ""),
                      .hash = r.value("hash", "")});
    }
  } else {
    if (args.Has("--after") || args.Has("--job") || args.Has("--type")) {
      query.after_seq = args.Has("--after") ? std::atoll(args.Value("--after")->c_str()) : 0;
      query.type = args.Value("--type");
      if (auto job = args.Value("--job")) query.subject = "job " + *job;
    }
    auto log = OpenLog(args);
    if (!log) return Failed(command, log.error());
    auto listed = (*log)->List(query);
    if (!listed) return Failed(command, listed.error());
    rows = std::move(*listed);
  }
  if (args.Has("--json")) {
    nlohmann::json out = nlohmann::json::array();
    for (const audit::AuditRecord& row : rows) out.push_back(audit::RecordToJson(row));
    fmt::print("{}\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return kExitOk;
  }
  if (rows.empty()) {
    fmt::print("the audit log is empty\n");
    return kExitOk;
  }
  for (const audit::AuditRecord& row : rows) {
    fmt::print("{:>6}  {}  {:<8} {:<20} {:<10} {}\n", row.seq, row.time, row.actor, row.type,
               row.subject, row.details);
  }
  return kExitOk;
}

int Verify(const ParsedArgs& args) {
  const std::string command = "audit verify";
  if (args.Has("--limit")) return UsageError(command, "--limit goes with list");
  std::optional<audit::ChainTip> anchor;
  if (auto text = args.Value("--anchor")) {
    auto parsed = audit::ParseChainTip(*text);
    if (!parsed) return UsageError(command, "--anchor: " + parsed.error().message());
    anchor = *parsed;
  }
  if (ThroughRalphd(args)) {
    nlohmann::json query = nlohmann::json::object();
    if (auto text = args.Value("--anchor")) query["anchor"] = *text;
    auto reply = AskRalphd(args, "/v1/audit/verify", query);
    if (!reply) return Failed(command, reply.error());
    bool ok = reply->value("ok", false);
    if (args.Has("--json")) {
      fmt::print("{}\n", reply->dump(2));
    } else if (ok) {
      fmt::print("audit log {}: {} rows, chain intact; tip {}\n", reply->value("path", ""),
                 reply->value("rows", 0), reply->value("tip", ""));
    } else {
      fmt::print(stderr, "ralphctl audit verify: {}: {} [verification-failed]\n",
                 reply->value("path", ""), (*reply)["broken"].value("message", ""));
    }
    return ok ? kExitOk : kExitFailed;
  }
  auto log = OpenLog(args);
  if (!log) return Failed(command, log.error());
  auto report = (*log)->Verify(anchor);
  if (!report) return Failed(command, report.error());
  if (args.Has("--json")) {
    nlohmann::json out = {{"path", (*log)->path()},
                          {"ok", report->ok()},
                          {"rows", report->rows},
                          {"tip", report->tip.ToString()}};
    if (report->broken) {
      out["broken"] = {{"seq", report->broken->seq},
                       {"kind", audit::BreakKindName(report->broken->kind)},
                       {"message", report->broken->message}};
    }
    fmt::print("{}\n", out.dump(2));
  } else if (report->ok()) {
    fmt::print("audit log {}: {} rows, chain intact; tip {}\n", (*log)->path(), report->rows,
               report->tip.ToString());
  } else {
    fmt::print(stderr, "ralphctl audit verify: {}: {} [verification-failed]\n", (*log)->path(),
               report->broken->message);
  }
  return report->ok() ? kExitOk : kExitFailed;
}

int Export(const ParsedArgs& args) {
  const std::string command = "audit export";
  audit::ListQuery query;
  if (std::optional<int> exit = ReadTimeRange(args, command, query)) return *exit;
  if (ThroughRalphd(args)) {
    auto reply = AskRalphd(args, "/v1/audit/export", FilterQuery(args));
    if (!reply) return Failed(command, reply.error());
    const std::string& lines = (*reply)["bytes"].get_ref<const std::string&>();
    std::fwrite(lines.data(), 1, lines.size(), stdout);
    return kExitOk;
  }
  if (auto after = args.Value("--after")) query.after_seq = std::atoll(after->c_str());
  query.type = args.Value("--type");
  if (auto job = args.Value("--job")) query.subject = "job " + *job;
  auto log = OpenLog(args);
  if (!log) return Failed(command, log.error());
  auto rows = (*log)->List(query);
  if (!rows) return Failed(command, rows.error());
  for (const audit::AuditRecord& row : *rows) {
    fmt::print("{}\n", ralphd::DumpJson(audit::RecordToJson(row)));
  }
  return kExitOk;
}

}  // namespace

int RunAuditCommand(const Invocation&, std::span<const std::string> args) {
  ParsedArgs parsed;
  if (auto exit = ParseSubcommand("audit", args, kOptions, kUsage, parsed)) {
    return *exit;
  }
  if (auto bad = TransportUsageError(parsed)) return UsageError("audit", *bad);
  if (parsed.Has("--remote") && parsed.Has("--audit-db")) {
    return UsageError("audit", "--audit-db reads a local file; it does not go with --remote");
  }
  const std::string& verb = parsed.positional[0];
  if (parsed.positional.size() > 1) {
    return UsageError("audit " + verb,
                      fmt::format("unexpected argument '{}'", parsed.positional[1]));
  }
  if (verb == "list") return List(parsed);
  if (verb == "verify") return Verify(parsed);
  if (verb == "export") return Export(parsed);
  return UsageError("audit", fmt::format("unknown subcommand '{}'", verb));
}

}  // namespace ralph::ralphctl
