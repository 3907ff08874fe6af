// The agents' credentials in ralphd (docs/credentials.md): which account a
// job holds under its policy, one live copy per account shared by
// reference into the jobs holding it, the holder limit (others wait,
// queued), the write-back when the last holder is done, and every grant,
// release and wait in the audit log.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "services/agents/profile.h"
#include "services/ralphd/daemon.h"
#include "services/ralphd/workspace.h"

namespace ralph::ralphd {

using nlohmann::json;

namespace {

// Each account's live directory is a tmpfs of its own: the tool keeps its
// whole configuration directory there (sessions, caches, the credential),
// so a job writing without end fills this one and not /run. Its pages are
// charged to the jobs that write them, within their memory limits.
constexpr uint64_t kLiveDirBytes = 256ull << 20;
constexpr uint64_t kLiveDirInodes = 65536;

// "<live-dir>/claude.global.default": the account's live directory.
std::string LiveDirName(const creds::AccountId& account) {
  return fmt::format("{}.{}.{}", account.profile, creds::ScopeName(account.scope), account.name);
}

// The credential's name in the tool's directory (".credentials.json").
std::string_view CredentialName(std::string_view credential_file) {
  size_t slash = credential_file.rfind('/');
  return slash == std::string_view::npos ? credential_file : credential_file.substr(slash + 1);
}

// Whatever is at `dir`: the mounts on it go (a live directory a dead
// daemon left is one), then the directory. Symlinks are not followed.
void RemoveLiveDir(const std::string& dir) {
  while (::umount2(dir.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

Result<void> MountLiveDir(const std::string& dir, uid_t owner) {
  RemoveLiveDir(dir);  // never reused: a leftover is not trusted by its name
  if (::mkdir(dir.c_str(), 0700) != 0) {
    return Error::FromErrno(fmt::format("mkdir {}", dir), errno);
  }
  std::string options = fmt::format("mode=0700,uid={},gid={},size={}k,nr_inodes={}", owner, owner,
                                    kLiveDirBytes / 1024, kLiveDirInodes);
  if (::mount("ralph-credentials", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) !=
      0) {
    int err = errno;
    ::rmdir(dir.c_str());
    return Error::FromErrno(fmt::format("mount tmpfs on {}", dir), err);
  }
  return {};
}

std::string AccountName(const creds::Scope scope, const Profile& profile) {
  switch (scope) {
    case creds::Scope::kAgent: return profile.name;
    case creds::Scope::kTenant: return profile.credentials->tenant;
    case creds::Scope::kGlobal: return std::string(creds::kGlobalName);
  }
  return std::string(creds::kGlobalName);
}

// The account a command names: the global one is "default" when no name
// is given; an agent or tenant account needs its name.
Result<creds::AccountId> CommandAccount(const std::string& profile, const std::string& scope_name,
                                        const std::string& name) {
  creds::Scope scope = TRY_CTX(creds::ParseScope(scope_name), "body.scope");
  if (name.empty() && scope != creds::Scope::kGlobal) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("body.name: the {} scope needs a name ({})", scope_name,
                                   scope == creds::Scope::kAgent
                                       ? "the policy profile whose jobs use the account"
                                       : "the tenant named by the policy's <credentials tenant>"));
  }
  Result<creds::AccountId> id =
      creds::AccountId::Make(profile, scope, name.empty() ? std::string(creds::kGlobalName) : name);
  if (!id) {
    return Error::Make(id.error().code(), fmt::format("body.{}", id.error().message()));
  }
  return id;
}

}  // namespace

Result<Reply> Daemon::CredsList() {
  json accounts = json::array();
  for (const creds::AccountInfo& info : TRY(creds_->List())) {
    json holders = json::array();
    if (auto it = holdings_.find(info.id); it != holdings_.end()) {
      for (uint64_t job : it->second.jobs) holders.push_back(job);
    }
    accounts.push_back({{"account", info.id.ToString()},
                        {"profile", info.id.profile},
                        {"scope", std::string(creds::ScopeName(info.id.scope))},
                        {"name", info.id.name},
                        {"updated_unix", info.updated_unix},
                        {"holders", holders}});
  }
  return Reply::Json({{"accounts", accounts}});
}

Result<Reply> Daemon::CredsRevoke(const CredsRevokeCommand& command) {
  creds::AccountId account = TRY(CommandAccount(command.profile, command.scope, command.name));
  TRY(creds_->Revoke(account));
  json cut = json::array();
  if (auto it = holdings_.find(account); it != holdings_.end()) {
    // Jobs holding it lose it now: the live copy goes from the directory
    // they bind, and nothing is written back.
    it->second.revoked = true;
    for (uint64_t job : it->second.jobs) cut.push_back(job);
    ::unlink(it->second.live_file.c_str());
  }
  return Reply::Json({{"revoked", account.ToString()}, {"holders_cut", cut}});
}

Result<Reply> Daemon::CredsLogin(const Caller& caller, const CredsLoginCommand& command) {
  creds::AccountId account = TRY(CommandAccount(command.profile, command.scope, command.name));
  PolicyVersion version = TRY(store_->ActivePolicy());
  Policy policy = TRY(ParsePolicy(version.document));
  if (!policy.Find(command.policy_profile)) {
    return Error::Make(ErrorCode::kNotFound,
                       fmt::format("body.policy_profile: '{}' is not in the active policy "
                                   "(version {})",
                                   command.policy_profile, version.version));
  }
  // Refused now rather than when it starts: a login's home holds the
  // credential in the clear until it is captured.
  TRY(PrepareCredsLiveDir());
  json login = {{"profile", account.profile},
                {"scope", std::string(creds::ScopeName(account.scope))},
                {"name", account.name},
                {"policy_profile", command.policy_profile}};
  json request = {{"login", login}, {"tty", true}, {"profile", command.policy_profile}};
  if (command.columns) request["columns"] = *command.columns;
  if (command.rows) request["rows"] = *command.rows;
  JobRecord job{.state = JobState::kQueued,
                .profile = command.policy_profile,
                .request = request,
                .policy_version = version.version,
                .created = NowText()};
  job.id = TRY(store_->InsertJob(job));
  Audit("job.submit", fmt::format("job {}", job.id),
        {{"caller", caller.ToString()},
         {"login", account.ToString()},
         {"profile", command.policy_profile}},
        job.id);
  Emit("state", job.id, {{"state", JobStateName(job.state)}});
  Schedule();
  job = TRY(store_->Job(job.id));
  json out = JobToJson(job);
  out["account"] = account.ToString();
  return Reply::Json(out);
}

Result<void> Daemon::PrepareCredsLiveDir() {
  TRY(MakeOwnedDir(options_.creds_live_dir, 0711, 0));
  return creds::RequireMemoryFilesystem(options_.creds_live_dir);
}

Result<std::optional<creds::AccountId>> Daemon::GrantedAccount(std::string_view tool,
                                                               const Profile& profile) {
  if (!profile.credentials) return std::optional<creds::AccountId>();
  for (creds::Scope scope : profile.credentials->scopes) {
    Result<creds::AccountId> id = creds::AccountId::Make(tool, scope, AccountName(scope, profile));
    // A profile name that cannot name an account (none today: the rules
    // are the same) grants nothing at that scope.
    if (!id) continue;
    if (TRY(creds_->Has(*id))) return std::optional<creds::AccountId>(std::move(*id));
  }
  return std::optional<creds::AccountId>();
}

bool Daemon::AccountBusy(const creds::AccountId& account, const Profile& profile) const {
  auto it = holdings_.find(account);
  if (it == holdings_.end()) return false;
  uint32_t allowed = profile.credentials ? profile.credentials->holders : 1;
  return it->second.jobs.size() >= allowed;
}

void Daemon::NoteWaiting(uint64_t job, const creds::AccountId& account) {
  if (!waiting_told_.insert(job).second) return;
  auto it = holdings_.find(account);
  json holders = json::array();
  if (it != holdings_.end()) {
    for (uint64_t holder : it->second.jobs) holders.push_back(holder);
  }
  Emit("creds.wait", job, {{"account", account.ToString()}, {"holders", holders}});
}

Result<std::string> Daemon::HoldAccount(uint64_t job, const creds::AccountId& account,
                                        const Profile& profile, std::string_view credential_file,
                                        std::span<const agents::HomeFile> settings) {
  waiting_told_.erase(job);
  auto it = holdings_.find(account);
  bool checked_out = false;
  if (it == holdings_.end()) {
    std::string dir = options_.creds_live_dir + "/" + LiveDirName(account);
    const uid_t owner = options_.ids.host_base;
    auto grant = [&]() -> Result<std::string> {
      TRY(PrepareCredsLiveDir());
      TRY(MountLiveDir(dir, owner));
      std::string file =
          TRY(creds_->CheckOut(account, dir, CredentialName(credential_file), owner));
      // The profile's settings that live in the tool's directory are
      // written while it is new, before any job can see it.
      TRY(agents::WriteHomeFiles(dir, settings));
      TRY(ChownRootOwned(dir, owner));
      return file;
    };
    Result<std::string> file = grant();
    if (!file) {
      RemoveLiveDir(dir);
      return file.error().WithContext(fmt::format("granting account {}", account.ToString()));
    }
    it = holdings_.emplace(account, Holding{.live_dir = dir, .live_file = *file}).first;
    checked_out = true;
  }
  it->second.jobs.insert(job);
  held_by_job_[job] = account;
  // The grant is the read: the credential decrypted for this job (or the
  // live copy it joins).
  Audit("creds.grant", fmt::format("account {}", account.ToString()),
        {{"account", account.ToString()},
         {"job", job},
         {"scope", std::string(creds::ScopeName(account.scope))},
         {"policy_profile", profile.name},
         {"decrypted", checked_out},
         {"holders", it->second.jobs.size()}},
        job);
  return it->second.live_dir;
}

void Daemon::ReleaseAccount(uint64_t job) {
  waiting_told_.erase(job);
  auto held = held_by_job_.find(job);
  if (held == held_by_job_.end()) return;
  creds::AccountId account = held->second;
  held_by_job_.erase(held);
  auto it = holdings_.find(account);
  if (it == holdings_.end()) return;
  it->second.jobs.erase(job);
  json details = {
      {"account", account.ToString()}, {"job", job}, {"holders", it->second.jobs.size()}};
  if (it->second.jobs.empty()) {
    if (it->second.revoked || it->second.superseded) {
      // Revoked, or logged in again, while held: the live copy goes and
      // nothing is written back over what the store now says.
      details["written_back"] = false;
      details[it->second.revoked ? "revoked" : "superseded"] = true;
    } else {
      Result<void> back = creds_->CheckIn(account, it->second.live_file);
      details["written_back"] = back.has_value();
      if (!back) {
        details["error"] = back.error().message();
        Log(LogLevel::kError, back.error().ToString());
      }
    }
    RemoveLiveDir(it->second.live_dir);
    holdings_.erase(it);
  }
  Audit("creds.release", fmt::format("account {}", account.ToString()), std::move(details), job);
}

void Daemon::RecoverCredentials() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(options_.creds_live_dir.c_str()), ::closedir);
  if (!dir) return;  // nothing was ever held (or /run was new)
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir.get())) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  for (const creds::AccountInfo& info :
       creds_->List().value_or(std::vector<creds::AccountInfo>{})) {
    std::string name = LiveDirName(info.id);
    if (std::find(names.begin(), names.end(), name) == names.end()) continue;
    Result<agents::AgentKind> kind = agents::ParseAgentKind(info.id.profile);
    if (!kind) continue;
    // The previous daemon died holding it: its holders' last refresh is
    // in the live copy, and only there.
    std::string file = fmt::format("{}/{}/{}", options_.creds_live_dir, name,
                                   CredentialName(agents::GetProfile(*kind).credential_file));
    Result<void> back = creds_->CheckIn(info.id, file);
    json details = {{"account", info.id.ToString()}, {"written_back", back.has_value()}};
    if (!back) details["error"] = back.error().message();
    Audit("creds.recover", fmt::format("account {}", info.id.ToString()), std::move(details));
  }
  // Every live directory goes now, and whatever else is there (a login's
  // home, a temporary file, a revoked account's copy) belongs to no one.
  for (const std::string& name : names) RemoveLiveDir(options_.creds_live_dir + "/" + name);
}

}  // namespace ralph::ralphd
