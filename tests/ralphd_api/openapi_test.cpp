// services/ralphd/api/openapi.json against the code: the routes it lists
// are exactly the server's own (ServerRoutes) and the core's (CoreRoutes);
// each core route's query parameters and body fields are the route table's,
// with the same types and bounds; and requests derived from the document
// alone (every documented parameter and field set) are accepted by the
// core's decoder, while one undocumented parameter or field is refused.
#include <gtest/gtest.h>

#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "services/ralphd/api/dispatcher_handler.h"
#include "services/ralphd/api/server.h"
#include "services/ralphd/commands.h"

namespace ralph::ralphd::api {
namespace {

using nlohmann::json;

json Document() {
  json document = json::parse(OpenApiDocument(), nullptr, false);
  EXPECT_TRUE(document.is_object()) << "openapi.json is not JSON";
  return document.is_object() ? document : json::object();
}

std::string Upper(std::string text) {
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}
std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool ServedByTheServer(std::string_view method, std::string_view path) {
  for (const RouteInfo& route : ServerRoutes()) {
    if (route.method == method && route.path == path) return true;
  }
  return false;
}

// A schema as the route table says it must be documented (descriptions and
// examples are the document's own and not compared).
json SchemaOf(const ralphd::FieldInfo& field);

json ObjectSchema(std::span<const ralphd::FieldInfo> fields) {
  json schema = {{"type", "object"}, {"additionalProperties", false}};
  json required = json::array();
  json properties = json::object();
  for (const ralphd::FieldInfo& field : fields) {
    if (field.required) required.push_back(field.name);
    properties[std::string(field.name)] = SchemaOf(field);
  }
  if (!required.empty()) schema["required"] = required;
  schema["properties"] = properties;
  return schema;
}

json SchemaOf(const ralphd::FieldInfo& field) {
  switch (field.type) {
    case ralphd::ValueType::kUnsigned:
      return {{"type", "integer"}, {"minimum", field.min}, {"maximum", field.max}};
    case ralphd::ValueType::kString: {
      json schema = {{"type", "string"}, {"maxLength", field.max}};
      if (!field.pattern.empty()) schema["pattern"] = field.pattern;
      return schema;
    }
    case ralphd::ValueType::kEnum: {
      json values = json::array();
      for (std::string_view value : field.values) values.push_back(value);
      return {{"type", "string"}, {"enum", values}};
    }
    case ralphd::ValueType::kBool: return {{"type", "boolean"}};
    case ralphd::ValueType::kStringArray:
      return {{"type", "array"},
              {"minItems", field.min},
              {"maxItems", field.max},
              {"items", {{"type", "string"}, {"maxLength", field.item_max}}}};
    case ralphd::ValueType::kStringMap:
      return {{"type", "object"},
              {"maxProperties", field.max},
              {"propertyNames", {{"pattern", field.pattern}}},
              {"additionalProperties", {{"type", "string"}, {"maxLength", field.item_max}}}};
    case ralphd::ValueType::kObject: return ObjectSchema(field.fields);
    case ralphd::ValueType::kJson: return json::object();  // any value: its bound is prose
  }
  return json();
}

// The schema without what is prose: descriptions, examples.
json Bare(json schema) {
  if (schema.is_object()) {
    schema.erase("description");
    schema.erase("examples");
    for (auto& [key, value] : schema.items()) value = Bare(value);
  }
  return schema;
}

// A valid value for a documented schema: its example, its minimum, its
// first enum value.
json Sample(const json& schema) {
  if (schema.contains("examples")) return schema["examples"][0];
  if (schema.contains("enum")) return schema["enum"][0];
  std::string type = schema.value("type", "");
  if (type == "integer") return schema.value("minimum", uint64_t{0});
  if (type == "boolean") return true;
  if (type == "array") return json::array({Sample(schema["items"])});
  if (type == "object" && schema.contains("properties")) {
    json object = json::object();
    for (const auto& [name, property] : schema["properties"].items())
      object[name] = Sample(property);
    return object;
  }
  if (type == "object") return json{{"NAME", "value"}};
  return "a";
}

TEST(OpenApiTest, TheDocumentListsExactlyTheServerAndCoreRoutes) {
  json document = Document();
  EXPECT_EQ(document["openapi"], "3.1.0");
  std::set<std::pair<std::string, std::string>> documented, routes;
  for (const auto& [path, operations] : document["paths"].items()) {
    for (const auto& [method, operation] : operations.items()) {
      documented.insert({Upper(method), path});
    }
  }
  for (const RouteInfo& route : ServerRoutes()) {
    routes.insert({std::string(route.method), std::string(route.path)});
  }
  for (const ralphd::RouteInfo& route : ralphd::CoreRoutes()) {
    routes.insert({std::string(route.verb), std::string(route.path)});
  }
  EXPECT_EQ(documented, routes);
}

// Each route the core serves over HTTPS is documented with the route
// table's parameters, body and bounds.
TEST(OpenApiTest, EachCoreRouteIsDocumentedAsTheRouteTableSays) {
  json document = Document();
  for (const ralphd::RouteInfo& route : ralphd::CoreRoutes()) {
    // The server's own handling of these is what HTTPS clients get.
    if (ServedByTheServer(route.verb, route.path)) continue;
    SCOPED_TRACE(fmt::format("{} {}", route.verb, route.path));
    json operation = document["paths"][std::string(route.path)][Lower(route.verb)];
    ASSERT_TRUE(operation.is_object());
    std::map<std::string, json> query;
    std::map<std::string, bool> query_required;
    bool has_id = false;
    for (json parameter : operation.value("parameters", json::array())) {
      if (parameter.contains("$ref")) {
        std::string ref = parameter["$ref"];
        parameter = document["components"]["parameters"][ref.substr(ref.rfind('/') + 1)];
      }
      if (parameter["in"] == "path") {
        has_id = parameter["name"] == "id";
        EXPECT_EQ(Bare(parameter["schema"]),
                  json({{"type", "integer"}, {"minimum", 1}, {"maximum", INT64_MAX}}));
      } else {
        EXPECT_EQ(parameter["in"], "query");
        query[parameter["name"]] = Bare(parameter["schema"]);
        query_required[parameter["name"]] = parameter["required"].get<bool>();
      }
    }
    EXPECT_EQ(has_id, route.path.find("{id}") != std::string_view::npos);
    std::map<std::string, json> expected;
    std::map<std::string, bool> expected_required;
    for (const ralphd::FieldInfo& field : route.query) {
      expected[std::string(field.name)] = SchemaOf(field);
      expected_required[std::string(field.name)] = field.required;
    }
    EXPECT_EQ(query, expected);
    EXPECT_EQ(query_required, expected_required);

    switch (route.body) {
      case ralphd::BodyKind::kNone: EXPECT_FALSE(operation.contains("requestBody")); break;
      case ralphd::BodyKind::kJson:
        EXPECT_EQ(Bare(operation["requestBody"]["content"]["application/json"]["schema"]),
                  ObjectSchema(route.fields));
        break;
      case ralphd::BodyKind::kTar:
        EXPECT_EQ(
            operation["requestBody"]["content"]["application/x-tar"]["schema"],
            json({{"type", "string"}, {"format", "binary"}, {"maxLength", route.max_body_bytes}}));
        break;
    }
  }
}

// Requests made from the document alone: every documented parameter and
// body field is accepted by the core's decoder (as DispatcherHandler hands
// it over: the query percent-decoded by ParseQuery), and one the document
// does not list is refused, named.
TEST(OpenApiTest, TheDecoderAcceptsWhatIsDocumentedAndRefusesWhatIsNot) {
  json document = Document();
  for (const ralphd::RouteInfo& route : ralphd::CoreRoutes()) {
    SCOPED_TRACE(fmt::format("{} {}", route.verb, route.path));
    json operation = document["paths"][std::string(route.path)][Lower(route.verb)];
    ASSERT_TRUE(operation.is_object());
    std::string path(route.path);
    if (size_t at = path.find("{id}"); at != std::string::npos) path.replace(at, 4, "1");
    std::string query_text;
    for (json parameter : operation.value("parameters", json::array())) {
      if (!parameter.contains("in") || parameter["in"] != "query") continue;
      json value = Sample(parameter["schema"]);
      query_text += fmt::format("{}{}={}", query_text.empty() ? "" : "&",
                                parameter["name"].get<std::string>(),
                                value.is_string() ? value.get<std::string>() : value.dump());
    }
    ralphd::Request request{.verb = std::string(route.verb), .path = path};
    if (operation.contains("requestBody")) {
      const json& content = operation["requestBody"]["content"];
      if (content.contains("application/json")) {
        request.body = Sample(content["application/json"]["schema"]).dump();
      } else {
        request.body = "a tar";
      }
    }
    auto query = ParseQuery(query_text);
    ASSERT_TRUE(query) << query.error().ToString();
    request.query = *query;
    Result<ralphd::Command> decoded = ralphd::DecodeRequest(request);
    ASSERT_TRUE(decoded) << query_text << " " << request.body << ": " << decoded.error().ToString();
    EXPECT_EQ(ralphd::CommandName(*decoded), route.command);

    // Every value of a documented enum.
    for (const json& parameter : operation.value("parameters", json::array())) {
      if (!parameter.contains("schema") || !parameter["schema"].contains("enum")) continue;
      for (const json& value : parameter["schema"]["enum"]) {
        ralphd::Request each = request;
        each.query[parameter["name"]] = value.get<std::string>();
        Result<ralphd::Command> accepted = ralphd::DecodeRequest(each);
        EXPECT_TRUE(accepted) << value << ": " << accepted.error().ToString();
      }
    }

    ralphd::Request undocumented = request;
    undocumented.query["undocumented"] = "1";
    Result<ralphd::Command> refused = ralphd::DecodeRequest(undocumented);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().message(), "query.undocumented: unknown parameter");

    if (route.body == ralphd::BodyKind::kTar) continue;
    undocumented = request;
    json body = request.body.empty() ? json::object() : json::parse(request.body);
    body["undocumented"] = 1;
    undocumented.body = body.dump();
    refused = ralphd::DecodeRequest(undocumented);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().message(), "body.undocumented: unknown field");
  }
}

}  // namespace
}  // namespace ralph::ralphd::api
