// ralph-login-standin: a stand-in for an agent CLI's own login and for the
// token refresh its runs make, for the credential tests. It needs no network
// or account and behaves as the real tools do where it matters:
//
//   ralph-login-standin auth login     (as `claude auth login`)
//   ralph-login-standin login --device-auth   (as `codex login --device-auth`)
//       prints a URL and a device code, waits for a code pasted on its
//       terminal (a line "STANDIN-<word>"), and writes the credential file
//       (0600) with an access token and a refresh token;
//   ralph-login-standin -p ... [--] PROMPT   (as `claude -p`, an agent run)
//       reads the credential file, presents its refresh token to the token
//       "server" and saves the rotated one as Claude Code does: a new file
//       renamed over the old one (so the file's directory must be writable,
//       and the file cannot be a bind mount of its own), then prints a
//       stream-json init and result.
//
// The token server is a directory (RALPH_STANDIN_TOKEN_SERVER, mounted into
// the jobs): `valid` holds the one refresh token that works, as at a real
// provider where each refresh token works once; a run presenting any other
// token is logged out (exit 1), which is what copies of a credential in
// several sandboxes would cause. Each run appends "<old> -> <new>" to `log`.
//
// Environment:
//   RALPH_STANDIN_CREDENTIAL_FILE  relative to $HOME, default
//                                  .claude/.credentials.json
//   RALPH_STANDIN_TOKEN_SERVER     the server directory (agent runs: required)
//   RALPH_STANDIN_HOLD             a path: an agent run, after its refresh,
//                                  waits until this file exists (so a test
//                                  holds the account as long as it needs)
//
// Linked statically, like the stand-in agent, so it runs in any root.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

namespace {

using nlohmann::json;

std::string Env(const char* name, const std::string& fallback = "") {
  const char* value = std::getenv(name);
  return value && *value ? std::string(value) : fallback;
}

std::string CredentialPath() {
  return Env("HOME", "/") + "/" + Env("RALPH_STANDIN_CREDENTIAL_FILE", ".claude/.credentials.json");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The token server's files are rewritten in place (open with O_TRUNC).
bool WriteInPlace(const std::string& path, const std::string& content) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ::fsync(fd) == 0 && ok;
  return ::close(fd) == 0 && ok;
}

// A new file beside the old one, synced, renamed over it.
bool SaveByRename(const std::string& path, const std::string& content) {
  std::string temp = path + ".tmp." + std::to_string(::getpid());
  if (!WriteInPlace(temp, content)) return false;
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    ::unlink(temp.c_str());
    return false;
  }
  return true;
}

std::string Trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

json Credential(const std::string& refresh, unsigned generation) {
  return {{"claudeAiOauth",
           {{"accessToken", "standin-access-" + std::to_string(generation)},
            {"refreshToken", refresh},
            {"expiresAt", 4102444800000},
            {"scopes", {"user:inference"}}}}};
}

int Login() {
  // A device code and a URL, then the paste, as the real flows print them.
  std::cout << "Sign in to the stand-in provider.\n"
            << "Open this URL in a browser:\n"
            << "  https://login.standin.invalid/oauth/authorize?client_id=ralph-standin\n"
            << "Device code: ABCD-1234\n"
            << "Paste the code shown after you sign in: " << std::flush;
  std::string code;
  if (!std::getline(std::cin, code)) {
    std::cerr << "\nerror: no code was entered\n";
    return 1;
  }
  code = Trim(code);
  if (code.rfind("STANDIN-", 0) != 0 || code.size() == 8) {
    std::cerr << "error: '" << code << "' is not a valid code (expected STANDIN-...)\n";
    return 1;
  }
  std::string refresh = "standin-refresh-1-" + code.substr(8);
  std::string path = CredentialPath();
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (!SaveByRename(path, Credential(refresh, 1).dump(2) + "\n")) {
    std::cerr << "error: cannot write " << path << "\n";
    return 1;
  }
  std::string server = Env("RALPH_STANDIN_TOKEN_SERVER");
  if (!server.empty() && !WriteInPlace(server + "/valid", refresh + "\n")) {
    std::cerr << "error: the token server is unreachable\n";
    return 1;
  }
  std::cout << "\nLogin successful. Credentials saved.\n";
  return 0;
}

void Print(const json& message) {
  std::cout << message.dump() << '\n' << std::flush;
}

int Run() {
  std::string path = CredentialPath();
  json credential = json::parse(ReadFile(path), nullptr, false);
  if (credential.is_discarded() || !credential.contains("claudeAiOauth")) {
    Print({{"type", "result"},
           {"subtype", "error_during_execution"},
           {"is_error", true},
           {"result", "Not logged in · Please run /login"}});
    return 1;
  }
  std::string server = Env("RALPH_STANDIN_TOKEN_SERVER");
  if (server.empty()) {
    std::cerr << "error: RALPH_STANDIN_TOKEN_SERVER is not set\n";
    return 2;
  }
  std::string presented = credential["claudeAiOauth"].value("refreshToken", "");
  std::string valid = Trim(ReadFile(server + "/valid"));
  if (presented.empty() || presented != valid) {
    Print({{"type", "result"},
           {"subtype", "error_during_execution"},
           {"is_error", true},
           {"result", "OAuth refresh failed: refresh token already used (logged out)"}});
    std::ofstream(server + "/log", std::ios::app) << presented << " -> refused\n";
    return 1;
  }
  // standin-refresh-<generation>-<code>: the next generation.
  unsigned generation = 1;
  std::string rest;
  if (std::sscanf(presented.c_str(), "standin-refresh-%u-", &generation) != 1) generation = 1;
  size_t dash = presented.find('-', std::string("standin-refresh-").size());
  rest = dash == std::string::npos ? "x" : presented.substr(dash + 1);
  std::string rotated = "standin-refresh-" + std::to_string(generation + 1) + "-" + rest;
  // The server first (the old token is spent), then the file, as a real
  // refresh goes.
  if (!WriteInPlace(server + "/valid", rotated + "\n") ||
      !SaveByRename(path, Credential(rotated, generation + 1).dump(2) + "\n")) {
    std::cerr << "error: cannot store the refreshed token\n";
    return 1;
  }
  std::ofstream(server + "/log", std::ios::app) << presented << " -> " << rotated << "\n";
  Print({{"type", "system"},
         {"subtype", "init"},
         {"session_id", "standin-login-session"},
         {"model", "claude-standin-1"},
         {"cwd", std::filesystem::current_path().string()},
         {"tools", json::array()}});
  std::string hold = Env("RALPH_STANDIN_HOLD");
  if (!hold.empty()) {
    // Waits on the state the test sets, not on a time.
    while (!std::filesystem::exists(hold)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  Print({{"type", "result"},
         {"subtype", "success"},
         {"is_error", false},
         {"result", "refreshed to generation " + std::to_string(generation + 1)},
         {"num_turns", 1},
         {"usage", {{"input_tokens", 10}, {"output_tokens", 5}}}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string first = argc > 1 ? argv[1] : "";
  std::string second = argc > 2 ? argv[2] : "";
  if ((first == "auth" && second == "login") || first == "login") return Login();
  if (first == "-p" || first == "--print") return Run();
  std::cerr << "usage: ralph-login-standin auth login | login --device-auth | -p ... PROMPT\n";
  return 2;
}
