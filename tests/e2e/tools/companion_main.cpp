// ralph-companion: the companion client on the build host, over ralphd's API
// client library (tests/e2e/harness/companion.h). Its command line is the
// subset of `ralphctl --remote` that scripts/companion.sh uses, so the
// script runs either:
//
//   ralph-companion remote pair --identity DIR [--address HOST:PORT] 'PAIRING_STRING'
//   ralph-companion --remote https://HOST:PORT --identity DIR job run [--json]
//                   [--workspace TAR] -- ARGV...
//   ralph-companion --remote https://HOST:PORT --identity DIR job download --output FILE ID
//
// `job run` streams the job's stdout and stderr as they arrive, prints the
// final job record with --json, and exits with the job's exit status.
#include <cstdio>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "harness/companion.h"
#include "platform/file_io.h"
#include "services/ralphd/api/client.h"

namespace {

using namespace ralph;
using namespace ralph::e2e;

constexpr std::string_view kUsage =
    R"(usage: ralph-companion remote pair --identity DIR [--address HOST:PORT] PAIRING_STRING
       ralph-companion --remote https://HOST:PORT --identity DIR job run [--json] [--workspace TAR] -- ARGV...
       ralph-companion --remote https://HOST:PORT --identity DIR job download --output FILE ID
)";

int Usage(std::string_view what) {
  fmt::print(stderr, "ralph-companion: {}\n{}", what, kUsage);
  return 2;
}

int Failed(std::string_view what, const Error& error) {
  fmt::print(stderr, "ralph-companion {}: {}\n", what, error.ToString());
  return 1;
}

struct Args {
  std::string remote;
  std::string identity;
  std::string address;
  std::string workspace;
  std::string output;
  bool json = false;
  std::vector<std::string> words;    // the command and its operands
  std::vector<std::string> command;  // after --
};

// Options may come anywhere before `--`; kInvalidArgument names a bad one.
Result<Args> Parse(std::span<char*> argv) {
  Args args;
  for (size_t i = 1; i < argv.size(); ++i) {
    std::string word = argv[i];
    if (word == "--") {
      args.command.assign(argv.begin() + static_cast<ptrdiff_t>(i) + 1, argv.end());
      break;
    }
    std::string* value = word == "--remote"      ? &args.remote
                         : word == "--identity"  ? &args.identity
                         : word == "--address"   ? &args.address
                         : word == "--workspace" ? &args.workspace
                         : word == "--output"    ? &args.output
                                                 : nullptr;
    if (value != nullptr) {
      if (i + 1 >= argv.size()) {
        return Error::Make(ErrorCode::kInvalidArgument, fmt::format("{} needs a value", word));
      }
      *value = argv[++i];
    } else if (word == "--json") {
      args.json = true;
    } else if (word.starts_with("--")) {
      return Error::Make(ErrorCode::kInvalidArgument, fmt::format("unknown option {}", word));
    } else {
      args.words.push_back(word);
    }
  }
  if (args.identity.empty()) {
    return Error::Make(ErrorCode::kInvalidArgument, "--identity DIR is required");
  }
  return args;
}

// The credentials in --identity, dialling --remote's HOST:PORT.
Result<std::unique_ptr<Companion>> Connect(const Args& args) {
  ralphd::api::ClientCredentials credentials = TRY(ralphd::api::LoadCredentials(args.identity));
  if (!args.remote.empty()) {
    constexpr std::string_view kScheme = "https://";
    if (!args.remote.starts_with(kScheme)) {
      return Error::Make(ErrorCode::kInvalidArgument,
                         fmt::format("--remote {}: expected https://HOST:PORT", args.remote));
    }
    credentials.device_address = args.remote.substr(kScheme.size());
    if (!credentials.device_address.empty() && credentials.device_address.back() == '/') {
      credentials.device_address.pop_back();
    }
  }
  return Companion::Connect(std::move(credentials));
}

int Pair(const Args& args) {
  if (args.words.size() != 3) return Usage("remote pair takes one PAIRING_STRING");
  auto credentials = PairThrough(args.words[2], args.address, "ralphos-main");
  if (!credentials) return Failed("remote pair", credentials.error());
  if (auto saved = ralphd::api::SaveCredentials(args.identity, *credentials); !saved) {
    return Failed("remote pair", saved.error());
  }
  fmt::print("paired with {} as client {} (device key pinned; credentials in {})\n",
             credentials->device_address, credentials->client_id, args.identity);
  return 0;
}

int JobRun(const Args& args) {
  if (args.command.empty()) return Usage("job run: the command goes after --");
  std::string tar;
  if (!args.workspace.empty()) {
    auto read = ReadWholeFile(args.workspace);
    if (!read) return Failed("job run", read.error());
    tar = std::move(*read);
  }
  auto companion = Connect(args);
  if (!companion) return Failed("job run", companion.error());
  auto outcome =
      (*companion)->RunJob(args.command, tar, [](std::string_view stream, std::string_view bytes) {
        std::FILE* to = stream == "stderr" ? stderr : stdout;
        std::fwrite(bytes.data(), 1, bytes.size(), to);
        std::fflush(to);
      });
  if (!outcome) return Failed("job run", outcome.error());
  const nlohmann::json& record = outcome->record;
  if (args.json) fmt::print("{}\n", record.dump(2));
  std::string state = record.value("state", "");
  if (state == "succeeded") return 0;
  if (!args.json) {
    fmt::print(stderr, "ralph-companion job run: job {} {}\n", outcome->id, state);
  }
  if (record.value("termination", "") == "exited") return record.value("exit_code", 1);
  return 1;
}

int JobDownload(const Args& args) {
  if (args.words.size() != 3 || args.output.empty()) {
    return Usage("job download takes --output FILE and one job ID");
  }
  uint64_t id = std::strtoull(args.words[2].c_str(), nullptr, 10);
  if (id == 0) return Usage(fmt::format("job download: '{}' is not a job id", args.words[2]));
  auto companion = Connect(args);
  if (!companion) return Failed("job download", companion.error());
  auto tar = (*companion)->DownloadWorkspace(id);
  if (!tar) return Failed("job download", tar.error());
  if (auto written = WriteWholeFile(args.output, *tar); !written) {
    return Failed("job download", written.error());
  }
  fmt::print("job {}: workspace ({} bytes of tar) in {}\n", id, tar->size(), args.output);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto args = Parse(std::span(argv, static_cast<size_t>(argc)));
  if (!args) return Usage(args.error().message());
  const std::vector<std::string>& words = args->words;
  if (words.size() >= 2 && words[0] == "remote" && words[1] == "pair") return Pair(*args);
  if (words.size() >= 2 && words[0] == "job" && words[1] == "run") return JobRun(*args);
  if (words.size() >= 2 && words[0] == "job" && words[1] == "download") return JobDownload(*args);
  return Usage("expected `remote pair`, `job run` or `job download`");
}
