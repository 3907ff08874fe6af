#include "services/audit/canonical_json.h"

namespace ralph::audit {

std::string CanonicalJson(const nlohmann::json& value) {
  // nlohmann's objects are std::maps (keys sorted bytewise); compact dump;
  // ensure_ascii off; invalid UTF-8 replaced rather than thrown (exceptions
  // are off in this tree).
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace ralph::audit
