// The agent image (tools/agent-image): the CLIs it holds run inside a real
// sandbox with the image as its root and print the versions the lock names;
// packing is a function of the tree; a second full build from the same lock
// has the same digest; a tampered cached image, a version the registry or
// the archive does not have and a tarball that does not match its integrity
// are refused by name with nothing left in the output directory.
//
// The fixture test agent_image_build builds (or takes from the cache) the
// image into $RALPH_BINARY_DIR/agent-image first.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/agents_lock.h"
#include "tests/support/run_program.h"
#include "tests/support/temp_dir.h"

namespace {

namespace fs = std::filesystem;
using ralph::testing::LockedNpmVersion;
using ralph::testing::NamesVersion;
using ralph::testing::ProgramStreams;
using ralph::testing::RunProgramStreams;
using ralph::testing::TempDir;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string Tool() {
  return Env("RALPH_SOURCE_DIR") + "/tools/agent-image/ralph-agent-image";
}
std::string Lock() {
  return Env("RALPH_SOURCE_DIR") + "/tools/agent-image/agents.lock";
}
std::string Image() {
  return Env("RALPH_BINARY_DIR") + "/agent-image/agent-amd64.squashfs";
}

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string RecordedDigest(const std::string& image) {
  return Read(image + ".sha256").substr(0, 64);
}

// Files in `dir` (none when it does not exist).
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) names.push_back(entry.path().string());
  return names;
}

// The cache the fixture used (the tests share its downloads).
std::string SharedCache() {
  std::string dir = Env("RALPH_AGENT_IMAGE_CACHE");
  return dir.empty() ? "/var/cache/ralphos/agent-image" : dir;
}

class AgentImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(Image()))
        << Image() << " is missing: the agent_image_build fixture runs first";
    ASSERT_EQ(RecordedDigest(Image()).size(), 64u);
  }
};

// --version of each CLI, run by `ralph-sandbox run` with the image as the
// job's read-only root, no network, the job's own /work as HOME.
TEST_F(AgentImageTest, EachCliPrintsItsLockedVersionInsideASandbox) {
  TempDir state("agent-image-state");
  // The job's mapped root must reach its volume's mount point below it.
  fs::permissions(state.path(), fs::perms(0755));
  const std::map<std::string, std::string> clis = {
      {"claude", "@anthropic-ai/claude-code"},
      {"codex", "@openai/codex"},
      {"opencode", "opencode-ai"},
  };
  for (const auto& [command, package] : clis) {
    std::string version = LockedNpmVersion(Lock(), package);
    ASSERT_FALSE(version.empty()) << package << " is not in " << Lock();
    ProgramStreams run = RunProgramStreams(
        {RALPH_SANDBOX_CLI, "run", "--image", Image(), "--state-dir", state.path(), "--no-network",
         "--memory", "2G", "--timeout", "120", "--env", "HOME=/work", "--env",
         "PATH=/usr/local/bin:/usr/bin:/bin", "--", command, "--version"});
    EXPECT_EQ(run.exit, 0) << command << ": " << run.out << run.err;
    EXPECT_TRUE(NamesVersion(run.out, version))
        << command << " --version printed '" << run.out << "', the lock says " << version;
  }
  RunProgramStreams({RALPH_SANDBOX_CLI, "drain", "--state-dir", state.path()});
}

// The packing stage alone: the image unpacked and packed again is the same
// bytes, so the digest depends on the tree and nothing else (not the time,
// not the order files were written in).
TEST_F(AgentImageTest, PackingTheUnpackedImageGivesTheSameDigest) {
  TempDir work("agent-image-repack");
  ProgramStreams run = RunProgramStreams({Tool(), "repack", Image(), work / "repacked.squashfs"},
                                         {"TMPDIR=" + work.path()});
  ASSERT_EQ(run.exit, 0) << run.err;
  EXPECT_EQ(run.out.substr(0, 64), RecordedDigest(Image()));
}

// The cache entry of this lock in a private cache under `work`, holding the
// fixture's image with one byte flipped (its digest file unchanged); the
// downloads (Debian packages, npm tarballs) are the shared cache's, which
// debootstrap/apt check against the archive's signed indexes and the
// builder against the lock's integrity on every use. Returns the entry.
std::string TamperedCacheEntry(const std::string& cache) {
  fs::create_directories(cache + "/images");
  for (const char* shared : {"debs", "npm", "apt-archives", "apt-lists"}) {
    fs::create_directories(SharedCache() + "/" + shared);
    fs::create_directory_symlink(SharedCache() + "/" + shared, cache + "/" + shared);
  }
  ProgramStreams key = RunProgramStreams({Tool(), "cache-key"});
  EXPECT_EQ(key.exit, 0) << key.err;
  std::string entry = cache + "/images/" + key.out.substr(0, 64);
  fs::create_directories(entry);
  fs::copy_file(Image(), entry + "/agent-amd64.squashfs");
  fs::copy_file(Image() + ".sha256", entry + "/agent-amd64.squashfs.sha256");
  std::fstream image(entry + "/agent-amd64.squashfs",
                     std::ios::in | std::ios::out | std::ios::binary);
  image.seekg(4096);
  char byte = 0;
  image.read(&byte, 1);
  image.seekp(4096);
  byte = static_cast<char>(byte ^ 0x01);
  image.write(&byte, 1);
  return entry;
}

// A cached image is never trusted by its label: with --cache-only (no
// rebuild) a tampered one is refused, dropped from the cache, and nothing
// reaches the output directory.
TEST_F(AgentImageTest, ATamperedCachedImageIsRefusedAndDropped) {
  TempDir work("agent-image-tampered");
  std::string entry = TamperedCacheEntry(work / "cache");
  std::string out = work / "out";
  ProgramStreams run = RunProgramStreams(
      {Tool(), "build", "--cache-only", "--cache-dir", work / "cache", "--output", out});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.err.find("does not match its recorded digest"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find(RecordedDigest(Image())), std::string::npos) << run.err;
  EXPECT_FALSE(fs::exists(entry)) << "the tampered image stayed in the cache";
  EXPECT_TRUE(Entries(out).empty()) << "something was written to " << out;
}

// Reproducibility of the whole pipeline (debootstrap, apt, npm, scrub,
// pack): a second build of the lock, in a private cache whose entry was
// tampered with, must notice, rebuild and arrive at the fixture's digest.
// It costs a full build, so it runs once per cache entry: on success it
// stamps the shared entry ("reproduced", with the digest), and a later run
// that finds the stamp for this very digest skips (the entry's key is the
// lock and the builder, so the stamp holds for them). A cold cache (a new
// machine, a changed lock or builder) always runs it.
TEST_F(AgentImageTest, ASecondFullBuildOfTheLockHasTheSameDigest) {
  std::string first = RecordedDigest(Image());
  ProgramStreams key = RunProgramStreams({Tool(), "cache-key"});
  ASSERT_EQ(key.exit, 0) << key.err;
  std::string stamp = SharedCache() + "/images/" + key.out.substr(0, 64) + "/reproduced";
  if (Read(stamp).substr(0, 64) == first) {
    GTEST_SKIP() << "reproduced already: " << stamp << " (remove it to build again)";
  }
  TempDir work("agent-image-rebuild");
  std::string cache = work / "cache";
  std::string entry = TamperedCacheEntry(cache);
  std::string out = work / "out";
  ProgramStreams run = RunProgramStreams({Tool(), "build", "--cache-dir", cache, "--output", out});
  ASSERT_EQ(run.exit, 0) << run.err;
  EXPECT_NE(run.err.find("does not match its recorded digest"), std::string::npos) << run.err;
  EXPECT_EQ(run.out.substr(0, 64), first) << "two builds of one lock differ";
  EXPECT_EQ(RecordedDigest(out + "/agent-amd64.squashfs"), first);
  EXPECT_EQ(RecordedDigest(entry + "/agent-amd64.squashfs"), first);
  EXPECT_TRUE(Entries(cache + "/work").empty()) << "the build left its work directory";
  if (!HasFailure() && fs::is_directory(fs::path(stamp).parent_path())) Write(stamp, first + "\n");
}

// A Debian version the archive does not have is found in the archive's
// indexes before debootstrap runs.
TEST_F(AgentImageTest, ADebianVersionTheArchiveDoesNotHaveIsRefusedByName) {
  TempDir work("agent-image-bad-deb");
  std::string text = Read(Lock());
  std::smatch bash;
  ASSERT_TRUE(std::regex_search(text, bash, std::regex(R"(\ndeb amd64 base bash (\S+)\n)")));
  std::string lock = work / "agents.lock";
  Write(lock, std::regex_replace(text, std::regex(R"(\ndeb amd64 base bash \S+\n)"),
                                 "\ndeb amd64 base bash 0.0-0\n"));
  std::string cache = work / "cache";
  fs::create_directories(cache);
  fs::create_directory_symlink(SharedCache() + "/npm", cache + "/npm");
  std::string out = work / "out";
  ProgramStreams run =
      RunProgramStreams({Tool(), "build", "--lock", lock, "--cache-dir", cache, "--output", out});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.err.find("  bash=0.0-0\n"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("no longer has these locked versions"), std::string::npos) << run.err;
  EXPECT_FALSE(fs::exists(cache + "/debs")) << "debootstrap ran";
  EXPECT_TRUE(Entries(out).empty()) << "something was written to " << out;
}

// A cache of the test's own that shares the npm downloads of the fixture's
// (named by their digest, checked against the lock's integrity on use).
std::string PrivateCache(const TempDir& work) {
  std::string cache = work / "cache";
  fs::create_directories(cache);
  fs::create_directories(SharedCache() + "/npm");
  fs::create_directory_symlink(SharedCache() + "/npm", cache + "/npm");
  return cache;
}

// A lock derived from the real one with one line changed.
std::string LockWith(const std::string& package, const std::string& field_from,
                     const std::string& field_to) {
  std::istringstream lines(Read(Lock()));
  std::string line, text;
  while (std::getline(lines, line)) {
    if (line.rfind("npm amd64 base " + package + " ", 0) == 0) {
      size_t at = line.find(field_from);
      if (at != std::string::npos) line.replace(at, field_from.size(), field_to);
    }
    text += line + "\n";
  }
  return text;
}

// An integrity no tarball has (64 zero bytes): nothing in the cache is
// named by it, so the tarball is fetched and checked against it.
const std::string kNoTarball = "sha512-" + std::string(86, 'A') + "==";

TEST_F(AgentImageTest, AVersionTheRegistryDoesNotHaveIsRefusedByName) {
  TempDir work("agent-image-bad");
  std::string text = Read(Lock());
  std::smatch wrapper;
  ASSERT_TRUE(std::regex_search(text, wrapper,
                                std::regex(R"(npm amd64 base opencode-ai (\S+) (\S+) (\S+))")));
  // 0.0.0-0 was never published.
  std::string url = std::regex_replace(wrapper[2].str(), std::regex(wrapper[1].str() + R"(\.tgz$)"),
                                       "0.0.0-0.tgz");
  ASSERT_NE(url, wrapper[2].str());
  std::string lock = work / "agents.lock";
  Write(lock,
        LockWith("opencode-ai", wrapper[1].str() + " " + wrapper[2].str() + " " + wrapper[3].str(),
                 "0.0.0-0 " + url + " " + kNoTarball));
  std::string out = work / "out";
  ProgramStreams run = RunProgramStreams(
      {Tool(), "build", "--lock", lock, "--cache-dir", PrivateCache(work), "--output", out});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.err.find("cannot download opencode-ai@0.0.0-0"), std::string::npos) << run.err;
  EXPECT_FALSE(fs::exists(work / "cache/work")) << "the build went past the npm stage";
  EXPECT_TRUE(Entries(out).empty()) << "something was written to " << out;
}

TEST_F(AgentImageTest, ATarballThatDoesNotMatchItsIntegrityIsRefused) {
  TempDir work("agent-image-integrity");
  std::string text = Read(Lock());
  std::smatch wrapper;
  ASSERT_TRUE(
      std::regex_search(text, wrapper, std::regex(R"(npm amd64 base opencode-ai \S+ \S+ (\S+))")));
  std::string lock = work / "agents.lock";
  Write(lock, LockWith("opencode-ai", wrapper[1].str(), kNoTarball));
  std::string out = work / "out";
  ProgramStreams run = RunProgramStreams(
      {Tool(), "build", "--lock", lock, "--cache-dir", PrivateCache(work), "--output", out});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.err.find("opencode-ai@"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("has integrity " + wrapper[1].str() + ", the lock says " + kNoTarball),
            std::string::npos)
      << run.err;
  EXPECT_FALSE(fs::exists(work / "cache/work")) << "the build went past the npm stage";
  EXPECT_TRUE(Entries(out).empty()) << "something was written to " << out;
}

TEST_F(AgentImageTest, AMalformedLockIsRefusedWithItsLine) {
  TempDir work("agent-image-malformed");
  std::string lock = work / "agents.lock";
  Write(lock, Read(Lock()) + "npm amd64 base left-pad 1.3.0\n");
  std::string out = work / "out";
  ProgramStreams run = RunProgramStreams(
      {Tool(), "build", "--lock", lock, "--cache-dir", PrivateCache(work), "--output", out});
  EXPECT_NE(run.exit, 0);
  EXPECT_NE(run.err.find("agents.lock:"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("npm ARCH VARIANT NAME VERSION TARBALL INTEGRITY"), std::string::npos)
      << run.err;
  EXPECT_TRUE(Entries(out).empty());
}

// The verify command checks an image against its digest file.
TEST_F(AgentImageTest, VerifyNamesAnImageThatDoesNotMatchItsDigest) {
  ProgramStreams good = RunProgramStreams({Tool(), "verify", Image()});
  EXPECT_EQ(good.exit, 0) << good.err;
  EXPECT_EQ(good.out.substr(0, 64), RecordedDigest(Image()));
  TempDir work("agent-image-verify");
  std::string copy = work / "agent.squashfs";
  Write(copy, "not the image");
  fs::copy_file(Image() + ".sha256", copy + ".sha256");
  ProgramStreams bad = RunProgramStreams({Tool(), "verify", copy});
  EXPECT_NE(bad.exit, 0);
  EXPECT_NE(bad.err.find(RecordedDigest(Image())), std::string::npos) << bad.err;
}

}  // namespace
