// Policy documents (services/ralphd/policy.h): parsing, every issue with its
// line and column, and a job's request narrowed (never widened) onto a
// sandbox spec.
#include "services/ralphd/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ralph::ralphd {
namespace {

using ::testing::ElementsAre;

constexpr std::string_view kGood = R"(<?xml version="1.0"?>
<policy format="1">
  <!-- a comment with <profile name="fake"> inside -->
  <profile name="default">
    <limits memory="256MiB" cpu-millis="500" pids="64" disk="1G" timeout="10m"/>
  </profile>
  <profile name="web">
    <limits memory="1073741824" timeout="90s"/>
    <egress domain-ports="443,80">
      <allow cidr="203.0.113.0/24" ports="8000-8100" protocol="udp"/>
      <allow cidr="2001:db8::1"/>
      <allow domain="*.example.com"/>
    </egress>
    <mount source="/srv/cache" destination="/cache" access="read-write"/>
    <mount source="/etc/ssl" destination="/etc/ssl"/>
  </profile>
  <profile name="offline-net"><egress/></profile>
</policy>
)";

TEST(Policy, ParsesProfiles) {
  Result<Policy> policy = ParsePolicy(kGood);
  ASSERT_TRUE(policy) << policy.error().message();
  ASSERT_EQ(policy->profiles.size(), 3u);

  const Profile* def = policy->Find("default");
  ASSERT_NE(def, nullptr);
  EXPECT_EQ(def->limits.memory_bytes, 256u << 20);
  EXPECT_EQ(def->limits.cpu_millis, 500u);
  EXPECT_EQ(def->limits.pids, 64u);
  EXPECT_EQ(def->limits.disk_bytes, 1u << 30);
  EXPECT_EQ(def->limits.timeout, std::chrono::minutes(10));
  EXPECT_FALSE(def->network.enabled);  // no <egress>: no network at all
  EXPECT_TRUE(def->mounts.empty());

  const Profile* web = policy->Find("web");
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(web->limits.memory_bytes, 1u << 30);
  EXPECT_EQ(web->limits.pids, sandbox::Limits{}.pids);  // absent: the sandbox's default
  EXPECT_EQ(web->limits.timeout, std::chrono::seconds(90));
  EXPECT_TRUE(web->network.enabled);
  ASSERT_EQ(web->network.allow.size(), 2u);
  EXPECT_EQ(web->network.allow[0].cidr, "203.0.113.0/24");
  EXPECT_EQ(web->network.allow[0].port_min, 8000);
  EXPECT_EQ(web->network.allow[0].port_max, 8100);
  EXPECT_EQ(web->network.allow[0].protocol, sandbox::Protocol::kUdp);
  EXPECT_EQ(web->network.allow[1].cidr, "2001:db8::1");
  EXPECT_EQ(web->network.allow[1].port_min, 0);
  EXPECT_EQ(web->network.allow[1].protocol, sandbox::Protocol::kTcp);
  EXPECT_THAT(web->network.allowed_domains, ElementsAre("*.example.com"));
  EXPECT_THAT(web->network.domain_ports, ElementsAre(443, 80));
  ASSERT_EQ(web->mounts.size(), 2u);
  EXPECT_EQ(web->mounts[0].source, "/srv/cache");
  EXPECT_EQ(web->mounts[0].access, sandbox::BindAccess::kReadWrite);
  EXPECT_EQ(web->mounts[1].access, sandbox::BindAccess::kReadOnly);

  const Profile* empty_egress = policy->Find("offline-net");
  ASSERT_NE(empty_egress, nullptr);
  EXPECT_TRUE(empty_egress->network.enabled);  // a network on which nothing is allowed
  EXPECT_TRUE(empty_egress->network.allow.empty());
  EXPECT_TRUE(empty_egress->network.allowed_domains.empty());
  EXPECT_EQ(policy->Find("nope"), nullptr);
}

// A cloned workspace's host must be one the job's egress allows by domain,
// on a domain port; the agents' API hosts do not count.
TEST(Policy, AWorkspaceCloneNeedsItsHostAllowedByDomain) {
  Result<Policy> policy = ParsePolicy(kGood);
  ASSERT_TRUE(policy) << policy.error().message();
  const Profile& web = *policy->Find("web");  // *.example.com on 443 and 80
  auto check = [&](const Profile& profile, std::string_view url) {
    Result<void> done = CheckWorkspaceGit(profile, *ParseGitUrl(url));
    return done ? std::string() : done.error().message();
  };
  EXPECT_EQ(check(web, "https://git.example.com/app.git"), "");
  EXPECT_EQ(check(web, "http://git.example.com/app.git"), "");
  EXPECT_EQ(check(web, "https://git.example.org/app.git"),
            "workspace_git.url: host 'git.example.org' is not allowed by profile 'web''s egress "
            "(allowed domains: *.example.com); add <allow domain=\"git.example.org\"/> to its "
            "<egress>");
  EXPECT_EQ(check(web, "https://git.example.com:8443/app.git"),
            "workspace_git.url: port 8443 is not among profile 'web''s domain ports (443, 80)");
  EXPECT_EQ(check(*policy->Find("default"), "https://git.example.com/app.git"),
            "workspace_git.url: profile 'default' has no network (no <egress>), so its job "
            "cannot clone from git.example.com");
  EXPECT_EQ(check(*policy->Find("offline-net"), "https://git.example.com/app.git"),
            "workspace_git.url: host 'git.example.com' is not allowed by profile "
            "'offline-net''s egress (allowed domains: none); add <allow "
            "domain=\"git.example.com\"/> to its <egress>");
  EXPECT_EQ(CheckWorkspaceGit(web, *ParseGitUrl("https://github.com/x/y")).error().code(),
            ErrorCode::kRefused);
}

// The clone runs in the job's sandbox before its argv, which it then execs
// unchanged; the client's URL and ref are parameters, never script text.
TEST(Policy, CloneIntoWorkspaceRunsTheCloneThenTheArgv) {
  sandbox::SandboxSpec spec;
  spec.workspace = "/work";
  spec.argv = {"make", "-j2", "$(reboot)"};
  CloneIntoWorkspace(spec, {.url = "https://git.example.com/a;b.git", .ref = "main"});
  ASSERT_GE(spec.argv.size(), 10u);
  EXPECT_EQ(spec.argv[0], "/bin/sh");
  EXPECT_EQ(spec.argv[1], "-c");
  EXPECT_EQ(spec.argv[2].find("a;b"), std::string::npos);
  EXPECT_EQ(std::vector<std::string>(spec.argv.begin() + 3, spec.argv.end()),
            (std::vector<std::string>{"ralphd-clone", "https://git.example.com/a;b.git", "main",
                                      "/work", "make", "-j2", "$(reboot)"}));
}

TEST(Policy, DefaultDocumentParses) {
  Result<Policy> policy = ParsePolicy(DefaultPolicyDocument());
  ASSERT_TRUE(policy) << policy.error().message();
  ASSERT_NE(policy->Find("default"), nullptr);
  EXPECT_FALSE(policy->Find("default")->network.enabled);
  // Agent jobs run under "agent" unless they name a profile: a network
  // that gets their tool's API hosts (and nothing listed besides).
  const Profile* agent = policy->Find("agent");
  ASSERT_NE(agent, nullptr);
  EXPECT_TRUE(agent->network.enabled);
  EXPECT_EQ(agent->agent_hosts_mode, AgentHostsMode::kAll);
  EXPECT_TRUE(agent->network.allow.empty());
  EXPECT_TRUE(agent->network.allowed_domains.empty());
  EXPECT_GT(agent->limits.memory_bytes, policy->Find("default")->limits.memory_bytes);
}

std::vector<std::string> Issues(std::string_view document) {
  std::vector<std::string> out;
  for (const PolicyIssue& issue : CheckPolicy(document).issues) out.push_back(issue.ToString());
  return out;
}

TEST(Policy, ReportsEveryIssueWithLineAndColumn) {
  // Columns are 1-based and point at the element's '<' or the attribute's name.
  constexpr std::string_view kBad = R"(<policy format="1" owner="me">
  <profile name="a">
    <limits memory="lots" pids="0" timeout="10"/>
    <egress domain-ports="443,x">
      <allow cidr="10.0.0.0/33" ports="70000"/>
      <allow domain="example.com" ports="443"/>
      <allow/>
      <deny cidr="1.2.3.4"/>
    </egress>
    <mount source="relative" destination="/x" access="rw"/>
  </profile>
  <profile name="Bad Name"/>
  <profile/>
  <rule/>
</policy>)";
  EXPECT_THAT(
      Issues(kBad),
      ElementsAre(
          "1:20: <policy>: unknown attribute 'owner' (expected format)",
          "14:3: <rule>: unknown element in <policy> (expected <profile>)",
          "3:13: <limits>: memory: 'lots' is not a size (a number, optionally with K, M, G, T "
          "or KiB, MiB, GiB, TiB)",
          "3:27: <limits>: pids: '0' is not a number in 1..1000000",
          "3:36: <limits>: timeout: '10' is not a duration (a number with ms, s, m or h)",
          "8:7: <deny>: unknown element in <egress> (expected <allow>)",
          "4:13: <egress>: domain-ports: '443,x' is not a list of ports (1..65535)",
          "5:14: <allow>: cidr: \"10.0.0.0/33\": prefix length must be 0..32",
          "5:33: <allow>: ports: '70000' is not a port (1..65535) or a range LOW-HIGH",
          "6:35: <allow>: ports goes with cidr; domains use <egress domain-ports=...>",
          "7:7: <allow>: needs exactly one of cidr or domain",
          "10:12: <mount>: source: 'relative' is not an absolute path",
          "10:47: <mount>: access: 'rw' is not read-only or read-write",
          "12:12: <profile>: name 'Bad Name' is not a profile name ([a-z0-9._-], 1..64)",
          "13:3: <profile>: the name attribute is required"));
}

TEST(Policy, SandboxValidationIsPlacedOnTheAttribute) {
  // 1 MiB of memory passes the format but not the sandbox's own check.
  EXPECT_THAT(Issues("<policy format=\"1\">\n <profile name=\"p\">\n  <limits  memory=\"1M\"/>"
                     "\n </profile>\n</policy>"),
              ElementsAre("3:12: <limits>: limits.memory_bytes: 1048576 is below 16 MiB"));
  EXPECT_THAT(Issues("<policy format=\"1\"><profile name=\"p\">"
                     "<mount source=\"/a\" destination=\"/proc/x\"/></profile></policy>"),
              ElementsAre("1:38: <mount>: binds[0].destination: '/proc/x' is reserved for the "
                          "sandbox's own /proc"));
}

TEST(Policy, DocumentLevelErrors) {
  std::vector<std::string> syntax =
      Issues("<policy format=\"1\">\n<profile name=\"a\">\n</policy>");
  ASSERT_EQ(syntax.size(), 1u);
  // tinyxml2 names the line of the unclosed element, not a column.
  EXPECT_EQ(syntax[0],
            "2: XML syntax error: XML_ERROR_MISMATCHED_ELEMENT: XMLElement name=profile");
  EXPECT_THAT(Issues("<policies/>"),
              ElementsAre("1:1: the root element must be <policy>, found <policies>"));
  EXPECT_THAT(Issues("<policy/>"),
              ElementsAre("1:1: <policy>: the format attribute is required (format=\"1\")"));
  EXPECT_THAT(Issues("<policy format=\"2\"/>"),
              ElementsAre("1:9: <policy>: format '2' is not supported (this build reads 1)"));
  EXPECT_THAT(Issues("<policy format=\"1\"><profile name=\"a\"/>\n<profile name=\"a\"/></policy>"),
              ElementsAre("2:10: <profile>: profile 'a' is defined twice"));
  EXPECT_THAT(Issues("<policy format=\"1\">hello</policy>"),
              ElementsAre("1:1: <policy>: unexpected text"));
}

TEST(Policy, ParsePolicyListsEveryIssue) {
  Result<Policy> policy =
      ParsePolicy("<policy format=\"1\"><profile/><profile name=\"B\"/></policy>");
  ASSERT_FALSE(policy);
  EXPECT_EQ(policy.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(policy.error().message(),
            "invalid policy:\n1:20: <profile>: the name attribute is required\n"
            "1:39: <profile>: name 'B' is not a profile name ([a-z0-9._-], 1..64)");
}

class JobSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<Policy> policy = ParsePolicy(kGood);
    ASSERT_TRUE(policy) << policy.error().message();
    policy_ = std::move(*policy);
  }
  const Profile& Web() const { return *policy_.Find("web"); }
  Policy policy_;
};

TEST_F(JobSpecTest, TheProfileFillsWhatTheJobLeavesOpen) {
  Result<sandbox::SandboxSpec> spec =
      MakeJobSpec(Web(), {.argv = {"make", "-j2"}, .env = {{"CC", "gcc"}}},
                  {.base_kind = sandbox::BaseKind::kImage, .base = "/var/lib/ralph/rootfs.img"});
  ASSERT_TRUE(spec) << spec.error().message();
  EXPECT_THAT(spec->argv, ElementsAre("make", "-j2"));
  EXPECT_THAT(spec->env, ElementsAre("CC=gcc"));
  EXPECT_EQ(spec->cwd, "/work");
  EXPECT_EQ(spec->base_kind, sandbox::BaseKind::kImage);
  EXPECT_EQ(spec->base, "/var/lib/ralph/rootfs.img");
  EXPECT_EQ(spec->limits.memory_bytes, 1u << 30);
  EXPECT_EQ(spec->timeout, std::chrono::seconds(90));
  EXPECT_EQ(spec->network.allow.size(), 2u);
  EXPECT_EQ(spec->binds.size(), 2u);
}

TEST_F(JobSpecTest, AJobMayAskForLess) {
  Result<sandbox::SandboxSpec> spec =
      MakeJobSpec(Web(),
                  {.argv = {"true"},
                   .cwd = "/work/src",
                   .limits = {.memory_bytes = 64u << 20, .pids = 10, .timeout_ms = 5000}},
                  {});
  ASSERT_TRUE(spec) << spec.error().message();
  EXPECT_EQ(spec->limits.memory_bytes, 64u << 20);
  EXPECT_EQ(spec->limits.pids, 10u);
  EXPECT_EQ(spec->timeout, std::chrono::seconds(5));
  EXPECT_EQ(spec->cwd, "/work/src");
}

TEST_F(JobSpecTest, NeverForMoreAndTheLimitIsNamed) {
  struct Case {
    LimitsRequest limits;
    std::string error;
  };
  const Case cases[] = {
      {{.memory_bytes = (1u << 30) + 1},
       "limits.memory_bytes: 1073741825 is more than profile 'web' allows (1073741824)"},
      {{.cpu_millis = 1001}, "limits.cpu_millis: 1001 is more than profile 'web' allows (1000)"},
      {{.pids = 257}, "limits.pids: 257 is more than profile 'web' allows (256)"},
      {{.disk_bytes = 3ull << 30},
       "limits.disk_bytes: 3221225472 is more than profile 'web' allows (2147483648)"},
      {{.timeout_ms = 90001}, "limits.timeout_ms: 90001 is more than profile 'web' allows (90000)"},
  };
  for (const Case& c : cases) {
    Result<sandbox::SandboxSpec> spec =
        MakeJobSpec(Web(), {.argv = {"true"}, .limits = c.limits}, {});
    ASSERT_FALSE(spec) << c.error;
    EXPECT_EQ(spec.error().code(), ErrorCode::kRefused);
    EXPECT_EQ(spec.error().message(), c.error);
  }
}

TEST_F(JobSpecTest, TheSandboxStillValidates) {
  // Within the profile, but below what the sandbox accepts.
  Result<sandbox::SandboxSpec> spec =
      MakeJobSpec(Web(), {.argv = {"true"}, .limits = {.memory_bytes = 1024}}, {});
  ASSERT_FALSE(spec);
  EXPECT_EQ(spec.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(spec.error().message(), "limits.memory_bytes: 1024 is below 16 MiB");
}

// An agent job's network: its profile's API hosts by domain, as the policy
// profile's <egress agent-hosts=...> lets them through, on top of its own
// allowlist; nothing without <egress>.
constexpr std::string_view kAgentEgress = R"(<policy format="1">
  <profile name="offline"/>
  <profile name="agents"><egress/></profile>
  <profile name="plus">
    <egress domain-ports="443,8443">
      <allow domain="registry.npmjs.org"/>
      <allow domain="api.anthropic.com"/>
    </egress>
  </profile>
  <profile name="no-agent-hosts"><egress agent-hosts="none"><allow domain="git.example.com"/></egress></profile>
  <profile name="only-api"><egress agent-hosts="api.anthropic.com, api.openai.com"/></profile>
  <profile name="all"><egress agent-hosts="all"/></profile>
</policy>
)";

TEST(AgentEgress, TheAgentProfilesHostsAsThePolicyProfileLetsThemThrough) {
  Result<Policy> policy = ParsePolicy(kAgentEgress);
  ASSERT_TRUE(policy) << policy.error().message();
  const std::vector<std::string> claude = {"api.anthropic.com", "console.anthropic.com",
                                           "platform.claude.com"};
  const std::vector<std::string> codex = {"chatgpt.com", "auth.openai.com", "api.openai.com"};
  auto domains = [&](std::string_view profile, const std::vector<std::string>& hosts) {
    Result<sandbox::SandboxSpec> spec =
        MakeJobSpec(*policy->Find(profile), {.argv = {"claude"}, .agent_hosts = hosts}, {});
    EXPECT_TRUE(spec) << spec.error().message();
    return spec ? spec->network.allowed_domains : std::vector<std::string>{"error"};
  };
  // No <egress>: no network at all, whatever the agent.
  Result<sandbox::SandboxSpec> offline =
      MakeJobSpec(*policy->Find("offline"), {.argv = {"claude"}, .agent_hosts = claude}, {});
  ASSERT_TRUE(offline);
  EXPECT_FALSE(offline->network.enabled);
  EXPECT_TRUE(offline->network.allowed_domains.empty());

  EXPECT_EQ(domains("agents", claude), claude);
  EXPECT_EQ(domains("agents", codex), codex);
  EXPECT_EQ(domains("all", codex), codex);
  // The command profile and non-agent jobs have no API hosts: nothing extra.
  EXPECT_TRUE(domains("agents", {}).empty());
  // The profile's own domains first, each name once, on its domain ports.
  EXPECT_THAT(domains("plus", claude), ElementsAre("registry.npmjs.org", "api.anthropic.com",
                                                   "console.anthropic.com", "platform.claude.com"));
  Result<sandbox::SandboxSpec> plus =
      MakeJobSpec(*policy->Find("plus"), {.argv = {"claude"}, .agent_hosts = claude}, {});
  ASSERT_TRUE(plus);
  EXPECT_THAT(plus->network.domain_ports, ElementsAre(443, 8443));
  // Off: only what <allow> lists.
  EXPECT_THAT(domains("no-agent-hosts", claude), ElementsAre("git.example.com"));
  // Narrowed: only the listed ones the agent's profile has; never widened.
  EXPECT_THAT(domains("only-api", claude), ElementsAre("api.anthropic.com"));
  EXPECT_THAT(domains("only-api", codex), ElementsAre("api.openai.com"));

  const Profile& only_api = *policy->Find("only-api");
  EXPECT_EQ(only_api.agent_hosts_mode, AgentHostsMode::kListed);
  EXPECT_THAT(only_api.agent_hosts, ElementsAre("api.anthropic.com", "api.openai.com"));
  EXPECT_EQ(ProfileToJson(only_api)["network"]["agent_hosts"],
            nlohmann::json({"api.anthropic.com", "api.openai.com"}));
  EXPECT_EQ(ProfileToJson(*policy->Find("agents"))["network"]["agent_hosts"], "all");
  EXPECT_EQ(ProfileToJson(*policy->Find("no-agent-hosts"))["network"]["agent_hosts"], "none");
}

TEST(AgentEgress, AgentHostsMustBeAgentApiHosts) {
  PolicyCheck check = CheckPolicy(R"(<policy format="1">
  <profile name="a"><egress agent-hosts="api.anthropic.com,example.com"/></profile>
  <profile name="b"><egress agent-hosts="api.openai.com,,chatgpt.com"/></profile>
  <profile name="c"><egress agent-hosts=""/></profile>
</policy>
)");
  ASSERT_EQ(check.issues.size(), 3u);
  EXPECT_EQ(check.issues[0].ToString(),
            "2:29: <egress>: agent-hosts: 'example.com' is not an agent profile's API host "
            "(expected all, none or some of: api.anthropic.com, console.anthropic.com, "
            "platform.claude.com, chatgpt.com, auth.openai.com, api.openai.com, opencode.ai, "
            "models.dev); other names go in <allow domain=...>");
  EXPECT_EQ(check.issues[1].ToString(),
            "3:29: <egress>: agent-hosts: 'api.openai.com,,chatgpt.com' has an empty entry "
            "(expected all, none or a comma-separated list of agent API hosts)");
  EXPECT_EQ(check.issues[2].ToString(),
            "4:29: <egress>: agent-hosts: '' has an empty entry (expected all, none or a "
            "comma-separated list of agent API hosts)");
}

TEST(Policy, ProfileToJson) {
  Result<Policy> policy = ParsePolicy(kGood);
  ASSERT_TRUE(policy);
  nlohmann::json web = ProfileToJson(*policy->Find("web"));
  EXPECT_EQ(web["limits"]["timeout_ms"], 90000);
  EXPECT_EQ(web["network"]["allow"][0]["protocol"], "udp");
  EXPECT_EQ(web["mounts"][0]["access"], "read-write");
}

}  // namespace
}  // namespace ralph::ralphd

namespace ralph::ralphd {
namespace {

TEST(Policy, CredentialGrantsNameTheirScopesTenantAndHolders) {
  Result<Policy> policy = ParsePolicy(R"(<policy format="1">
  <profile name="nightly">
    <credentials scopes="global,agent,tenant" tenant="acme" holders="2"/>
  </profile>
  <profile name="plain"/>
  <profile name="shared"><credentials scopes="global"/></profile>
</policy>)");
  ASSERT_TRUE(policy) << policy.error().message();
  const Profile* nightly = policy->Find("nightly");
  ASSERT_TRUE(nightly->credentials);
  // Most specific first, whatever the order written.
  EXPECT_THAT(nightly->credentials->scopes,
              ElementsAre(creds::Scope::kAgent, creds::Scope::kTenant, creds::Scope::kGlobal));
  EXPECT_EQ(nightly->credentials->tenant, "acme");
  EXPECT_EQ(nightly->credentials->holders, 2u);
  EXPECT_FALSE(policy->Find("plain")->credentials);  // none: a job sees no credential
  const Profile* shared = policy->Find("shared");
  ASSERT_TRUE(shared->credentials);
  EXPECT_EQ(shared->credentials->holders, 1u);  // by default one job at a time
  nlohmann::json json = ProfileToJson(*nightly);
  EXPECT_EQ(json["credentials"]["scopes"], nlohmann::json({"agent", "tenant", "global"}));
  EXPECT_EQ(json["credentials"]["tenant"], "acme");
  EXPECT_FALSE(ProfileToJson(*policy->Find("plain")).contains("credentials"));
}

TEST(Policy, BadCredentialGrantsAreIssuesOnTheirAttribute) {
  PolicyCheck check = CheckPolicy(R"(<policy format="1">
  <profile name="a"><credentials scopes="global,everyone"/></profile>
  <profile name="b"><credentials scopes="tenant"/></profile>
  <profile name="c"><credentials scopes="global" tenant="acme"/></profile>
  <profile name="d"><credentials scopes="agent" holders="0"/></profile>
  <profile name="e"><credentials/><credentials scopes="agent"/></profile>
  <profile name="f"><credentials scopes="agent,agent"/></profile>
</policy>)");
  std::vector<std::string> issues;
  for (const PolicyIssue& issue : check.issues) issues.push_back(issue.ToString());
  EXPECT_THAT(
      issues,
      ElementsAre("2:34: <credentials>: scopes: unknown credential scope 'everyone' (known: agent, "
                  "tenant, global)",
                  "3:34: <credentials>: the tenant scope needs a tenant attribute",
                  "4:50: <credentials>: tenant is only for the tenant scope",
                  "5:49: <credentials>: holders: '0' is not a number in 1..64",
                  "6:21: <credentials>: the scopes attribute is required (agent, tenant, global)",
                  "6:35: <credentials>: only one per profile",
                  "7:34: <credentials>: scopes: 'agent' is listed twice"));
}

TEST(Policy, MemoryAccessIsGrantedOnlyByAMemoryElement) {
  Result<Policy> policy = ParsePolicy(R"(<policy format="1">
  <profile name="none"/>
  <profile name="reader"><memory access="read"/></profile>
  <profile name="writer"><memory access="read-write"/></profile>
</policy>)");
  ASSERT_TRUE(policy) << policy.error().message();
  EXPECT_FALSE(policy->Find("none")->memory);
  EXPECT_EQ(policy->Find("reader")->memory, memory::Access::kRead);
  EXPECT_EQ(policy->Find("writer")->memory, memory::Access::kReadWrite);
  EXPECT_EQ(ProfileToJson(*policy->Find("writer"))["memory"], "read-write");
  EXPECT_TRUE(ProfileToJson(*policy->Find("none"))["memory"].is_null());

  EXPECT_THAT(Issues(R"(<policy format="1"><profile name="a">
<memory/>
<memory access="rw" who="me"><x/></memory>
</profile></policy>)"),
              ElementsAre("2:1: <memory>: the access attribute is required (read or read-write)",
                          "3:1: <memory>: only one per profile",
                          "3:21: <memory>: unknown attribute 'who' (expected access)",
                          "3:30: <memory>: takes no child elements, found <x>",
                          "3:9: <memory>: access: 'rw' is not read or read-write"));
}

}  // namespace
}  // namespace ralph::ralphd

namespace ralph::ralphd {
namespace {

TEST(Isolation, AProfileMayRequireAVmAndAJobMayOnlyAskForMore) {
  Result<Policy> policy = ParsePolicy(R"(<?xml version="1.0"?>
<policy format="1">
  <profile name="default"/>
  <profile name="untrusted" isolation="vm"/>
  <profile name="plain" isolation="namespaces"/>
</policy>
)");
  ASSERT_TRUE(policy) << policy.error().message();
  const Profile& def = *policy->Find("default");
  const Profile& untrusted = *policy->Find("untrusted");
  EXPECT_EQ(def.isolation, Isolation::kNamespaces);
  EXPECT_EQ(policy->Find("plain")->isolation, Isolation::kNamespaces);
  EXPECT_EQ(untrusted.isolation, Isolation::kVm);
  EXPECT_EQ(ProfileToJson(untrusted)["isolation"], "vm");
  EXPECT_EQ(ProfileToJson(def)["isolation"], "namespaces");

  const VmSupport none{false, "qemu-system-x86_64 is not installed"};
  const VmSupport some{true, ""};
  EXPECT_EQ(JobIsolation(def, std::nullopt, none).value(), Isolation::kNamespaces);
  EXPECT_EQ(JobIsolation(def, Isolation::kVm, some).value(), Isolation::kVm);
  EXPECT_EQ(JobIsolation(untrusted, std::nullopt, some).value(), Isolation::kVm);

  auto less = JobIsolation(untrusted, Isolation::kNamespaces, some);
  ASSERT_FALSE(less);
  EXPECT_EQ(less.error().code(), ErrorCode::kRefused);
  EXPECT_EQ(less.error().message(),
            "isolation: 'namespaces' is less than profile 'untrusted' requires (vm)");

  auto required = JobIsolation(untrusted, std::nullopt, none);
  ASSERT_FALSE(required);
  EXPECT_EQ(required.error().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(required.error().message(),
            "isolation: profile 'untrusted' requires vm, and this machine cannot run a VM job: "
            "qemu-system-x86_64 is not installed");
  auto asked = JobIsolation(def, Isolation::kVm, none);
  ASSERT_FALSE(asked);
  EXPECT_EQ(asked.error().message(),
            "isolation: the job requires vm, and this machine cannot run a VM job: "
            "qemu-system-x86_64 is not installed");
}

TEST(Isolation, AnUnknownIsolationIsAnIssueOnItsAttribute) {
  PolicyCheck check = CheckPolicy(R"(<?xml version="1.0"?>
<policy format="1">
  <profile name="x" isolation="hypervisor"/>
</policy>
)");
  ASSERT_EQ(check.issues.size(), 1u);
  EXPECT_EQ(check.issues[0].ToString(),
            "3:21: <profile>: isolation: 'hypervisor' is not namespaces or vm");
}

TEST(Isolation, AVmProfileSizesItsPoolAndOthersHaveNone) {
  Result<Policy> policy = ParsePolicy(R"(<?xml version="1.0"?>
<policy format="1">
  <profile name="default"/>
  <profile name="pooled" isolation="vm" vm-pool="3"/>
  <profile name="unpooled" isolation="vm" vm-pool="0"/>
</policy>
)");
  ASSERT_TRUE(policy) << policy.error().message();
  EXPECT_EQ(policy->Find("default")->vm_pool, 0u);
  EXPECT_EQ(policy->Find("pooled")->vm_pool, 3u);
  EXPECT_EQ(policy->Find("unpooled")->vm_pool, 0u);
  EXPECT_EQ(ProfileToJson(*policy->Find("pooled"))["vm_pool"], 3);

  PolicyCheck check = CheckPolicy(R"(<?xml version="1.0"?>
<policy format="1">
  <profile name="a" vm-pool="2"/>
  <profile name="b" isolation="vm" vm-pool="17"/>
  <profile name="c" isolation="vm" vm-pool="many"/>
</policy>
)");
  ASSERT_EQ(check.issues.size(), 3u);
  EXPECT_EQ(check.issues[0].ToString(),
            "3:21: <profile>: vm-pool: only a profile with isolation=\"vm\" has a pool of VMs");
  EXPECT_EQ(check.issues[1].ToString(), "4:36: <profile>: vm-pool: '17' is not a number in 0..16");
  EXPECT_EQ(check.issues[2].ToString(),
            "5:36: <profile>: vm-pool: 'many' is not a number in 0..16");
}

}  // namespace
}  // namespace ralph::ralphd
