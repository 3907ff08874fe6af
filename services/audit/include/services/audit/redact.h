// Redaction of secrets before an audit event is stored: a chained row can
// never be edited later, so no secret may reach it. Pure functions; the audit log runs
// them on every event's subject and details before hashing and storing.
//
// What is redacted:
//   - the value of any JSON member whose key names a secret (IsSecretKeyName):
//     replaced whole by "[REDACTED]", whatever its type (objects too);
//   - inside every string (any key, arrays, the subject): PEM private key
//     blocks, "Bearer <token>" credentials, JSON Web Tokens, the password in
//     a URL's user-info (https://user:pw@host) and URL query parameters whose
//     name is a secret key name (?access_token=...), header lines with a
//     secret name ("Authorization: Basic ...", "X-Api-Key: ..."; an
//     authentication scheme word stays), and options and assignments with
//     a secret name wherever a word starts ("--token=abc", "-password=x",
//     "GITHUB_TOKEN=abc", "--api-key abc" unless the next word is an option);
//   - in a command line (RedactArgv), also the argument after an option
//     with a secret name ("--api-key", "abc"), whatever it is.
// Other values are kept: the log is for people to read. Redaction errs on
// the side of secrecy: "--password-file /etc/pw" loses the path.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ralph::audit {

inline constexpr std::string_view kRedacted = "[REDACTED]";
inline constexpr std::string_view kRedactedPrivateKey = "[REDACTED PRIVATE KEY]";

// A key names a secret when one of its words (split at non-alphanumerics and
// lower-to-upper case changes: "accessToken" -> access, token) is "key", or
// ends with token, secret(s), password, passwd, passphrase, cookie(s),
// authorization, apikey, privatekey or credential(s). So "api_key",
// "Authorization", "set-cookie", "db_password", "accessToken" are secret;
// "keyring", "max_tokens", "monkey" are not.
bool IsSecretKeyName(std::string_view key);

// `text` with the secret-looking parts listed above replaced.
std::string RedactText(std::string_view text);

// A command line (argv) with secrets redacted: RedactText on every argument,
// and the argument after an option with a secret name ("--token", "-key")
// replaced whole.
std::vector<std::string> RedactArgv(const std::vector<std::string>& argv);

// A copy of `value` with secret members and secret-looking strings redacted
// (recursively through objects and arrays).
nlohmann::json RedactJson(const nlohmann::json& value);

// False only when RedactJson(value) would equal `value`: nothing secret in
// it. Cheaper than RedactJson (no copy is built), so the common case, a
// value without secrets, is used as it is. May say true for a value that
// redacts to itself (a secret member already "[REDACTED]").
bool NeedsRedaction(const nlohmann::json& value);

}  // namespace ralph::audit
