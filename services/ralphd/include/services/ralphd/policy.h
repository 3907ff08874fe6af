// Job policy: an XML document (format in docs/policy.md) of named profiles,
// each with resource limits, an egress allowlist and explicit mounts, and the
// mapping of a profile plus a job's request onto a sandbox::SandboxSpec.
//
//   PolicyCheck check = CheckPolicy(xml);       // every issue, with line and column
//   if (!check.ok()) ... check.issues[i].ToString()   // "3:12: limits: ..."
//   const Profile* profile = check.policy->Find("default");
//   Result<SandboxSpec> spec = MakeJobSpec(*profile, job, environment);
//
// Default deny: a profile without <egress> gets no network at all (loopback
// only), one with an empty <egress/> gets a network on which every
// connection is refused (and reported) but the API hosts of the job's own
// agent profile (services/agents profile.h), by domain, unless its
// agent-hosts attribute narrows or removes them; nothing else is allowed
// unless listed.
// A job may ask for less than its profile allows, never more: MakeJobSpec
// refuses (kRefused) naming the limit. Parsing is pure; nothing here touches
// a file or the store (policy_store.h keeps the versions).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "sandbox/spec.h"
#include "services/creds/store.h"
#include "services/memory/protocol.h"
#include "services/ralphd/commands.h"

namespace ralph::ralphd {

inline constexpr std::chrono::milliseconds kDefaultJobTimeout = std::chrono::hours(1);

struct ProfileLimits {
  uint64_t memory_bytes = sandbox::Limits{}.memory_bytes;
  uint32_t cpu_millis = sandbox::Limits{}.cpu_millis;
  uint32_t pids = sandbox::Limits{}.pids;
  uint64_t disk_bytes = sandbox::Limits{}.disk_bytes;
  std::chrono::milliseconds timeout = kDefaultJobTimeout;
};

// <credentials>: which of the agents' logged-in accounts (services/creds,
// docs/credentials.md) a job of the profile may hold. Without it a job
// sees no credential at all.
struct CredentialGrant {
  // The scopes granted, most specific first when a job looks for an
  // account: agent (the account named after this profile), tenant (the
  // account of `tenant`), global (the appliance's account).
  std::vector<creds::Scope> scopes;
  std::string tenant;    // set exactly when the tenant scope is granted
  uint32_t holders = 1;  // running jobs that may hold one account at once
};

// Which API hosts of an agent job's profile its network gets by domain, on
// top of the policy profile's own allowlist (<egress agent-hosts=...>).
enum class AgentHostsMode {
  kAll,     // every API host of the job's agent profile (the default)
  kNone,    // none: only what <allow> lists
  kListed,  // only those of them named in `agent_hosts`
};

// The most VMs a profile's pool keeps booted (each holds its memory).
inline constexpr uint32_t kMaxVmPool = 16;

struct Profile {
  std::string name;
  // <profile isolation="vm">: every job of the profile runs in a VM of its
  // own (a job may ask for vm under a namespaces profile, never the reverse).
  Isolation isolation = Isolation::kNamespaces;
  // <profile vm-pool="N"> (isolation vm only): N VMs of the profile's
  // limits booted ahead, so its jobs start without a boot; 0: none.
  uint32_t vm_pool = 0;
  ProfileLimits limits;
  sandbox::NetworkSpec network;  // enabled only with an <egress> element
  std::vector<sandbox::BindMount> mounts;
  std::optional<CredentialGrant> credentials;
  AgentHostsMode agent_hosts_mode = AgentHostsMode::kAll;
  std::vector<std::string> agent_hosts;  // kListed: each an agent profile's API host
  // <memory access=".."/>: the shared agent memory's socket is mounted into
  // the job (docs/memory.md); absent: no socket.
  std::optional<memory::Access> memory;
};

struct Policy {
  std::map<std::string, Profile, std::less<>> profiles;
  const Profile* Find(std::string_view name) const;
};

// One problem in a document. line and column are 1-based; column is 0 when
// only the line is known (XML syntax errors: tinyxml2 reports the line).
struct PolicyIssue {
  int line = 0;
  int column = 0;
  std::string message;
  // "3:12: message" ("3: message" without a column).
  std::string ToString() const;
};

struct PolicyCheck {
  std::optional<Policy> policy;     // set only when issues is empty
  std::vector<PolicyIssue> issues;  // every problem found, in document order
  bool ok() const { return issues.empty(); }
};

// Parses and validates a whole document; never stops at the first issue
// (except an XML syntax error, after which nothing can be read).
PolicyCheck CheckPolicy(std::string_view document);

// CheckPolicy as a Result: kInvalidArgument listing every issue, one a line.
Result<Policy> ParsePolicy(std::string_view document);

// The policy a fresh state directory starts with: one "default" profile,
// the sandbox's default limits, no network.
std::string_view DefaultPolicyDocument();

// What a job brings: its command line and the limits it asks for.
struct JobRequest {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  std::optional<std::string> cwd;
  LimitsRequest limits;
  // The API hosts of the job's agent profile (AgentProfile::api_hosts;
  // empty for the command profile and for a job that is no agent job).
  std::vector<std::string> agent_hosts;
};

// What ralphd brings: the read-only base every job's rootfs is made of.
struct JobEnvironment {
  sandbox::BaseKind base_kind = sandbox::BaseKind::kDirectory;
  std::string base = "/";
};

// The sandbox for `job` under `profile`: kRefused naming the limit when the
// job asks for more than the profile allows ("limits.memory_bytes: 2147483648
// is more than profile 'default' allows (536870912)"), then the sandbox's own
// ValidateSpec (kInvalidArgument naming the field). The network is the
// profile's plus, when the profile has one (<egress>), the job's agent
// hosts that its agent-hosts mode lets through, as allowed domains.
Result<sandbox::SandboxSpec> MakeJobSpec(const Profile& profile, const JobRequest& job,
                                         const JobEnvironment& environment);

// Whether this machine can run VM jobs, and why not.
struct VmSupport {
  bool available = false;
  std::string reason;
};

// A job's isolation: the profile's, or more when the job asks for it.
// kRefused when the job asks for less than its profile requires; kUnsupported
// with `vm.reason` when the result is vm and this machine cannot run one.
Result<Isolation> JobIsolation(const Profile& profile, std::optional<Isolation> requested,
                               const VmSupport& vm);

// The profile as JSON (for `policy get` and job records).
nlohmann::json ProfileToJson(const Profile& profile);

// Whether a job of `profile` may clone its workspace from `url`: the
// profile has a network, allows the URL's host by domain (<allow domain>,
// "*.example.com" for subdomains) and opens the URL's port for domains
// (<egress domain-ports>). kRefused naming what is missing. The agent
// profiles' API hosts do not count: they are for the agent, not for code.
Result<void> CheckWorkspaceGit(const Profile& profile, const GitUrl& url);

// Makes `spec` clone `git` into its workspace before it runs its argv: a
// small /bin/sh script in the job's own sandbox (so the clone goes through
// the job's network, is recorded with its execs and cannot touch the host)
// runs git, then execs the argv; a failed clone ends the job with
// kCloneFailedExit and says why on stderr. Needs sh and git in the job's
// root (the agent image has both).
inline constexpr int kCloneFailedExit = 125;
void CloneIntoWorkspace(sandbox::SandboxSpec& spec, const WorkspaceGitRequest& git);

// The domains an agent job's network gets on top of the profile's
// allowed_domains: `agent_hosts` filtered by the profile's mode, none
// without a network, none already in its allowed_domains.
std::vector<std::string> AgentEgressDomains(const Profile& profile,
                                            const std::vector<std::string>& agent_hosts);

}  // namespace ralph::ralphd
