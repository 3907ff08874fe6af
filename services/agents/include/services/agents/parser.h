// Streaming parsers of the agents' JSON event streams (one JSON object a
// line): bytes in, in chunks split anywhere, typed job events out.
//
//   std::unique_ptr<EventParser> parser = MakeEventParser(AgentKind::kClaude);
//   std::vector<AgentEvent> events;
//   parser->Feed(chunk, events);   // as the job writes its stdout
//   parser->Finish(events);        // at the end: a last line without '\n'
//
// The same bytes give the same events however they are split. A line that
// does not parse, nests deeper than EventLimits::max_depth or is longer than
// EventLimits::max_line_bytes becomes a ParseErrorEvent; memory stays bounded
// by max_line_bytes. Blank lines are skipped. Which tool line becomes which
// event is in docs/agent-profiles.md.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "services/agents/events.h"
#include "services/agents/profile.h"

namespace ralph::agents {

class EventParser {
 public:
  virtual ~EventParser() = default;
  // Parses the complete lines in `bytes` (with what earlier calls left).
  virtual void Feed(std::string_view bytes, std::vector<AgentEvent>& out) = 0;
  // The end of the stream: parses a last line that had no newline.
  virtual void Finish(std::vector<AgentEvent>& out) = 0;
};

// The parser of `kind`'s event format; the command profile's output is not
// an event stream, so its parser turns nothing into events.
std::unique_ptr<EventParser> MakeEventParser(AgentKind kind, const EventLimits& limits = {});

}  // namespace ralph::agents
