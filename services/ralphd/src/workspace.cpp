#include "services/ralphd/workspace.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include <fmt/format.h>

#include "platform/process.h"
#include "platform/sha256.h"
#include "platform/unique_fd.h"

namespace ralph::ralphd {
namespace {

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_free(a); }
};
using Archive = std::unique_ptr<archive, ArchiveDeleter>;

Error ArchiveError(archive* a, std::string_view what) {
  const char* message = archive_error_string(a);
  return Error::Make(ErrorCode::kInvalidArgument,
                     fmt::format("{}: {}", what, message ? message : "libarchive failed"));
}

// A tar archive (plain, gzip, xz or zstd) opened for reading.
Result<Archive> OpenTar(const std::string& path, std::string_view what) {
  Archive in(archive_read_new());
  archive_read_support_format_tar(in.get());
  archive_read_support_format_gnutar(in.get());
  archive_read_support_filter_gzip(in.get());
  archive_read_support_filter_xz(in.get());
  archive_read_support_filter_zstd(in.get());
  if (archive_read_open_filename(in.get(), path.c_str(), 65536) != ARCHIVE_OK) {
    return ArchiveError(in.get(), what);
  }
  return in;
}

// A member name is safe when it is relative and has no ".." component.
bool SafeMemberName(std::string_view name) {
  if (name.empty() || name[0] == '/') return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    if (name.substr(start, end - start) == "..") return false;
    start = end + 1;
  }
  return true;
}

Result<std::string> Sha256OfFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return Error::FromErrno(fmt::format("open {}", path), errno);
  Sha256 hasher = TRY(Sha256::Create());
  uint8_t buffer[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno(fmt::format("read {}", path), errno);
    if (n == 0) break;
    TRY(hasher.Update(std::span<const uint8_t>(buffer, static_cast<size_t>(n))));
  }
  Sha256Digest digest = TRY(hasher.Finish());
  return DigestToHex(digest);
}

// nftw has no user data: the walk's state is per thread.
struct Walk {
  std::string prefix;
  size_t root_length = 0;
  std::vector<FileRecord>* files = nullptr;
  std::optional<Error> error;
};
thread_local Walk* current_walk = nullptr;

int Visit(const char* path, const struct stat* st, int type, FTW*) {
  Walk& walk = *current_walk;
  std::string relative = std::string(path).substr(walk.root_length);
  if (relative.empty()) return 0;  // the root itself
  FileRecord record{.path = walk.prefix + relative};
  if (type == FTW_F && S_ISREG(st->st_mode)) {
    Result<std::string> digest = Sha256OfFile(path);
    if (!digest) {
      walk.error = digest.error();
      return 1;
    }
    record.kind = "file";
    record.size = static_cast<uint64_t>(st->st_size);
    record.sha256 = *digest;
  } else if (type == FTW_SL) {
    record.kind = "symlink";
    record.size = static_cast<uint64_t>(st->st_size);
  } else if (S_ISCHR(st->st_mode) && major(st->st_rdev) == 0 && minor(st->st_rdev) == 0) {
    record.kind = "deleted";  // an overlayfs whiteout
  } else {
    return 0;  // directories and special files
  }
  walk.files->push_back(std::move(record));
  return 0;
}

la_ssize_t AppendToString(archive*, void* data, const void* buffer, size_t length) {
  static_cast<std::string*>(data)->append(static_cast<const char*>(buffer), length);
  return static_cast<la_ssize_t>(length);
}

}  // namespace

Result<void> ExtractTar(const std::string& tar_path, const std::string& dir, uid_t uid, gid_t gid) {
  Archive in = TRY(OpenTar(tar_path, "workspace upload"));
  Archive out(archive_write_disk_new());
  // The member names are checked here (relative, no ".."), then made
  // absolute below `dir`; libarchive refuses to extract through symlinks
  // (also ones the archive itself made) and ".." components.
  archive_write_disk_set_options(
      out.get(), ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                     ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME);
  archive_entry* entry = nullptr;
  while (true) {
    int rc = archive_read_next_header(in.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) return ArchiveError(in.get(), "workspace upload");
    std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    if (name.rfind("./", 0) == 0) name.erase(0, 2);
    if (name.empty() || name == ".") continue;
    if (!SafeMemberName(name)) {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("workspace upload: member '{}' is absolute or has '..'", name));
    }
    if (archive_entry_hardlink(entry)) {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("workspace upload: member '{}' is a hard link (not supported)", name));
    }
    mode_t type = archive_entry_filetype(entry);
    if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("workspace upload: member '{}' is not a file, directory or "
                                     "symlink",
                                     name));
    }
    archive_entry_set_pathname(entry, (dir + "/" + name).c_str());
    archive_entry_set_uid(entry, uid);
    archive_entry_set_gid(entry, gid);
    archive_entry_set_perm(entry, archive_entry_perm(entry) & 0777);
    if (archive_write_header(out.get(), entry) != ARCHIVE_OK) {
      return ArchiveError(out.get(), fmt::format("workspace upload: member '{}'", name));
    }
    const void* block = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    while ((rc = archive_read_data_block(in.get(), &block, &size, &offset)) == ARCHIVE_OK) {
      if (archive_write_data_block(out.get(), block, size, offset) != ARCHIVE_OK) {
        return ArchiveError(out.get(), fmt::format("workspace upload: member '{}'", name));
      }
    }
    if (rc != ARCHIVE_EOF)
      return ArchiveError(in.get(), fmt::format("workspace upload: member '{}'", name));
    if (archive_write_finish_entry(out.get()) != ARCHIVE_OK) {
      return ArchiveError(out.get(), fmt::format("workspace upload: member '{}'", name));
    }
  }
  if (archive_write_close(out.get()) != ARCHIVE_OK)
    return ArchiveError(out.get(), "workspace upload");
  return {};
}

Result<std::vector<FileRecord>> ListTar(const std::string& path) {
  Archive in = TRY(OpenTar(path, "workspace archive"));
  std::vector<FileRecord> files;
  archive_entry* entry = nullptr;
  while (true) {
    int rc = archive_read_next_header(in.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) return ArchiveError(in.get(), "workspace archive");
    std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    if (name.rfind("./", 0) == 0) name.erase(0, 2);
    if (name.empty() || name == ".") continue;
    while (!name.empty() && name.back() == '/') name.pop_back();
    mode_t type = archive_entry_filetype(entry);
    files.push_back({.path = "/work/" + name,
                     .kind = type == AE_IFDIR   ? "directory"
                             : type == AE_IFLNK ? "symlink"
                                                : "file",
                     .size = static_cast<uint64_t>(archive_entry_size(entry))});
    if (archive_read_data_skip(in.get()) != ARCHIVE_OK) {
      return ArchiveError(in.get(), "workspace archive");
    }
  }
  return files;
}

Result<std::optional<std::string>> ReadTarFile(const std::string& tar_path, std::string_view member,
                                               size_t max_bytes) {
  Archive in = TRY(OpenTar(tar_path, "workspace archive"));
  std::string want(member);
  if (want.rfind("./", 0) == 0) want.erase(0, 2);
  archive_entry* entry = nullptr;
  while (true) {
    int rc = archive_read_next_header(in.get(), &entry);
    if (rc == ARCHIVE_EOF) return std::optional<std::string>();
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) return ArchiveError(in.get(), "workspace archive");
    std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    if (name.rfind("./", 0) == 0) name.erase(0, 2);
    if (name != want || archive_entry_filetype(entry) != AE_IFREG) {
      if (archive_read_data_skip(in.get()) != ARCHIVE_OK) {
        return ArchiveError(in.get(), "workspace archive");
      }
      continue;
    }
    la_int64_t size = archive_entry_size(entry);
    if (size < 0 || static_cast<uint64_t>(size) > max_bytes) {
      return Error::Make(
          ErrorCode::kInvalidArgument,
          fmt::format("{}: {} bytes is longer than the limit of {}", member, size, max_bytes));
    }
    std::string content(static_cast<size_t>(size), '\0');
    la_ssize_t got = archive_read_data(in.get(), content.data(), content.size());
    if (got < 0 || static_cast<size_t>(got) != content.size()) {
      return ArchiveError(in.get(), fmt::format("reading {} from the workspace archive", member));
    }
    return std::optional<std::string>(std::move(content));
  }
}

Result<std::string> ArchiveDirectory(const std::string& dir) {
  std::string tar;
  Archive out(archive_write_new());
  archive_write_set_format_pax_restricted(out.get());
  if (archive_write_open(out.get(), &tar, nullptr, AppendToString, nullptr) != ARCHIVE_OK) {
    return ArchiveError(out.get(), "archiving the workspace");
  }
  Archive disk(archive_read_disk_new());
  archive_read_disk_set_symlink_physical(disk.get());  // never follow a job's symlinks
  if (archive_read_disk_open(disk.get(), dir.c_str()) != ARCHIVE_OK) {
    return ArchiveError(disk.get(), fmt::format("archiving {}", dir));
  }
  while (true) {
    archive_entry* entry = archive_entry_new();
    int rc = archive_read_next_header2(disk.get(), entry);
    if (rc == ARCHIVE_EOF) {
      archive_entry_free(entry);
      break;
    }
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
      archive_entry_free(entry);
      return ArchiveError(disk.get(), fmt::format("archiving {}", dir));
    }
    archive_read_disk_descend(disk.get());
    std::string path = archive_entry_pathname(entry);
    std::string relative = path.size() > dir.size() ? "." + path.substr(dir.size()) : ".";
    archive_entry_set_pathname(entry, relative.c_str());
    if (archive_write_header(out.get(), entry) != ARCHIVE_OK) {
      archive_entry_free(entry);
      return ArchiveError(out.get(), fmt::format("archiving {}", path));
    }
    if (archive_entry_filetype(entry) == AE_IFREG && archive_entry_size(entry) > 0) {
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      if (!fd) {
        archive_entry_free(entry);
        return Error::FromErrno(fmt::format("open {}", path), errno);
      }
      char buffer[65536];
      ssize_t n;
      while ((n = ::read(fd.get(), buffer, sizeof buffer)) > 0) {
        archive_write_data(out.get(), buffer, static_cast<size_t>(n));
      }
    }
    archive_entry_free(entry);
  }
  if (archive_write_close(out.get()) != ARCHIVE_OK) return ArchiveError(out.get(), "archiving");
  return tar;
}

Result<std::vector<FileRecord>> ListFiles(const std::string& dir, const std::string& prefix) {
  std::vector<FileRecord> files;
  Walk walk{.prefix = prefix, .root_length = dir.size(), .files = &files};
  current_walk = &walk;
  int rc = ::nftw(dir.c_str(), Visit, 16, FTW_PHYS);
  current_walk = nullptr;
  if (walk.error) return *walk.error;
  if (rc != 0) return Error::FromErrno(fmt::format("walking {}", dir), errno);
  return files;
}

namespace {

// The environment of every git run: no system or global configuration, no
// identity from the host, the fixed author and committer, the date `date`.
std::vector<std::string> GitEnvironment(const std::string& date) {
  return {"GIT_CONFIG_NOSYSTEM=1",
          "GIT_CONFIG_GLOBAL=/dev/null",
          "HOME=/nonexistent",
          "PATH=/usr/bin:/bin",
          "LC_ALL=C",
          "GIT_TERMINAL_PROMPT=0",
          "GIT_AUTHOR_NAME=ralphd",
          "GIT_AUTHOR_EMAIL=ralphd@ralphos.invalid",
          "GIT_COMMITTER_NAME=ralphd",
          "GIT_COMMITTER_EMAIL=ralphd@ralphos.invalid",
          "GIT_AUTHOR_DATE=" + date,
          "GIT_COMMITTER_DATE=" + date};
}

// The fixed date of what is committed after iteration N.
std::string IterationDate(uint64_t iteration) {
  return fmt::format("@{} +0000", iteration);
}

// One run of `git` with `env` in `cwd` (the caller's when empty); its
// stdout without the trailing newline. With `on_stdout` the output goes
// there instead.
Result<std::string> RunGit(
    const std::string& git, const std::vector<std::string>& env, const std::string& cwd,
    std::vector<std::string> args,
    std::function<Result<void>(std::span<const uint8_t>)> on_stdout = nullptr) {
  // The work tree belongs to the job's uid (safe.directory); nothing of
  // git runs anything the job could have written; no automatic
  // maintenance (it would start `git maintenance` as a child, which a
  // slot's git, a lone binary, does not have).
  std::vector<std::string> argv = {git,
                                   "-c",
                                   "safe.directory=*",
                                   "-c",
                                   "core.hooksPath=/dev/null",
                                   "-c",
                                   "core.fsmonitor=false",
                                   "-c",
                                   "core.autocrlf=false",
                                   "-c",
                                   "commit.gpgsign=false",
                                   "-c",
                                   "gc.auto=0",
                                   "-c",
                                   "maintenance.auto=false"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out = TRY(RunProgramChecked({.argv = std::move(argv),
                                           .env = env,
                                           .environment = ProgramEnvironment::kOnly,
                                           .cwd = cwd,
                                           .on_stdout = std::move(on_stdout),
                                           .package = "git"}));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// The environment of a run on the repository `git_dir` and the work tree
// `work_tree`.
std::vector<std::string> RepositoryEnvironment(const std::string& git_dir,
                                               const std::string& work_tree,
                                               const std::string& date) {
  std::vector<std::string> env = GitEnvironment(date);
  env.push_back("GIT_DIR=" + git_dir);
  if (!work_tree.empty()) env.push_back("GIT_WORK_TREE=" + work_tree);
  return env;
}

}  // namespace

Result<std::string> ProbeGit(const std::string& git) {
  Result<std::string> version = RunGit(git, GitEnvironment(IterationDate(0)), "", {"--version"});
  if (!version) {
    return Error::Make(version.error().code() == ErrorCode::kNotFound ? ErrorCode::kNotFound
                                                                      : ErrorCode::kUnsupported,
                       fmt::format("loop mode needs git ({}, Debian package git) to keep its "
                                   "workspace's commits: {}",
                                   git, version.error().message()));
  }
  return version;
}

Result<WorkspaceCommit> CommitWorkspace(const std::string& git, const std::string& git_dir,
                                        const std::string& work_tree, uint64_t iteration) {
  const std::string date = IterationDate(iteration);
  std::string before;
  const bool first = ::access((git_dir + "/HEAD").c_str(), F_OK) != 0;
  if (first) {
    // Bare: the repository names no work tree, so it outlives this one.
    // No templates: nothing but git's own files in it.
    TRY_CTX(RunGit(git, GitEnvironment(date), work_tree,
                   {"init", "-q", "--bare", "--template=", "--initial-branch=main", git_dir}),
            "making the loop's repository");
  }
  std::vector<std::string> env = RepositoryEnvironment(git_dir, work_tree, date);
  if (first) {
    before = TRY(RunGit(git, env, work_tree, {"hash-object", "-t", "tree", "/dev/null"}));
  } else {
    before = TRY(RunGit(git, env, work_tree, {"rev-parse", "HEAD^{tree}"}));
  }
  TRY_CTX(RunGit(git, env, work_tree, {"add", "-A", "--", "."}), "committing the workspace");
  std::string tree = TRY(RunGit(git, env, work_tree, {"write-tree"}));
  TRY_CTX(RunGit(git, env, work_tree,
                 {"commit", "-q", "--allow-empty", "--no-verify", "-m",
                  fmt::format("iteration {}", iteration)}),
          "committing the workspace");
  return WorkspaceCommit{.commit = TRY(RunGit(git, env, work_tree, {"rev-parse", "HEAD"})),
                         .changed = tree != before};
}

Result<std::string> ParentCommit(const std::string& git, const std::string& git_dir,
                                 const std::string& commit) {
  std::vector<std::string> env = RepositoryEnvironment(git_dir, "", IterationDate(0));
  // "C P1 ...": the commit and its parents.
  std::string line = TRY(RunGit(git, env, "", {"rev-list", "--parents", "-n", "1", commit}));
  size_t space = line.find(' ');
  if (space == std::string::npos) return std::string();
  size_t end = line.find(' ', space + 1);
  return line.substr(space + 1, end == std::string::npos ? std::string::npos : end - space - 1);
}

Result<WorkspaceDiff> DiffCommits(const std::string& git, const std::string& git_dir,
                                  const std::string& from, const std::string& to,
                                  size_t max_bytes) {
  std::vector<std::string> env = RepositoryEnvironment(git_dir, "", IterationDate(0));
  std::string base = from;
  if (base.empty()) base = TRY(RunGit(git, env, "", {"hash-object", "-t", "tree", "/dev/null"}));
  WorkspaceDiff diff;
  // Read to its end (the total is reported) but kept only up to the limit.
  auto keep = [&](std::span<const uint8_t> chunk) -> Result<void> {
    diff.bytes += chunk.size();
    if (diff.text.size() < max_bytes) {
      size_t take = std::min(chunk.size(), max_bytes - diff.text.size());
      diff.text.append(reinterpret_cast<const char*>(chunk.data()), take);
    }
    return {};
  };
  TRY(RunGit(git, env, "",
             {"diff", "--no-color", "--no-ext-diff", "--no-textconv", "--binary", "--no-renames",
              base, to, "--"},
             keep));
  diff.truncated = diff.bytes > diff.text.size();
  return diff;
}

Result<std::string> RestoreWorkspace(const std::string& git, const std::string& git_dir,
                                     const std::string& work_tree, const std::string& commit,
                                     uid_t uid, uint64_t date_iteration,
                                     const std::string& message) {
  std::vector<std::string> env =
      RepositoryEnvironment(git_dir, work_tree, IterationDate(date_iteration));
  // The index is the last commit's: --reset -u makes it and the work tree
  // the target's (files the target lacks removed, the others written);
  // clean then removes what the index never had (files made after the last
  // commit, ignored ones). `.git` directories are never touched by either.
  TRY_CTX(RunGit(git, env, work_tree, {"read-tree", "--reset", "-u", commit}),
          "restoring the workspace");
  TRY_CTX(RunGit(git, env, work_tree, {"clean", "-q", "-f", "-f", "-d", "-x", "--", "."}),
          "restoring the workspace");
  TRY(ChownRootOwned(work_tree, uid));
  // The restore is a commit of its own on top: the history keeps what was
  // undone, and the next iteration's `changed` compares with this tree.
  TRY_CTX(
      RunGit(git, env, work_tree, {"commit", "-q", "--allow-empty", "--no-verify", "-m", message}),
      "recording the rollback");
  return RunGit(git, env, work_tree, {"rev-parse", "HEAD"});
}

// A directory made (or kept) with `mode`, owned by `uid`:`uid`.
Result<void> MakeOwnedDir(const std::string& path, mode_t mode, uid_t uid) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return Error::FromErrno(fmt::format("mkdir {}", path), errno);
  }
  if (::chmod(path.c_str(), mode) != 0 || ::lchown(path.c_str(), uid, uid) != 0) {
    return Error::FromErrno(fmt::format("chown {}", path), errno);
  }
  return {};
}

Result<void> ChownRootOwned(const std::string& dir, uid_t uid) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) {
      return Error::FromErrno(fmt::format("lstat {}", it->path().string()), errno);
    }
    if (st.st_uid == 0 && ::lchown(it->path().c_str(), uid, uid) != 0) {
      return Error::FromErrno(fmt::format("chown {}", it->path().string()), errno);
    }
  }
  if (ec) return Error::Make(ErrorCode::kIo, fmt::format("listing {}: {}", dir, ec.message()));
  return {};
}

}  // namespace ralph::ralphd
