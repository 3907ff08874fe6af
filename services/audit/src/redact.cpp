#include "services/audit/redact.h"

#include <array>
#include <cctype>
#include <vector>

namespace ralph::audit {
namespace {

// ASCII classes, as <cctype>'s in the "C" locale the programs run in, but
// inline and the same whatever locale a process sets.
bool IsUpper(char c) {
  return c >= 'A' && c <= 'Z';
}
char Lower(char c) {
  return IsUpper(c) ? static_cast<char>(c - 'A' + 'a') : c;
}
bool IsAlnum(char c) {
  return IsUpper(c) || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool IsSpace(char c) {
  return c == ' ' || c == '\t';
}

// Calls `visit` with each word of an identifier, as a view into it, until
// it returns true: "accessToken" -> access, Token; "X-Api-Key" -> X, Api,
// Key; "db_password" -> db, password. A word ends at a non-alphanumeric and
// before an upper-case letter that follows a lower-case one or a digit.
template <typename Visit>
bool AnyWord(std::string_view key, Visit visit) {
  size_t start = 0;
  for (size_t i = 0; i <= key.size(); ++i) {
    bool separator = i == key.size() || !IsAlnum(key[i]);
    bool case_change = !separator && i > start && IsUpper(key[i]) && !IsUpper(key[i - 1]);
    if (separator || case_change) {
      if (i > start && visit(key.substr(start, i - start))) return true;
      start = separator ? i + 1 : i;
    }
  }
  return false;
}

bool EndsWithIgnoringCase(std::string_view text, std::string_view suffix) {
  if (text.size() < suffix.size()) return false;
  size_t at = text.size() - suffix.size();
  for (size_t i = 0; i < suffix.size(); ++i) {
    if (Lower(text[at + i]) != suffix[i]) return false;
  }
  return true;
}

bool StartsWithIgnoringCase(std::string_view text, size_t at, std::string_view prefix) {
  if (text.size() - at < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (Lower(text[at + i]) != prefix[i]) return false;
  }
  return true;
}

bool ContainsIgnoringCase(std::string_view text, std::string_view lower) {
  for (size_t at = 0; at + lower.size() <= text.size(); ++at) {
    if (StartsWithIgnoringCase(text, at, lower)) return true;
  }
  return false;
}

// A ':' then a blank: what every header line RedactHeaders changes has.
bool HasHeaderSeparator(std::string_view text) {
  for (size_t colon = text.find(':'); colon != std::string_view::npos;
       colon = text.find(':', colon + 1)) {
    if (colon + 1 < text.size() && IsSpace(text[colon + 1])) return true;
  }
  return false;
}

// Characters of a bearer token (RFC 6750 b64token) or a JWT.
bool IsTokenChar(char c) {
  return IsAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' ||
         c == '=';
}

// PEM private key blocks: "-----BEGIN <label>-----" ... "-----END <label>-----"
// where the label mentions PRIVATE KEY (RSA, EC, ENCRYPTED, OPENSSH, plain).
// An unterminated block is redacted to the end of the text: a cut-off key is
// still a secret.
std::string RedactPrivateKeys(std::string_view text) {
  constexpr std::string_view kBegin = "-----BEGIN ";
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t begin = text.find(kBegin, pos);
    if (begin == std::string_view::npos) break;
    size_t label_start = begin + kBegin.size();
    size_t label_end = text.find("-----", label_start);
    if (label_end == std::string_view::npos) break;
    std::string_view label = text.substr(label_start, label_end - label_start);
    if (label.find("PRIVATE KEY") == std::string_view::npos) {
      out.append(text.substr(pos, label_end - pos));
      pos = label_end;
      continue;
    }
    out.append(text.substr(pos, begin - pos));
    out.append(kRedactedPrivateKey);
    std::string end_marker = "-----END " + std::string(label) + "-----";
    size_t end = text.find(end_marker, label_end + 5);
    pos = end == std::string_view::npos ? text.size() : end + end_marker.size();
  }
  if (pos < text.size()) out.append(text.substr(pos));
  return out;
}

// "Bearer <token>" (any case) -> "Bearer [REDACTED]".
std::string RedactBearer(std::string_view text) {
  constexpr std::string_view kBearer = "bearer";
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    bool word_start = i == 0 || !IsAlnum(text[i - 1]);
    if (word_start && StartsWithIgnoringCase(text, i, kBearer)) {
      size_t j = i + kBearer.size();
      size_t spaces = j;
      while (spaces < text.size() && IsSpace(text[spaces])) ++spaces;
      size_t token_end = spaces;
      while (token_end < text.size() && IsTokenChar(text[token_end])) ++token_end;
      if (spaces > j && token_end > spaces) {
        out.append(text.substr(i, spaces - i));
        out.append(kRedacted);
        i = token_end;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

// JSON Web Tokens: "eyJ" (base64 of '{"') then three dot-separated
// base64url parts.
std::string RedactJwts(std::string_view text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    bool word_start = i == 0 || !IsTokenChar(text[i - 1]);
    if (word_start && text.substr(i, 3) == "eyJ") {
      size_t end = i;
      int dots = 0;
      while (end < text.size() && IsTokenChar(text[end])) {
        if (text[end] == '.') ++dots;
        ++end;
      }
      if (dots >= 2 && end - i >= 20) {
        out.append(kRedacted);
        i = end;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

// URLs: the password in "scheme://user:password@host" and the values of
// query parameters named like secrets.
std::string RedactUrls(std::string_view text) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t scheme = text.find("://", pos);
    if (scheme == std::string_view::npos) break;
    size_t authority = scheme + 3;
    size_t url_end = authority;
    while (url_end < text.size() && !std::isspace(static_cast<unsigned char>(text[url_end])) &&
           text[url_end] != '"' && text[url_end] != '\'' && text[url_end] != '>') {
      ++url_end;
    }
    out.append(text.substr(pos, authority - pos));
    std::string_view url = text.substr(authority, url_end - authority);
    // User-info ends at the first '@' before the path.
    size_t path_start = url.find_first_of("/?#");
    size_t at = url.substr(0, path_start).rfind('@');
    if (at != std::string_view::npos) {
      size_t colon = url.substr(0, at).find(':');
      if (colon != std::string_view::npos) {
        out.append(url.substr(0, colon + 1));
        out.append(kRedacted);
        url = url.substr(at);
      }
    }
    // Query parameters: name=value pairs after '?' separated by '&' or ';'.
    size_t query = url.find('?');
    out.append(url.substr(0, query == std::string_view::npos ? url.size() : query + 1));
    if (query != std::string_view::npos) {
      std::string_view rest = url.substr(query + 1);
      size_t fragment = rest.find('#');
      std::string_view params = rest.substr(0, fragment);
      size_t start = 0;
      while (start <= params.size()) {
        size_t sep = params.find_first_of("&;", start);
        size_t stop = sep == std::string_view::npos ? params.size() : sep;
        std::string_view param = params.substr(start, stop - start);
        size_t eq = param.find('=');
        if (eq != std::string_view::npos && IsSecretKeyName(param.substr(0, eq))) {
          out.append(param.substr(0, eq + 1));
          out.append(kRedacted);
        } else {
          out.append(param);
        }
        if (sep == std::string_view::npos) break;
        out += params[sep];
        start = sep + 1;
      }
      if (fragment != std::string_view::npos) out.append(rest.substr(fragment));
    }
    pos = url_end;
  }
  if (pos < text.size()) out.append(text.substr(pos));
  return out;
}

// Where a command-line word may start: the text's start, after blanks,
// quotes and the shell's separators.
bool IsWordBoundary(char c) {
  return std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\'' || c == ';' ||
         c == '&' || c == '|' || c == '(' || c == ',';
}

bool IsOptionNameChar(char c) {
  return IsAlnum(c) || c == '_' || c == '-' || c == '.';
}

// The end of the value starting at `start`: a quoted value runs to its
// closing quote (exclusive), a bare one to the next word boundary.
size_t ValueEnd(std::string_view text, size_t start) {
  if (start < text.size() && (text[start] == '"' || text[start] == '\'')) {
    size_t close = text.find(text[start], start + 1);
    return close == std::string_view::npos ? text.size() : close;
  }
  size_t end = start;
  while (end < text.size() && !IsWordBoundary(text[end])) ++end;
  return end;
}

// Options and assignments with a secret name, wherever a word starts:
// "--token=abc", "-password=abc", "GITHUB_TOKEN=abc" (NAME=value, env-like),
// and "--api-key abc" (the value in the next word, unless that is another
// option). The name stays, the value goes.
std::string RedactAssignments(std::string_view text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (i == 0 || IsWordBoundary(text[i - 1])) {
      size_t name = i;
      while (name < text.size() && name - i < 2 && text[name] == '-') ++name;
      size_t name_end = name;
      while (name_end < text.size() && IsOptionNameChar(text[name_end])) ++name_end;
      bool dashed = name > i;
      if (name_end > name && IsAlnum(text[name]) &&
          IsSecretKeyName(text.substr(name, name_end - name))) {
        size_t value = std::string_view::npos;
        if (name_end < text.size() && text[name_end] == '=') {
          value = name_end + 1;
        } else if (dashed && name_end < text.size() && IsSpace(text[name_end])) {
          size_t next = name_end;
          while (next < text.size() && IsSpace(text[next])) ++next;
          if (next < text.size() && text[next] != '-') value = next;
        }
        if (value != std::string_view::npos) {
          bool quoted = value < text.size() && (text[value] == '"' || text[value] == '\'');
          size_t start = quoted ? value + 1 : value;
          size_t end = ValueEnd(text, value);
          if (end > start) {
            out.append(text.substr(i, start - i));
            out.append(kRedacted);
            i = end;
            continue;
          }
        }
      }
    }
    out += text[i++];
  }
  return out;
}

// Header lines with a secret name ("Authorization: Basic dXNl",
// "X-Api-Key: abc") at the start of the text or of a line: the value goes to
// the line's end; an authentication scheme in front of it stays.
std::string RedactHeaders(std::string_view text) {
  static constexpr std::array<std::string_view, 5> kSchemes = {"basic", "bearer", "digest", "token",
                                                               "negotiate"};
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (i == 0 || text[i - 1] == '\n') {
      size_t name_end = i;
      while (name_end < text.size() &&
             (IsAlnum(text[name_end]) || text[name_end] == '-' || text[name_end] == '_'))
        ++name_end;
      if (name_end > i && name_end + 1 < text.size() && text[name_end] == ':' &&
          IsSpace(text[name_end + 1]) && IsSecretKeyName(text.substr(i, name_end - i))) {
        size_t value = name_end + 1;
        while (value < text.size() && IsSpace(text[value])) ++value;
        for (std::string_view scheme : kSchemes) {
          if (StartsWithIgnoringCase(text, value, scheme) && value + scheme.size() < text.size() &&
              IsSpace(text[value + scheme.size()])) {
            value += scheme.size();
            while (value < text.size() && IsSpace(text[value])) ++value;
            break;
          }
        }
        size_t end = text.find('\n', value);
        if (end == std::string_view::npos) end = text.size();
        if (end > value) {
          out.append(text.substr(i, value - i));
          out.append(kRedacted);
          i = end;
          continue;
        }
      }
    }
    out += text[i++];
  }
  return out;
}

}  // namespace

bool IsSecretKeyName(std::string_view key) {
  static constexpr std::array<std::string_view, 13> kSecretEndings = {
      "token",   "secret",        "secrets", "password",   "passwd",     "passphrase", "cookie",
      "cookies", "authorization", "apikey",  "privatekey", "credential", "credentials"};
  return AnyWord(key, [](std::string_view word) {
    if (word.size() == 3 && EndsWithIgnoringCase(word, "key")) return true;
    for (std::string_view ending : kSecretEndings) {
      if (EndsWithIgnoringCase(word, ending)) return true;
    }
    return false;
  });
}

std::string RedactText(std::string_view text) {
  // Each pass only changes text that has its marker (a PEM header, ": "
  // for header lines, "://", "bearer", "eyJ", a '=' or an option's '-'), so
  // a pass is skipped when the text so far has none: most strings (a job id,
  // a state, a path) are copied once and scanned for markers, not rebuilt
  // six times character by character.
  auto has = [](std::string_view in, std::string_view marker) {
    return in.find(marker) != std::string_view::npos;
  };
  // Private keys first: their base64 body must not be taken for other tokens.
  std::string out(text);
  if (has(out, "-----BEGIN ")) out = RedactPrivateKeys(out);
  if (HasHeaderSeparator(out)) out = RedactHeaders(out);
  if (has(out, "://")) out = RedactUrls(out);
  if (ContainsIgnoringCase(out, "bearer")) out = RedactBearer(out);
  if (has(out, "eyJ")) out = RedactJwts(out);
  if (out.find_first_of("=-") != std::string::npos) out = RedactAssignments(out);
  return out;
}

std::vector<std::string> RedactArgv(const std::vector<std::string>& argv) {
  std::vector<std::string> out;
  out.reserve(argv.size());
  bool value_next = false;
  for (const std::string& arg : argv) {
    if (value_next) {
      out.emplace_back(kRedacted);
      value_next = false;
      continue;
    }
    // "--api-key" "abc": the option's value is the next argument, whatever
    // it looks like.
    size_t name = arg.find_first_not_of('-');
    if (name != std::string::npos && name > 0 && name <= 2 && IsAlnum(arg[name]) &&
        arg.find_first_of("= \t", name) == std::string::npos &&
        IsSecretKeyName(std::string_view(arg).substr(name))) {
      value_next = true;
      out.push_back(arg);
      continue;
    }
    out.push_back(RedactText(arg));
  }
  return out;
}

bool NeedsRedaction(const nlohmann::json& value) {
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    return RedactText(text) != text;
  }
  if (value.is_array()) {
    for (const auto& element : value) {
      if (NeedsRedaction(element)) return true;
    }
    return false;
  }
  if (value.is_object()) {
    for (const auto& [key, member] : value.items()) {
      // As RedactJson: a secret-named member is replaced unless it is null.
      if (IsSecretKeyName(key) ? !member.is_null() : NeedsRedaction(member)) return true;
    }
  }
  return false;
}

nlohmann::json RedactJson(const nlohmann::json& value) {
  if (value.is_string()) return RedactText(value.get_ref<const std::string&>());
  if (value.is_array()) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& element : value) out.push_back(RedactJson(element));
    return out;
  }
  if (value.is_object()) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [key, member] : value.items()) {
      out[key] = IsSecretKeyName(key) && !member.is_null() ? nlohmann::json(kRedacted)
                                                           : RedactJson(member);
    }
    return out;
  }
  return value;
}

}  // namespace ralph::audit
