// `ralphctl audit ...`: read and verify the audit log (services/audit).
#include <charconv>
#include <cstdio>

#include <fmt/format.h>

#include "services/audit/audit_log.h"
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {
namespace {

constexpr std::string_view kUsage =
    R"(usage: ralphctl audit <subcommand> [options]

subcommands:
  list [--json] [--limit N]   the newest N events, oldest first (default 50;
                              0 lists all)
  verify [--json] [--anchor SEQ:HASH]
                              walk the hash chain; exits 1 naming the first
                              broken row. --anchor is a tip printed by an
                              earlier verify, kept elsewhere: it must still be
                              in the log (detects truncation and rewrites)

options:
  --audit-db PATH             the audit log (default /var/lib/ralph/audit.db)
)";

constexpr OptionSpec kOptions[] = {
    {"--json", false},    {"--limit", true}, {"--anchor", true},
    {"--audit-db", true}, {"--help", false},
};

constexpr size_t kDefaultLimit = 50;

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
  auto log = OpenLog(args);
  if (!log) return Failed(command, log.error());
  auto rows = (*log)->List(query);
  if (!rows) return Failed(command, rows.error());
  if (args.Has("--json")) {
    nlohmann::json out = nlohmann::json::array();
    for (const audit::AuditRecord& row : *rows) out.push_back(audit::RecordToJson(row));
    fmt::print("{}\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return kExitOk;
  }
  if (rows->empty()) {
    fmt::print("the audit log is empty\n");
    return kExitOk;
  }
  for (const audit::AuditRecord& row : *rows) {
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

}  // namespace

int RunAuditCommand(const Invocation&, std::span<const std::string> args) {
  auto parsed = ParseArgs(args, kOptions);
  if (!parsed) return UsageError("audit", parsed.error().message());
  if (parsed->Has("--help") || parsed->positional.empty()) {
    fmt::print("{}", kUsage);
    return parsed->Has("--help") ? kExitOk : kExitUsage;
  }
  const std::string& verb = parsed->positional[0];
  if (parsed->positional.size() > 1) {
    return UsageError("audit " + verb,
                      fmt::format("unexpected argument '{}'", parsed->positional[1]));
  }
  if (verb == "list") return List(*parsed);
  if (verb == "verify") return Verify(*parsed);
  return UsageError("audit", fmt::format("unknown subcommand '{}'", verb));
}

}  // namespace ralph::ralphctl
