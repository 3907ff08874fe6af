// A job's files on the host side: the uploaded workspace extracted into
// its upper layer, the workspace archived for download, and what the job
// changed in its writable layer (path, size, SHA-256); a loop job's
// repository (its commits, diffs and rollbacks), kept with git.
//
// Archives are read and written in process with libarchive: an upload comes
// from a client and is hostile, so it is extracted with libarchive's
// secure-extract flags (no absolute paths, no "..", nothing through a
// symlink) and every entry is owned by the job's root (never by the host's).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/result.h"
#include "services/ralphd/store.h"

namespace ralph::ralphd {

// Extracts the tar archive at `tar_path` into `dir`, every entry owned by
// `uid`:`gid`. kInvalidArgument naming the entry for an unsafe or broken
// archive.
Result<void> ExtractTar(const std::string& tar_path, const std::string& dir, uid_t uid, gid_t gid);

// The members of the tar archive at `path` (kind "file", "directory" or
// "symlink", and size; no digests). kInvalidArgument when it is not one.
Result<std::vector<FileRecord>> ListTar(const std::string& path);

// The content of the regular file `member` ("PROMPT.md", "./PROMPT.md")
// of the tar archive at `tar_path`; nullopt when it has none of that name.
// kInvalidArgument when it is longer than `max_bytes`.
Result<std::optional<std::string>> ReadTarFile(const std::string& tar_path, std::string_view member,
                                               size_t max_bytes);

// `dir`'s content as a tar archive (paths relative to it, "./name").
Result<std::string> ArchiveDirectory(const std::string& dir);

// A loop iteration's commit of the workspace (docs/ralphd.md "Loop mode").
struct WorkspaceCommit {
  std::string commit;    // hex
  bool changed = false;  // its tree differs from the previous commit's (or is not empty)
};

// The git loop mode keeps its repositories with, unless ralphd is told
// another (--git).
inline constexpr std::string_view kDefaultGit = "/usr/bin/git";

// `git --version` of the program `git`: kNotFound (or kUnsupported when it
// does not run) with a message that says loop mode needs it.
Result<std::string> ProbeGit(const std::string& git);

// Commits everything in `work_tree` (a loop job's workspace on the host) to
// the repository `git_dir` (kept outside the workspace, so nothing the job
// writes is git configuration or a hook; made at the first call) with the
// program `git` and no user or system configuration, as a fixed author and
// committer at the fixed date `iteration` seconds after the epoch: the
// same workspaces give the same commits.
Result<WorkspaceCommit> CommitWorkspace(const std::string& git, const std::string& git_dir,
                                        const std::string& work_tree, uint64_t iteration);

// The first parent of `commit` in `git_dir`; "" for a root commit.
Result<std::string> ParentCommit(const std::string& git, const std::string& git_dir,
                                 const std::string& commit);

// A unified diff (git's, with binary patches) from `from` ("" for the
// empty tree) to `to`, at most `max_bytes` of it kept; `bytes` is the
// whole diff's size, `truncated` when text is shorter.
struct WorkspaceDiff {
  std::string text;
  uint64_t bytes = 0;
  bool truncated = false;
};
Result<WorkspaceDiff> DiffCommits(const std::string& git, const std::string& git_dir,
                                  const std::string& from, const std::string& to, size_t max_bytes);

// Makes `work_tree` exactly `commit`'s tree: its files with their bytes
// and executable bits and its symlinks, nothing else (files made later,
// ignored ones included, are removed) except `.git` directories, which git
// never records or touches. What git wrote is then owned by `uid`:`uid`.
// The result is committed on top of the history as `message`, dated like
// iteration `date_iteration`; returns that commit. Nothing of the job may
// run in `work_tree` meanwhile.
Result<std::string> RestoreWorkspace(const std::string& git, const std::string& git_dir,
                                     const std::string& work_tree, const std::string& commit,
                                     uid_t uid, uint64_t date_iteration,
                                     const std::string& message);

// Every entry below `dir` ("/"-prefixed paths relative to it, `prefix`
// prepended): regular files with their size and SHA-256, symlinks with the
// length of their target, directories skipped. For an overlay upper layer,
// whiteouts (character devices 0:0) are "deleted".
Result<std::vector<FileRecord>> ListFiles(const std::string& dir, const std::string& prefix);

// A directory made (or kept) with `mode`, owned by `uid`:`uid`.
Result<void> MakeOwnedDir(const std::string& path, mode_t mode, uid_t uid);

// Hands the entries below `dir` that the host's root owns (what ralphd or
// git wrote there) to `uid`:`uid`, the job's root; the job's own entries
// keep their owners. Symlinks are changed, never followed.
Result<void> ChownRootOwned(const std::string& dir, uid_t uid);

}  // namespace ralph::ralphd
