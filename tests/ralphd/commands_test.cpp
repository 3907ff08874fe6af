// The strict request decoder (services/ralphd/commands.h): every route, and
// every kind of bad input with the error naming the field.
#include "services/ralphd/commands.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace ralph::ralphd {
namespace {

Request Get(std::string path, std::map<std::string, std::string, std::less<>> query = {}) {
  return {.verb = "GET", .path = std::move(path), .query = std::move(query)};
}
Request Post(std::string path, std::string body) {
  return {.verb = "POST", .path = std::move(path), .body = std::move(body)};
}

// The error's message, or "" when the request decoded.
std::string ErrorOf(const Request& request) {
  Result<Command> command = DecodeRequest(request);
  return command ? "" : command.error().message();
}

TEST(DecodeRequest, Status) {
  Result<Command> command = DecodeRequest(Get("/v1/status"));
  ASSERT_TRUE(command) << command.error().message();
  EXPECT_TRUE(std::holds_alternative<StatusCommand>(*command));
  EXPECT_EQ(CommandName(*command), "status");
}

TEST(DecodeRequest, SubmitWithEverything) {
  Result<Command> command = DecodeRequest(Post("/v1/jobs", R"({
      "argv": ["sh", "-c", "echo hi"], "env": {"LANG": "C", "_X1": ""}, "cwd": "/work/src",
      "profile": "build", "start": false,
      "limits": {"memory_bytes": 1048576, "cpu_millis": 500, "pids": 10, "disk_bytes": 4096,
                 "timeout_ms": 1000}})"));
  ASSERT_TRUE(command) << command.error().message();
  const auto& submit = std::get<JobSubmitCommand>(*command);
  EXPECT_EQ(submit.argv, (std::vector<std::string>{"sh", "-c", "echo hi"}));
  EXPECT_EQ(submit.env.at("LANG"), "C");
  EXPECT_EQ(submit.env.at("_X1"), "");
  EXPECT_EQ(submit.cwd, "/work/src");
  EXPECT_EQ(submit.profile, "build");
  EXPECT_FALSE(submit.start);
  EXPECT_EQ(submit.limits.memory_bytes, 1048576u);
  EXPECT_EQ(submit.limits.cpu_millis, 500u);
  EXPECT_EQ(submit.limits.pids, 10u);
  EXPECT_EQ(submit.limits.disk_bytes, 4096u);
  EXPECT_EQ(submit.limits.timeout_ms, 1000u);
}

TEST(DecodeRequest, SubmitWithAnIsolation) {
  Result<Command> command =
      DecodeRequest(Post("/v1/jobs", R"({"argv": ["true"], "isolation": "vm"})"));
  ASSERT_TRUE(command) << command.error().message();
  EXPECT_EQ(std::get<JobSubmitCommand>(*command).isolation, Isolation::kVm);
  command = DecodeRequest(Post("/v1/jobs", R"({"argv": ["true"]})"));
  ASSERT_TRUE(command);
  EXPECT_FALSE(std::get<JobSubmitCommand>(*command).isolation);
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"argv": ["true"], "isolation": "container"})")),
            "body.isolation: 'container' is not one of namespaces, vm");
}

TEST(DecodeRequest, SubmitAnAgentJob) {
  Result<Command> command = DecodeRequest(Post("/v1/jobs", R"({"agent": {"profile": "claude",
      "prompt": "fix it", "model": "opus", "max_turns": 5}})"));
  ASSERT_TRUE(command) << command.error().message();
  const auto& submit = std::get<JobSubmitCommand>(*command);
  ASSERT_TRUE(submit.agent);
  EXPECT_TRUE(submit.argv.empty());
  EXPECT_EQ(submit.agent->profile, "claude");
  EXPECT_EQ(submit.agent->prompt, "fix it");
  EXPECT_EQ(submit.agent->model, "opus");
  EXPECT_EQ(submit.agent->max_turns, 5u);
  command =
      DecodeRequest(Post("/v1/jobs", R"({"argv": ["make"], "agent": {"profile": "command"}})"));
  ASSERT_TRUE(command) << command.error().message();
  EXPECT_EQ(std::get<JobSubmitCommand>(*command).argv, std::vector<std::string>{"make"});

  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({})")), "body.argv: required (or body.agent)");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"prompt": "x"}})")),
            "body.agent.profile: required");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "gpt", "prompt": "x"}})")),
            "body.agent.profile: 'gpt' is not one of claude, codex, opencode, command");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "codex"}})")),
            "body.agent.prompt: required (or body.agent.prompt_file) for the codex profile");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "claude", "prompt": ""}})")),
            "body.agent.prompt: must not be empty");
  EXPECT_EQ(
      ErrorOf(Post("/v1/jobs",
                   R"({"agent": {"profile": "claude", "prompt": "x", "prompt_file": "P.md"}})")),
      "body.agent.prompt_file: give either a prompt or a prompt file, not both");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "claude", "prompt_file": "/P"}})")),
            "body.agent.prompt_file: '/P' is absolute; give a path inside the workspace");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "command"}})")),
            "body.argv: required (the command profile runs the job's argv)");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"argv": ["x"], "agent": {"profile": "command",
                                                                  "prompt": "x"}})")),
            "body.agent.prompt: the command profile takes no prompt (its argv is the command)");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"argv": ["claude"], "agent": {"profile": "claude",
                                                                       "prompt": "x"}})")),
            "body.argv: the claude profile makes the command line; argv goes with profile "
            "command only");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "claude", "prompt": "x"},
                                        "tty": true})")),
            "body.tty: not for an agent job (its stdout is the tool's event stream)");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "claude", "prompt": "x",
                                                   "colour": 1}})")),
            "body.agent.colour: unknown field");
}

TEST(DecodeRequest, SubmitWithAClonedWorkspace) {
  Result<Command> command = DecodeRequest(Post("/v1/jobs", R"({"argv": ["make"],
      "workspace_git": {"url": "https://Git.Example.com:8443/team/app.git", "ref": "v1.2"}})"));
  ASSERT_TRUE(command) << command.error().message();
  const auto& submit = std::get<JobSubmitCommand>(*command);
  ASSERT_TRUE(submit.workspace_git);
  EXPECT_EQ(submit.workspace_git->url, "https://Git.Example.com:8443/team/app.git");
  EXPECT_EQ(submit.workspace_git->ref, "v1.2");
  Result<GitUrl> url = ParseGitUrl(submit.workspace_git->url);
  ASSERT_TRUE(url) << url.error().message();
  EXPECT_TRUE(url->https);
  EXPECT_EQ(url->host, "git.example.com");
  EXPECT_EQ(url->port, 8443);
  url = ParseGitUrl("http://git.example.com/app");
  ASSERT_TRUE(url) << url.error().message();
  EXPECT_FALSE(url->https);
  EXPECT_EQ(url->port, 80);
  EXPECT_EQ(ParseGitUrl("https://git.example.com/app")->port, 443);

  auto error = [](std::string_view git) {
    return ErrorOf(
        Post("/v1/jobs", fmt::format(R"({{"argv": ["true"], "workspace_git": {}}})", git)));
  };
  EXPECT_EQ(error(R"({"url": "ssh://git@host/app.git"})"),
            "body.workspace_git.url: 'ssh://git@host/app.git' is not an http:// or https:// URL");
  EXPECT_EQ(error(R"({"url": "file:///etc"})"),
            "body.workspace_git.url: 'file:///etc' is not an http:// or https:// URL");
  EXPECT_EQ(error(R"({"url": "/srv/app.git"})"),
            "body.workspace_git.url: '/srv/app.git' is not an http:// or https:// URL");
  EXPECT_EQ(error(R"({"url": "https://me:token@host.example/app.git"})"),
            "body.workspace_git.url: 'https://me:token@host.example/app.git' carries "
            "credentials (user@): give a URL without them");
  EXPECT_EQ(error(R"({"url": "https://10.0.0.1/app.git"})"),
            "body.workspace_git.url: 'https://10.0.0.1/app.git' names an address: give a host "
            "name");
  EXPECT_EQ(error(R"({"url": "https://[::1]/app.git"})"),
            "body.workspace_git.url: 'https://[::1]/app.git' names an address: give a host name");
  EXPECT_EQ(error(R"({"url": "https://host.example:0/app"})"),
            "body.workspace_git.url: 'https://host.example:0/app' has a port that is not a "
            "number in 1..65535");
  EXPECT_EQ(error(R"({"url": "https://host.example"})"),
            "body.workspace_git.url: 'https://host.example' has no repository path");
  EXPECT_EQ(error(R"({"url": "https://host_x.example/a"})"),
            "body.workspace_git.url: 'https://host_x.example/a' has a host with the character "
            "'_'");
  EXPECT_EQ(error(R"({"url": "https://host.example/a b"})"),
            "body.workspace_git.url: 'https://host.example/a b' has whitespace or a control "
            "character");
  EXPECT_EQ(error(R"({"ref": "main"})"), "body.workspace_git.url: required");
  EXPECT_EQ(error(R"({"url": "https://h.example/a", "ref": "--upload-pack=x"})"),
            "body.workspace_git.ref: '--upload-pack=x' is not a branch or tag name "
            "([A-Za-z0-9._/-], not starting with '-', '.' or '/', no '..')");
  EXPECT_EQ(error(R"({"url": "https://h.example/a", "ref": "a..b"})"),
            "body.workspace_git.ref: 'a..b' is not a branch or tag name ([A-Za-z0-9._/-], not "
            "starting with '-', '.' or '/', no '..')");
  EXPECT_EQ(error(R"({"url": "https://h.example/a", "depth": 3})"),
            "body.workspace_git.depth: unknown field");
  EXPECT_EQ(error(R"("https://h.example/a")"),
            "body.workspace_git: expected an object, got string");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"argv": ["true"], "start": false,
                                        "workspace_git": {"url": "https://h.example/a"}})")),
            "body.start: false is for a workspace upload; a job with body.workspace_git has its "
            "workspace from the clone");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"agent": {"profile": "claude", "prompt_file": "P.md"},
                                        "workspace_git": {"url": "https://h.example/a"}})")),
            "body.agent.prompt_file: not with body.workspace_git (the clone is made when the job "
            "runs); give body.agent.prompt");
}

TEST(DecodeRequest, SubmitDefaults) {
  Result<Command> command = DecodeRequest(Post("/v1/jobs", R"({"argv": ["true"]})"));
  ASSERT_TRUE(command) << command.error().message();
  const auto& submit = std::get<JobSubmitCommand>(*command);
  EXPECT_EQ(submit.profile, std::nullopt);  // the daemon picks it
  EXPECT_TRUE(submit.start);
  EXPECT_FALSE(submit.cwd);
  EXPECT_FALSE(submit.limits.memory_bytes);
  EXPECT_FALSE(submit.tty);
  EXPECT_FALSE(submit.columns);
}

TEST(DecodeRequest, SubmitWithATerminal) {
  Result<Command> command = DecodeRequest(
      Post("/v1/jobs", R"({"argv": ["sh"], "tty": true, "columns": 132, "rows": 43})"));
  ASSERT_TRUE(command) << command.error().message();
  const auto& submit = std::get<JobSubmitCommand>(*command);
  EXPECT_TRUE(submit.tty);
  EXPECT_EQ(submit.columns, 132);
  EXPECT_EQ(submit.rows, 43);
  const std::pair<std::string, std::string> cases[] = {
      {R"({"argv": ["sh"], "tty": 1})", "body.tty: expected true or false, got integer 1"},
      {R"({"argv": ["sh"], "tty": true, "columns": 0})",
       "body.columns: 0 is out of range 1..10000"},
      {R"({"argv": ["sh"], "tty": true, "rows": 10001})",
       "body.rows: 10001 is out of range 1..10000"},
      {R"({"argv": ["sh"], "rows": 30})", "body.rows: a window size needs \"tty\": true"},
  };
  for (const auto& [body, error] : cases) {
    Result<Command> bad = DecodeRequest(Post("/v1/jobs", body));
    ASSERT_FALSE(bad) << body;
    EXPECT_EQ(bad.error().message(), error) << body;
  }
  Result<Command> attach = DecodeRequest({.verb = "GET", .path = "/v1/jobs/7/terminal"});
  ASSERT_TRUE(attach) << attach.error().message();
  EXPECT_EQ(std::get<TerminalAttachCommand>(*attach).id, 7u);
}

TEST(DecodeRequest, SubmitErrorsNameTheField) {
  struct Case {
    std::string body;
    std::string error;
  };
  const Case cases[] = {
      {R"({})", "body.argv: required"},
      {R"({"argv": "ls"})", "body.argv: expected an array of strings, got string"},
      {R"({"argv": []})", "body.argv: 0 elements is out of range 1..256"},
      {R"({"argv": ["ls", 7]})", "body.argv[1]: expected a string, got integer 7"},
      {R"({"argv": [""]})", "body.argv[0]: must not be empty"},
      {R"({"argv": ["a\u0000b"]})", "body.argv[0]: contains a NUL character"},
      {R"({"argv": ["ls"], "colour": "red"})", "body.colour: unknown field"},
      {R"({"argv": ["ls"], "limits": {"memory": 1}})", "body.limits.memory: unknown field"},
      {R"({"argv": ["ls"], "limits": {"memory_bytes": "1G"}})",
       "body.limits.memory_bytes: expected an unsigned integer, got string"},
      {R"({"argv": ["ls"], "limits": {"pids": -1}})", "body.limits.pids: -1 is out of range"},
      {R"({"argv": ["ls"], "limits": {"pids": 0}})", "body.limits.pids: 0 is out of range"},
      {R"({"argv": ["ls"], "limits": {"cpu_millis": 1.5}})",
       "body.limits.cpu_millis: expected an unsigned integer, got number 1.5"},
      {R"({"argv": ["ls"], "limits": []})", "body.limits: expected an object, got array"},
      {R"({"argv": ["ls"], "env": {"1X": "a"}})", "body.env.1X: not a variable name"},
      {R"({"argv": ["ls"], "env": {"X": 1}})", "body.env.X: expected a string, got integer 1"},
      {R"({"argv": ["ls"], "cwd": "work"})", "body.cwd: 'work' is not an absolute path"},
      {R"({"argv": ["ls"], "cwd": "/work/../etc"})", "body.cwd: '/work/../etc' contains '..'"},
      {R"({"argv": ["ls"], "profile": "Big Profile"})", "body.profile: 'Big Profile' is not"},
      {R"({"argv": ["ls"], "start": "yes"})", "body.start: expected true or false, got string"},
      {R"([1, 2])", "body: expected a JSON object, got array"},
      {R"({"argv": ["ls"],})", "body: malformed JSON at line 1, column 17"},
      {"{\n  \"argv\": [\"ls\"\n}", "body: malformed JSON at line 3, column 1"},
  };
  for (const Case& c : cases) {
    Result<Command> command = DecodeRequest(Post("/v1/jobs", c.body));
    ASSERT_FALSE(command) << c.body;
    EXPECT_EQ(command.error().code(), ErrorCode::kInvalidArgument) << c.body;
    EXPECT_EQ(command.error().message().rfind(c.error, 0), 0u)
        << c.body << "\n  got:  " << command.error().message() << "\n  want: " << c.error;
  }
}

TEST(DecodeRequest, OversizedValues) {
  std::string long_arg(kMaxArgBytes + 1, 'x');
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", R"({"argv": [")" + long_arg + R"("]})")),
            "body.argv[0]: 4097 bytes is longer than the limit of 4096");
  std::string body(kMaxJsonBodyBytes + 1, ' ');
  body[0] = '{';
  EXPECT_EQ(ErrorOf(Post("/v1/jobs", body)).rfind("body: 1048577 bytes is longer", 0), 0u);
}

TEST(DecodeRequest, JobRoutesCarryTheId) {
  auto show = DecodeRequest(Get("/v1/jobs/42"));
  ASSERT_TRUE(show) << show.error().message();
  EXPECT_EQ(std::get<JobShowCommand>(*show).id, 42u);
  auto cancel = DecodeRequest(Post("/v1/jobs/7/cancel", ""));
  ASSERT_TRUE(cancel) << cancel.error().message();
  EXPECT_EQ(std::get<JobCancelCommand>(*cancel).id, 7u);
  auto start = DecodeRequest(Post("/v1/jobs/7/start", "{}"));
  ASSERT_TRUE(start) << start.error().message();
  EXPECT_EQ(std::get<JobStartCommand>(*start).id, 7u);
  auto files = DecodeRequest(Get("/v1/jobs/9/files"));
  ASSERT_TRUE(files);
  EXPECT_EQ(std::get<JobFilesCommand>(*files).id, 9u);

  EXPECT_EQ(ErrorOf(Get("/v1/jobs/abc")), "path: job id 'abc' is not a positive number");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/0")), "path: job id '0' is not a positive number");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs/7/cancel", R"({"now": true})")), "body.now: unknown field");
}

TEST(DecodeRequest, Logs) {
  auto logs = DecodeRequest(
      Get("/v1/jobs/3/logs", {{"stream", "stderr"}, {"offset", "100"}, {"limit", "10"}}));
  ASSERT_TRUE(logs) << logs.error().message();
  const auto& command = std::get<JobLogsCommand>(*logs);
  EXPECT_EQ(command.id, 3u);
  EXPECT_EQ(command.stream, OutputStream::kStderr);
  EXPECT_EQ(command.offset, 100u);
  EXPECT_EQ(command.limit, 10u);

  EXPECT_EQ(ErrorOf(Get("/v1/jobs/3/logs", {{"stream", "both"}})),
            "query.stream: 'both' is not stdout or stderr");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/3/logs", {{"offset", "-1"}})),
            "query.offset: expected an unsigned integer, got '-1'");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/3/logs", {{"limit", "0"}})),
            "query.limit: 0 is out of range 1..1048576");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/3/logs", {{"follow", "1"}})), "query.follow: unknown parameter");
}

TEST(DecodeRequest, LoopDiffAndRollback) {
  auto diff =
      DecodeRequest(Get("/v1/jobs/4/diff", {{"iteration", "3"}, {"from", "1"}, {"limit", "4096"}}));
  ASSERT_TRUE(diff) << diff.error().message();
  const auto& command = std::get<JobDiffCommand>(*diff);
  EXPECT_EQ(command.id, 4u);
  EXPECT_EQ(command.iteration, 3u);
  EXPECT_EQ(command.from, 1u);
  EXPECT_EQ(command.limit, 4096u);
  auto defaults = DecodeRequest(Get("/v1/jobs/4/diff", {{"iteration", "2"}}));
  ASSERT_TRUE(defaults);
  EXPECT_FALSE(std::get<JobDiffCommand>(*defaults).from);
  EXPECT_EQ(std::get<JobDiffCommand>(*defaults).limit, kDefaultDiffBytes);
  EXPECT_TRUE(IsReadOnly(*defaults));

  EXPECT_EQ(ErrorOf(Get("/v1/jobs/4/diff")),
            "query.iteration: required (the loop iteration to show)");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/4/diff", {{"iteration", "0"}})),
            "query.iteration: 0 is out of range 1..9007199254740992");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/4/diff", {{"iteration", "x"}})),
            "query.iteration: expected an unsigned integer, got 'x'");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/4/diff", {{"iteration", "2"}, {"from", "2"}})),
            "query.from: 2 is the iteration itself (an empty diff)");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/4/diff", {{"iteration", "2"}, {"limit", "1048577"}})),
            "query.limit: 1048577 is out of range 1..1048576");

  auto rollback = DecodeRequest(Post("/v1/jobs/4/rollback", R"({"iteration": 2})"));
  ASSERT_TRUE(rollback) << rollback.error().message();
  EXPECT_EQ(std::get<JobRollbackCommand>(*rollback).id, 4u);
  EXPECT_EQ(std::get<JobRollbackCommand>(*rollback).iteration, 2u);
  EXPECT_FALSE(IsReadOnly(*rollback));
  EXPECT_EQ(ErrorOf(Post("/v1/jobs/4/rollback", "{}")),
            "body.iteration: required (the loop iteration to restore)");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs/4/rollback", R"({"iteration": -1})")),
            "body.iteration: -1 is out of range 1..9007199254740992");
  EXPECT_EQ(ErrorOf(Post("/v1/jobs/4/rollback", R"({"iteration": 1, "to": 2})")),
            "body.to: unknown field");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/4/rollback")), "verb: GET is not allowed on /v1/jobs/4/rollback");
}

TEST(DecodeRequest, JobList) {
  auto list = DecodeRequest(Get("/v1/jobs", {{"state", "timed-out"}, {"limit", "5"}}));
  ASSERT_TRUE(list) << list.error().message();
  EXPECT_EQ(std::get<JobListCommand>(*list).state, JobState::kTimedOut);
  EXPECT_EQ(std::get<JobListCommand>(*list).limit, 5u);
  EXPECT_EQ(ErrorOf(Get("/v1/jobs", {{"state", "sleeping"}})),
            "query.state: 'sleeping' is not a job state");
  EXPECT_EQ(ErrorOf(Get("/v1/jobs", {{"limit", "5000"}})),
            "query.limit: 5000 is out of range 1..1000");
}

TEST(DecodeRequest, Workspace) {
  std::string tar(1024, '\0');
  Request upload{.verb = "PUT", .path = "/v1/jobs/5/workspace", .body = tar};
  auto command = DecodeRequest(upload);
  ASSERT_TRUE(command) << command.error().message();
  EXPECT_EQ(std::get<WorkspaceUploadCommand>(*command).tar.size(), 1024u);
  upload.body.clear();
  EXPECT_EQ(ErrorOf(upload), "body: expected a tar archive, got nothing");

  auto list = DecodeRequest(Get("/v1/jobs/5/workspace", {{"format", "list"}}));
  ASSERT_TRUE(list);
  EXPECT_EQ(std::get<WorkspaceDownloadCommand>(*list).format, WorkspaceFormat::kList);
  auto tar_download = DecodeRequest(Get("/v1/jobs/5/workspace"));
  ASSERT_TRUE(tar_download);
  EXPECT_EQ(std::get<WorkspaceDownloadCommand>(*tar_download).format, WorkspaceFormat::kTar);
  EXPECT_EQ(ErrorOf(Get("/v1/jobs/5/workspace", {{"format", "zip"}})),
            "query.format: 'zip' is not tar or list");
}

TEST(DecodeRequest, Policy) {
  auto set = DecodeRequest({.verb = "PUT",
                            .path = "/v1/policy",
                            .body = R"({"document": "<policy/>", "comment": "c"})"});
  ASSERT_TRUE(set) << set.error().message();
  EXPECT_EQ(std::get<PolicySetCommand>(*set).document, "<policy/>");
  EXPECT_EQ(std::get<PolicySetCommand>(*set).comment, "c");
  auto validate = DecodeRequest(Post("/v1/policy/validate", R"({"document": "<x/>"})"));
  ASSERT_TRUE(validate);
  EXPECT_EQ(std::get<PolicyValidateCommand>(*validate).document, "<x/>");
  auto rollback = DecodeRequest(Post("/v1/policy/rollback", R"({"version": 3})"));
  ASSERT_TRUE(rollback);
  EXPECT_EQ(std::get<PolicyRollbackCommand>(*rollback).version, 3u);
  auto get = DecodeRequest(Get("/v1/policy", {{"version", "2"}}));
  ASSERT_TRUE(get);
  EXPECT_EQ(std::get<PolicyGetCommand>(*get).version, 2u);
  auto history = DecodeRequest(Get("/v1/policy/history"));
  ASSERT_TRUE(history);
  EXPECT_EQ(std::get<PolicyHistoryCommand>(*history).limit, 50u);

  EXPECT_EQ(ErrorOf({.verb = "PUT", .path = "/v1/policy", .body = "{}"}),
            "body.document: required");
  EXPECT_EQ(ErrorOf({.verb = "PUT", .path = "/v1/policy", .body = R"({"document": 1})"}),
            "body.document: expected a string, got integer 1");
  EXPECT_EQ(ErrorOf(Post("/v1/policy/rollback", R"({"version": 0})")),
            "body.version: 0 is out of range 1..9223372036854775807");
  EXPECT_EQ(ErrorOf(Post("/v1/policy/rollback", R"({})")), "body.version: required");
}

TEST(DecodeRequest, Memory) {
  auto put =
      DecodeRequest(Post("/v1/memory", R"({"key": "notes/a%b", "value": {"b": [1], "a": null}})"));
  ASSERT_TRUE(put) << put.error().message();
  EXPECT_EQ(CommandName(*put), "memory.put");
  EXPECT_FALSE(IsReadOnly(*put));
  EXPECT_EQ(std::get<MemoryPutCommand>(*put).key, "notes/a%b");
  EXPECT_EQ(std::get<MemoryPutCommand>(*put).value, nlohmann::json::parse(R"({"a":null,"b":[1]})"));
  // Any JSON value, scalars included.
  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"key": "k", "value": "text"})")), "");
  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"key": "k", "value": null})")), "");

  std::string hash(64, 'a');
  auto get = DecodeRequest(Get("/v1/memory/entry", {{"hash", hash}}));
  ASSERT_TRUE(get) << get.error().message();
  EXPECT_EQ(std::get<MemoryGetCommand>(*get).hash, hash);
  EXPECT_TRUE(IsReadOnly(*get));
  auto query =
      DecodeRequest(Get("/v1/memory/query", {{"prefix", "a_%"}, {"after", "7"}, {"limit", "3"}}));
  ASSERT_TRUE(query) << query.error().message();
  EXPECT_EQ(std::get<MemoryQueryCommand>(*query).prefix, "a_%");
  EXPECT_EQ(std::get<MemoryQueryCommand>(*query).after, 7u);
  EXPECT_EQ(std::get<MemoryQueryCommand>(*query).limit, 3u);
  auto all = DecodeRequest(Get("/v1/memory/query"));
  ASSERT_TRUE(all);
  EXPECT_EQ(std::get<MemoryQueryCommand>(*all).prefix, "");
  EXPECT_EQ(std::get<MemoryQueryCommand>(*all).limit, 100u);
  auto history = DecodeRequest(Get("/v1/memory/history", {{"key", "k"}}));
  ASSERT_TRUE(history);
  EXPECT_EQ(std::get<MemoryHistoryCommand>(*history).key, "k");
  auto list = DecodeRequest(Get("/v1/memory/agent", {{"agent", "job:7"}}));
  ASSERT_TRUE(list);
  EXPECT_EQ(std::get<MemoryListCommand>(*list).agent, "job:7");

  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"value": 1})")), "body.key: required");
  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"key": "k"})")), "body.value: required");
  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"key": "", "value": 1})")),
            "body.key: must not be empty");
  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"key": "a\nb", "value": 1})")),
            "body.key: not UTF-8 text without control characters");
  EXPECT_EQ(ErrorOf(Post("/v1/memory", R"({"key": "k", "value": 1, "agent": "job:1"})")),
            "body.agent: unknown field");
  EXPECT_EQ(ErrorOf(Post("/v1/memory",
                         nlohmann::json({{"key", std::string(257, 'k')}, {"value", 1}}).dump())),
            "body.key: 257 bytes is longer than the limit of 256");
  EXPECT_EQ(
      ErrorOf(Post("/v1/memory",
                   nlohmann::json({{"key", "k"}, {"value", std::string(70000, 'v')}}).dump())),
      "body.value: 70002 bytes (canonical JSON) is longer than the limit of 65536");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/entry")), "query.hash: required");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/entry", {{"hash", "ABC"}})),
            "query.hash: 'ABC' is not a SHA-256 (64 lower-case hex digits)");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/query", {{"limit", "1001"}})),
            "query.limit: 1001 is out of range 1..1000");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/query", {{"prefix", std::string(257, 'p')}})),
            "query.prefix: 257 bytes is longer than the limit of 256");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/history")), "query.key: required");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/agent")), "query.agent: required");
  EXPECT_EQ(ErrorOf(Get("/v1/memory/agent", {{"agent", "Job 1"}})),
            "query.agent: 'Job 1' is not made of [a-z0-9:._-]");
  EXPECT_EQ(ErrorOf({.verb = "DELETE", .path = "/v1/memory/entry"}),
            "verb: DELETE is not allowed on /v1/memory/entry");
}

TEST(DecodeRequest, AgentImage) {
  auto status = DecodeRequest(Get("/v1/agent-image"));
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_TRUE(std::holds_alternative<AgentImageStatusCommand>(*status));
  EXPECT_TRUE(IsReadOnly(*status));
  auto install =
      DecodeRequest(Post("/v1/agent-image/install", R"({"path": "/var/tmp/a.rbundle"})"));
  ASSERT_TRUE(install) << install.error().message();
  EXPECT_EQ(std::get<AgentImageInstallCommand>(*install).path, "/var/tmp/a.rbundle");
  EXPECT_FALSE(IsReadOnly(*install));
  auto rollback = DecodeRequest({.verb = "POST", .path = "/v1/agent-image/rollback"});
  ASSERT_TRUE(rollback) << rollback.error().message();
  EXPECT_TRUE(std::holds_alternative<AgentImageRollbackCommand>(*rollback));
  EXPECT_FALSE(IsReadOnly(*rollback));

  EXPECT_EQ(ErrorOf(Post("/v1/agent-image/install", R"({})")), "body.path: required");
  EXPECT_EQ(ErrorOf(Post("/v1/agent-image/install", R"({"path": "a.rbundle"})")),
            "body.path: 'a.rbundle' is not an absolute path on the appliance");
  EXPECT_EQ(ErrorOf(Post("/v1/agent-image/install", R"({"path": "/a", "url": "x"})")),
            "body.url: unknown field");
}

TEST(DecodeRequest, AuditAndEvents) {
  auto list =
      DecodeRequest(Get("/v1/audit", {{"after", "10"}, {"job", "4"}, {"type", "job.state"}}));
  ASSERT_TRUE(list) << list.error().message();
  const auto& audit = std::get<AuditListCommand>(*list);
  EXPECT_EQ(audit.after, 10u);
  EXPECT_EQ(audit.job, 4u);
  EXPECT_EQ(audit.type, "job.state");
  auto verify = DecodeRequest(Get("/v1/audit/verify", {{"anchor", "3:ab"}}));
  ASSERT_TRUE(verify);
  EXPECT_EQ(std::get<AuditVerifyCommand>(*verify).anchor, "3:ab");
  EXPECT_EQ(ErrorOf(Get("/v1/audit/verify", {{"anchor", std::string(300, '1')}})),
            "query.anchor: 300 bytes is longer than the limit of 256");
  auto exported = DecodeRequest(Get("/v1/audit/export"));
  ASSERT_TRUE(exported);
  EXPECT_TRUE(std::holds_alternative<AuditExportCommand>(*exported));
  auto events = DecodeRequest(Get("/v1/events", {{"after", "99"}}));
  ASSERT_TRUE(events);
  EXPECT_EQ(std::get<EventsCommand>(*events).after, 99u);

  EXPECT_EQ(ErrorOf(Get("/v1/audit", {{"type", "DROP TABLE"}})),
            "query.type: 'DROP TABLE' is not a name ([a-z0-9._-], 1..64)");
  EXPECT_EQ(ErrorOf(Get("/v1/audit/export", {{"limit", "3"}})), "query.limit: unknown parameter");
}

TEST(DecodeRequest, AuditTimeRange) {
  auto list = DecodeRequest(
      Get("/v1/audit", {{"since", "2026-11-22T16:40:01Z"}, {"until", "2026-11-22T16:40:01.001Z"}}));
  ASSERT_TRUE(list) << list.error().message();
  EXPECT_EQ(std::get<AuditListCommand>(*list).since, "2026-11-22T16:40:01.000Z");
  EXPECT_EQ(std::get<AuditListCommand>(*list).until, "2026-11-22T16:40:01.001Z");
  auto exported = DecodeRequest(Get("/v1/audit/export", {{"until", "2026-11-22T16:40:01.123Z"}}));
  ASSERT_TRUE(exported) << exported.error().message();
  EXPECT_FALSE(std::get<AuditExportCommand>(*exported).since);
  EXPECT_EQ(std::get<AuditExportCommand>(*exported).until, "2026-11-22T16:40:01.123Z");

  EXPECT_EQ(ErrorOf(Get("/v1/audit", {{"since", "yesterday"}})),
            "query.since: 'yesterday' is not a UTC time like 2026-11-22T16:40:01.123Z (wrong "
            "length)");
  EXPECT_EQ(ErrorOf(Get("/v1/audit/export", {{"until", "2026-02-30T00:00:00Z"}})),
            "query.until: '2026-02-30T00:00:00Z' is not a UTC time like "
            "2026-11-22T16:40:01.123Z (a field is out of range)");
  EXPECT_EQ(ErrorOf(Get("/v1/audit",
                        {{"since", "2026-11-22T16:40:01Z"}, {"until", "2026-11-22T16:40:01Z"}})),
            "query.until: 2026-11-22T16:40:01.000Z is not after query.since "
            "(2026-11-22T16:40:01.000Z)");
}

TEST(DecodeRequest, RoutingErrors) {
  auto code = [](const Request& r) { return DecodeRequest(r).error().code(); };
  EXPECT_EQ(code(Get("/v1/jobz")), ErrorCode::kNotFound);
  EXPECT_EQ(ErrorOf(Get("/v1/jobz")), "path: no such route /v1/jobz");
  EXPECT_EQ(code(Get("/v2/status")), ErrorCode::kNotFound);
  EXPECT_EQ(code({.verb = "DELETE", .path = "/v1/jobs/3"}), ErrorCode::kUnsupported);
  EXPECT_EQ(ErrorOf({.verb = "DELETE", .path = "/v1/jobs/3"}),
            "verb: DELETE is not allowed on /v1/jobs/3");
  EXPECT_EQ(ErrorOf(Get("/v1/status", {{"x", "1"}})), "query.x: unknown parameter");
  EXPECT_EQ(ErrorOf({.verb = "GET", .path = "/v1/status", .body = R"({"a":1})"}),
            "body.a: unknown field");
  EXPECT_EQ(ErrorOf(Get("v1/status")), "path: 'v1/status' does not start with '/'");
}

TEST(Replies, ErrorJsonAndDump) {
  Reply reply = Reply::Failure(Error::Make(ErrorCode::kRefused, "limits.memory_bytes: too much"));
  EXPECT_FALSE(reply.ok());
  EXPECT_EQ(DumpJson(reply.body),
            R"({"error":{"code":"refused","message":"limits.memory_bytes: too much"}})");
  // Invalid UTF-8 is replaced rather than aborting the process.
  EXPECT_EQ(DumpJson(nlohmann::json(std::string("a\xff"))), "\"a\xEF\xBF\xBD\"");
  EXPECT_EQ(Caller::LocalUid(0).ToString(), "uid:0");
  EXPECT_EQ(Caller::ClientCertificate("c1").ToString(), "cert:c1");
}

TEST(JobStates, NamesRoundTrip) {
  for (JobState state : kAllJobStates) EXPECT_EQ(ParseJobState(JobStateName(state)), state);
  EXPECT_FALSE(IsFinal(JobState::kQueued));
  EXPECT_TRUE(IsFinal(JobState::kLost));
}

}  // namespace
}  // namespace ralph::ralphd
