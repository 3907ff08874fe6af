#include "services/ralphd/terminals.h"

namespace ralph::ralphd {

TerminalAttachment TerminalHub::Attach(uint64_t job, std::string caller,
                                       TerminalCallbacks callbacks) {
  auto entry = std::make_shared<Entry>();
  entry->attachment = {.id = ++next_id_, .job = job, .caller = std::move(caller)};
  entry->callbacks = std::move(callbacks);
  attachments_[entry->attachment.id] = entry;
  return entry->attachment;
}

std::optional<TerminalAttachment> TerminalHub::Find(uint64_t attachment) const {
  auto it = attachments_.find(attachment);
  if (it == attachments_.end()) return std::nullopt;
  return it->second->attachment;
}

std::optional<TerminalAttachment> TerminalHub::Detach(uint64_t attachment) {
  auto it = attachments_.find(attachment);
  if (it == attachments_.end()) return std::nullopt;
  TerminalAttachment gone = it->second->attachment;
  attachments_.erase(it);
  return gone;
}

std::vector<uint64_t> TerminalHub::Of(uint64_t job) const {
  std::vector<uint64_t> ids;
  for (const auto& [id, entry] : attachments_) {
    if (entry->attachment.job == job) ids.push_back(id);
  }
  return ids;
}

void TerminalHub::Output(uint64_t job, std::string_view output) {
  for (uint64_t id : Of(job)) {
    auto it = attachments_.find(id);
    if (it == attachments_.end()) continue;  // detached by an earlier callback
    // Held: the callback may detach this very attachment.
    std::shared_ptr<Entry> entry = it->second;
    if (entry->callbacks.output) entry->callbacks.output(output);
  }
}

std::vector<TerminalAttachment> TerminalHub::Close(uint64_t job, int exit_status) {
  input_.erase(job);
  sizes_.erase(job);
  std::vector<TerminalAttachment> closed;
  for (uint64_t id : Of(job)) {
    auto it = attachments_.find(id);
    if (it == attachments_.end()) continue;
    std::shared_ptr<Entry> entry = it->second;
    attachments_.erase(it);
    closed.push_back(entry->attachment);
    if (entry->callbacks.closed) entry->callbacks.closed(exit_status);
  }
  return closed;
}

bool TerminalHub::QueueInput(uint64_t job, std::string_view input, size_t max_bytes) {
  std::string& queued = input_[job];
  if (queued.size() + input.size() > max_bytes) return false;
  queued.append(input);
  return true;
}

std::string TerminalHub::TakeInput(uint64_t job) {
  auto it = input_.find(job);
  if (it == input_.end()) return "";
  std::string input = std::move(it->second);
  input_.erase(it);
  return input;
}

void TerminalHub::SetSize(uint64_t job, uint16_t columns, uint16_t rows) {
  sizes_[job] = {columns, rows};
}

std::optional<std::pair<uint16_t, uint16_t>> TerminalHub::TakeSize(uint64_t job) {
  auto it = sizes_.find(job);
  if (it == sizes_.end()) return std::nullopt;
  auto size = it->second;
  sizes_.erase(it);
  return size;
}

}  // namespace ralph::ralphd
