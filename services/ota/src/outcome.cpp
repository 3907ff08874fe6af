#include "services/ota/outcome.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "platform/file_io.h"
#include "platform/unique_fd.h"

namespace ralph::ota {
namespace {

Result<UpdateOutcome> ParseOutcome(std::string_view text) {
  for (UpdateOutcome o :
       {UpdateOutcome::kPendingTrial, UpdateOutcome::kCommitted, UpdateOutcome::kRolledBack}) {
    if (UpdateOutcomeName(o) == text) return o;
  }
  return Error::Make(ErrorCode::kCorrupt, fmt::format("unknown update outcome '{}'", text));
}

}  // namespace

std::string_view UpdateOutcomeName(UpdateOutcome outcome) {
  switch (outcome) {
    case UpdateOutcome::kPendingTrial: return "pending-trial";
    case UpdateOutcome::kCommitted: return "committed";
    case UpdateOutcome::kRolledBack: return "rolled-back";
  }
  return "pending-trial";
}

UpdateRecord PendingUpdate(std::string version, boot::Slot target, std::string source) {
  UpdateRecord record;
  record.target = target;
  record.from = boot::OtherSlot(target);
  record.summary = fmt::format(
      "the update to version {} was installed in slot {}; its trial boot "
      "is pending",
      version, boot::SlotName(target));
  record.version = std::move(version);
  record.source = std::move(source);
  return record;
}

std::string UpdateRecordToJson(const UpdateRecord& record) {
  nlohmann::json json = {
      {"version", record.version},
      {"target", std::string(boot::SlotName(record.target))},
      {"from", std::string(boot::SlotName(record.from))},
      {"source", record.source},
      {"outcome", std::string(UpdateOutcomeName(record.outcome))},
      {"summary", record.summary},
  };
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<UpdateRecord> UpdateRecordFromJson(std::string_view text) {
  auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return Error::Make(ErrorCode::kCorrupt, "update record is not a JSON object");
  }
  static constexpr std::string_view kFields[] = {"version", "target",  "from",
                                                 "source",  "outcome", "summary"};
  for (const auto& [key, value] : json.items()) {
    if (std::find(std::begin(kFields), std::end(kFields), key) == std::end(kFields)) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("update record: unknown field '{}'", key));
    }
  }
  for (std::string_view field : kFields) {
    auto it = json.find(std::string(field));
    if (it == json.end() || !it->is_string()) {
      return Error::Make(ErrorCode::kCorrupt,
                         fmt::format("update record: field '{}' missing or not a string", field));
    }
  }
  UpdateRecord record;
  record.version = json["version"].get<std::string>();
  record.target =
      TRY_CTX(boot::ParseSlot(json["target"].get<std::string>()), "update record: target");
  record.from = TRY_CTX(boot::ParseSlot(json["from"].get<std::string>()), "update record: from");
  record.source = json["source"].get<std::string>();
  record.outcome =
      TRY_CTX(ParseOutcome(json["outcome"].get<std::string>()), "update record: outcome");
  record.summary = json["summary"].get<std::string>();
  return record;
}

Result<UpdateRecord> ReadUpdateRecord(const std::string& path) {
  std::string text = TRY(ReadWholeFile(path));
  return TRY_CTX(UpdateRecordFromJson(text), fmt::format("reading {}", path));
}

Result<void> WriteUpdateRecord(const std::string& path, const UpdateRecord& record) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error::FromErrno(fmt::format("mkdir {}", dir), ec.value());
  // On VAR: the record must survive a power cut right after the install.
  return WriteFileAtomically(path, UpdateRecordToJson(record) + "\n", 0644,
                             Durability::kFileAndDirectorySynced);
}

std::optional<UpdateRecord> SettleOutcome(const UpdateRecord& record,
                                          const boot::SlotState& state) {
  if (record.outcome != UpdateOutcome::kPendingTrial) return std::nullopt;
  const boot::SlotRecord& target = state.slot(record.target);
  if (target.version.ToString() != record.version) return std::nullopt;  // rewritten since
  UpdateRecord settled = record;
  std::string_view slot = boot::SlotName(record.target);
  if (target.status == boot::SlotStatus::kBad) {
    boot::Slot back = state.committed.value_or(record.from);
    settled.outcome = UpdateOutcome::kRolledBack;
    settled.summary = fmt::format(
        "the update to version {} in slot {} failed its trial (slot {} is marked bad); the "
        "system rolled back to slot {}",
        record.version, slot, slot, boot::SlotName(back));
    return settled;
  }
  if (target.status == boot::SlotStatus::kGood && state.committed == record.target) {
    settled.outcome = UpdateOutcome::kCommitted;
    settled.summary =
        fmt::format("the update to version {} in slot {} passed its trial and is committed",
                    record.version, slot);
    return settled;
  }
  return std::nullopt;
}

}  // namespace ralph::ota
