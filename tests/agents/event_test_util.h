// Helpers of the agents tests: a whole byte stream through a parser, the
// events as their JSON form, and the events of one type.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "services/agents/parser.h"

namespace ralph::agents {

inline std::vector<nlohmann::json> ToJson(const std::vector<AgentEvent>& events) {
  std::vector<nlohmann::json> out;
  for (const AgentEvent& event : events) out.push_back(EventToJson(event));
  return out;
}

// `bytes` fed whole, then Finish.
inline std::vector<nlohmann::json> Parse(AgentKind kind, std::string_view bytes,
                                         const EventLimits& limits = {}) {
  std::unique_ptr<EventParser> parser = MakeEventParser(kind, limits);
  std::vector<AgentEvent> events;
  parser->Feed(bytes, events);
  parser->Finish(events);
  return ToJson(events);
}

// Every event of `type`, in order.
inline std::vector<nlohmann::json> OfType(const std::vector<nlohmann::json>& events,
                                          const std::string& type) {
  std::vector<nlohmann::json> out;
  for (const nlohmann::json& event : events) {
    if (event["type"] == type) out.push_back(event);
  }
  return out;
}

}  // namespace ralph::agents
