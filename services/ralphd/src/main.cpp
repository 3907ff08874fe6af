// ralphd: the control plane daemon. Serves the local socket from one event
// loop (local_socket.h) and, with --api-listen, the HTTPS API
// (services/ralphd/api) whose requests run on that loop; state on VAR.
//
//   ralphd --state-dir /var/lib/ralph/ralphd [--socket /run/ralphd.sock]
//          [--job-root DIR | --job-image FILE] [--max-running N]
//          [--api-listen 0.0.0.0:8443 [--api-address HOST:PORT]]
//          [--agent-images DIR [--keyring PATH] [--factory-agent-bundle FILE]]
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <fmt/format.h>

#include "boot/slot_manager.h"
#include "drivers/disk.h"
#include "platform/cli.h"
#include "platform/efivar_store.h"
#include "platform/file_io.h"
#include "platform/log.h"
#include "platform/secure_boot.h"
#include "platform/unique_fd.h"
#include "services/audit/audit_log.h"
#include "services/ralphd/api/advertised_address.h"
#include "services/ralphd/api/dispatcher_handler.h"
#include "services/ralphd/api/identity.h"
#include "services/ralphd/api/pairing.h"
#include "services/ralphd/api/server.h"
#include "services/ralphd/daemon.h"
#include "services/ralphd/local_socket.h"

namespace {

namespace api = ralph::ralphd::api;

// The HTTPS API's threads (see StartApi).
constexpr int kApiThreads = 2;

constexpr std::string_view kUsage =
    R"(usage: ralphd --state-dir DIR [options]

  --state-dir DIR     ralphd's state (on VAR): ralphd.db, audit.db, jobs/, sandbox/
  --socket PATH       the local control socket (default /run/ralphd.sock)
  --audit-db PATH     the audit log (default DIR/audit.db)
  --job-root DIR      the read-only base of every plain job's rootfs (default /)
  --job-image FILE    ... or a squashfs/erofs image of it
  --agent-images DIR  the agent-image store (on VAR): jobs with an agent run
                      on its current image, installed from signed bundles
                      (`ralphctl agent-image`); without it they run on the
                      job base too
  --keyring PATH      the certificates agent-image bundles must be signed for
                      (default /etc/ralph/keyring)
  --factory-agent-bundle FILE
                      installed at start while the store has no image
                      (removed once installed)
  --max-running N     jobs run at once; the rest wait queued (default 2)
  --api-listen HOST:PORT
                      serve the HTTPS API there (off when absent): 0.0.0.0:8443
                      on the appliance; port 0 picks a free one. The bound
                      port is logged and written to DIR/api/port
  --api-address HOST:PORT
                      the address pairing strings tell clients to reach
                      (default: the listen address with the bound port;
                      for 0.0.0.0 or ::, an interface's address chosen at
                      each offer: up, not loopback, not link-local, IPv4 first)
  --agent-program PROFILE=PATH
                      run agent profile PROFILE's tool as PATH (inside the
                      job's sandbox) instead of its own name; repeatable
  --creds-dir DIR     the agents' encrypted credentials (default DIR/credentials)
  --creds-key FILE    their device key, outside that directory (default
                      DIR/credentials.key; made on first use)
  --creds-live-dir DIR
                      held accounts' live copies and login homes, on a tmpfs
                      (default /run/ralphd/credentials)
  --git PATH          the git loop mode commits each iteration with (default
                      /usr/bin/git); probed at start: without it loop jobs
                      are refused
  --recovery-reboot   serve POST /v1/recovery/reboot (`ralphctl recovery
                      reboot`): arm RECOVERY for the next boot (BootNext,
                      through the machine's EFI variables) and ask PID 1
                      (ralph-init) to reboot. Only on the appliance; without
                      it the command is refused
  --vm-guest DIR      the guest image of VM jobs (isolation vm): DIR/vmlinuz and
                      DIR/initrd.img, as ralph-vm-guest makes them; needs
                      --job-image. Without it VM jobs are refused, saying so
)";

struct HostPort {
  std::string host;  // without brackets
  uint16_t port = 0;
};

// "0.0.0.0:8443", "[::1]:0", "ralph.local:8443".
ralph::Result<HostPort> ParseHostPort(std::string_view flag, std::string_view text) {
  size_t colon = text.rfind(':');
  auto bad = [&] {
    return ralph::Error::Make(ralph::ErrorCode::kInvalidArgument,
                              fmt::format("{}: '{}' is not HOST:PORT", flag, text));
  };
  if (colon == std::string_view::npos || colon == 0) return bad();
  std::string_view host = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad();
    host = host.substr(1, host.size() - 2);
  }
  uint16_t port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size()) {
    return bad();
  }
  return HostPort{.host = std::string(host), .port = port};
}

struct Options {
  ralph::ralphd::DaemonOptions daemon;
  std::string socket = "/run/ralphd.sock";
  std::optional<HostPort> api_listen;
  std::string api_address;
};

// The break-glass on the appliance: BootNext = RECOVERY through the slot
// manager (which makes RECOVERY's Boot#### entry if it is missing); then,
// once the reply is on its way, SIGTERM to ralph-init, which stops the
// services and reboots, as the health gate asks it to.
ralph::Result<void> ArmRecovery() {
  std::unique_ptr<ralph::LibefivarStore> store = TRY(ralph::LibefivarStore::Open());
  ralph::Result<ralph::DiskLayout> disk = ralph::DiscoverApplianceDisk();
  std::optional<ralph::DiskLayout> layout;
  if (disk) layout = std::move(*disk);
  std::string cmdline = ralph::ReadWholeFile("/proc/cmdline").value_or(std::string());
  ralph::boot::SlotManager manager =
      TRY(ralph::boot::SlotManager::Create(*store, std::move(layout), cmdline));
  TRY(manager.ArmRecovery());
  return {};
}

void AskInitToReboot() {
  if (::kill(1, SIGTERM) != 0) {
    ralph::LogError("{}", ralph::Error::FromErrno("asking PID 1 to reboot", errno).ToString());
  }
}

// Parses argv through the tree's one parser: std::nullopt to go on with
// `options` filled in, else the exit status (0 after --help, 2 naming the
// bad flag).
std::optional<int> Parse(int argc, char** argv, Options& options) {
  ralph::cli::Parser parser("ralphd", std::string(kUsage));
  std::optional<std::string> socket, audit_db, job_root, job_image, max_running;
  parser.Option("--state-dir", &options.daemon.state_dir);
  parser.Option("--socket", &socket);
  parser.Option("--audit-db", &audit_db);
  parser.Option("--job-root", &job_root);
  parser.Option("--job-image", &job_image);
  parser.Option("--max-running", &max_running);
  std::optional<std::string> api_listen;
  parser.Option("--api-listen", &api_listen);
  parser.Option("--api-address", &options.api_address);
  std::vector<std::string> agent_programs;
  parser.Repeated("--agent-program", &agent_programs);
  parser.Option("--creds-dir", &options.daemon.creds_dir);
  parser.Option("--creds-key", &options.daemon.creds_key);
  std::optional<std::string> creds_live_dir;
  parser.Option("--creds-live-dir", &creds_live_dir);
  parser.Option("--git", &options.daemon.git);
  std::optional<std::string> keyring;
  parser.Option("--agent-images", &options.daemon.agent_images);
  parser.Option("--keyring", &keyring);
  parser.Option("--factory-agent-bundle", &options.daemon.factory_agent_bundle);
  bool recovery_reboot = false;
  parser.Flag("--recovery-reboot", &recovery_reboot);
  std::optional<std::string> vm_guest;
  parser.Option("--vm-guest", &vm_guest);
  if (std::optional<int> exit = parser.Parse(argc, argv)) return exit;
  if (recovery_reboot) {
    options.daemon.recovery_reboot = {.arm = ArmRecovery, .reboot = AskInitToReboot};
  }
  if (vm_guest) {
    if (vm_guest->empty() || vm_guest->front() != '/') {
      return parser.UsageError(fmt::format("--vm-guest: '{}' is not an absolute path", *vm_guest));
    }
    ralph::sandbox::vm::VmJobOptions vm;
    vm.guest_kernel = *vm_guest + "/vmlinuz";
    vm.guest_initrd = *vm_guest + "/initrd.img";
    options.daemon.vm = vm;
  }
  for (const std::string& entry : agent_programs) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 >= entry.size() || entry[eq + 1] != '/') {
      return parser.UsageError(
          fmt::format("--agent-program: '{}' is not PROFILE=/absolute/path", entry));
    }
    options.daemon.agent_programs[entry.substr(0, eq)] = entry.substr(eq + 1);
  }

  if (options.daemon.state_dir.empty()) return parser.UsageError("--state-dir is required");
  if (keyring) options.daemon.keyring = *keyring;
  if (options.daemon.agent_images.empty() &&
      (keyring || !options.daemon.factory_agent_bundle.empty())) {
    return parser.UsageError("--keyring and --factory-agent-bundle go with --agent-images");
  }
  if (creds_live_dir) options.daemon.creds_live_dir = *creds_live_dir;
  if (socket) options.socket = *socket;
  if (audit_db) options.daemon.audit_db = *audit_db;
  if (job_root && job_image) {
    return parser.UsageError("--job-root and --job-image exclude each other");
  }
  if (job_root) {
    options.daemon.environment = {.base_kind = ralph::sandbox::BaseKind::kDirectory,
                                  .base = *job_root};
  } else if (job_image) {
    options.daemon.environment = {.base_kind = ralph::sandbox::BaseKind::kImage,
                                  .base = *job_image};
  }
  if (max_running) {
    const std::string& text = *max_running;
    size_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || n < 1 || n > 1024) {
      return parser.UsageError(fmt::format("--max-running: '{}' is not a number in 1..1024", text));
    }
    options.daemon.max_running = n;
  }
  if (api_listen) {
    ralph::Result<HostPort> listen = ParseHostPort("--api-listen", *api_listen);
    if (!listen) return parser.UsageError(listen.error().message());
    options.api_listen = *listen;
  }
  if (!options.api_address.empty()) {
    if (!options.api_listen) return parser.UsageError("--api-address needs --api-listen");
    ralph::Result<HostPort> address = ParseHostPort("--api-address", options.api_address);
    if (!address) return parser.UsageError(address.error().message());
  }
  return std::nullopt;
}

// The registry audits from the API's threads: its own connection to the
// daemon's audit log (appends are SQLite transactions, so both writers
// chain onto one log), one append at a time.
class LockedAuditSink final : public ralph::audit::AuditSinkInterface {
 public:
  explicit LockedAuditSink(std::unique_ptr<ralph::audit::AuditLog> log) : log_(std::move(log)) {}
  ralph::Result<ralph::audit::AuditRecord> Append(const ralph::audit::AuditEvent& event) override {
    std::lock_guard lock(mutex_);
    return log_->Append(event);
  }
  ralph::Result<std::vector<ralph::audit::AuditRecord>> AppendBatch(
      std::span<const ralph::audit::AuditEvent> events) override {
    std::lock_guard lock(mutex_);
    return log_->AppendBatch(events);
  }

 private:
  std::mutex mutex_;
  std::unique_ptr<ralph::audit::AuditLog> log_;
};

// The console's pairing commands (`ralphctl pair`, `ralphctl pairings`)
// over the API's registry.
class PairingAdmin final : public ralph::ralphd::PairingAdminInterface {
 public:
  // `address`: what offers advertise (--api-address); empty: the listen
  // address, chosen among the interfaces' at each offer when that is every
  // interface (api::AdvertisedAddress).
  PairingAdmin(api::PairingRegistry& registry, std::string address, std::string listen_host,
               uint16_t port)
      : registry_(registry),
        address_(std::move(address)),
        listen_host_(std::move(listen_host)),
        port_(port) {}

  ralph::Result<nlohmann::json> CreateOffer() override {
    std::string address = address_;
    std::string note;
    if (address.empty()) {
      // No reachable address yet (no lease, no cable) must not cost the
      // console its offer: the string then names the listen address, the
      // pin still holds, and the note says to dial the appliance directly.
      ralph::Result<std::string> advertised = api::AdvertisedAddress(listen_host_, port_);
      if (advertised) {
        address = *advertised;
      } else if (advertised.error().code() == ralph::ErrorCode::kNotFound) {
        address = api::FormatHostPort(listen_host_, port_);
        note = fmt::format("{}; a client pairs with `ralphctl remote pair --address HOST:PORT`",
                           advertised.error().message());
      } else {
        return advertised.error();
      }
    }
    api::PairingString offer = TRY(registry_.CreateOffer(address));
    std::string text = offer.Format();
    std::string qr = TRY(api::RenderQrForTerminal(text));
    nlohmann::json reply{{"pairing", text},
                         {"qr", qr},
                         {"id", offer.id},
                         {"expires", offer.expires_unix},
                         {"address", offer.address}};
    if (!note.empty()) reply["note"] = note;
    return reply;
  }

  ralph::Result<nlohmann::json> List() override {
    nlohmann::json list = nlohmann::json::array();
    for (const api::PairedClient& client : TRY(registry_.List())) {
      list.push_back({{"id", client.id},
                      {"name", client.name},
                      {"spki_sha256", client.spki_sha256_hex},
                      {"paired", client.paired_unix},
                      {"expires", client.expires_unix},
                      {"revoked", client.revoked_unix}});
    }
    return nlohmann::json{{"pairings", list}};
  }

  ralph::Result<void> Revoke(std::string_view id, std::string_view actor) override {
    return registry_.Revoke(id, actor);
  }

 private:
  api::PairingRegistry& registry_;
  std::string address_;
  std::string listen_host_;
  uint16_t port_;
};

// Runs `task` on the loop's thread and waits for it: the core is
// single-threaded.
void RunOnLoop(ralph::ralphd::LocalServer& local, const std::function<void()>& task) {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  local.Post([&] {
    task();
    std::lock_guard lock(mutex);
    done = true;
    cv.notify_one();
  });
  std::unique_lock lock(mutex);
  cv.wait(lock, [&] { return done; });
}

// The core's event log as the API's event stream (GET /v1/events?after=SEQ):
// reads go through the loop (the store is the loop's), and every event the
// daemon appends wakes the streams.
class CoreEventSource final : public api::EventSourceInterface {
 public:
  CoreEventSource(ralph::ralphd::Daemon& daemon, ralph::ralphd::LocalServer& local)
      : daemon_(daemon), local_(local) {}

  api::EventBatch Read(uint64_t after, size_t max) override {
    api::EventBatch batch;
    RunOnLoop(local_, [&] {
      ralph::ralphd::Store& store = daemon_.store();
      auto oldest = store.EventsAfter(0, std::nullopt, 1);
      if (oldest && !oldest->empty()) batch.first_retained = oldest->front().seq;
      auto events = store.EventsAfter(after, std::nullopt, max);
      if (!events) return;
      for (const ralph::ralphd::Event& event : *events) {
        batch.events.push_back({.seq = event.seq,
                                .type = StreamType(event.kind),
                                .data = ralph::ralphd::DumpJson(event.ToJson()),
                                .job = event.job});
      }
    });
    return batch;
  }

  uint64_t Subscribe(std::function<void()> wake) override {
    std::lock_guard lock(mutex_);
    wakes_.emplace(++next_id_, std::move(wake));
    return next_id_;
  }

  // Waits for a Wake in progress on another thread, so that no wake runs
  // after it returns; from inside a wake (its session's last reference let
  // go there) it does not wait.
  void Unsubscribe(uint64_t id) override {
    std::unique_lock lock(mutex_);
    wakes_.erase(id);
    if (waking_ == std::this_thread::get_id()) return;
    woken_.wait(lock, [&] { return waking_ == std::thread::id(); });
  }

  // From the daemon's event listener (the loop's thread). The wakes run
  // without mutex_ held (the interface's promise): a wake may drop the last
  // reference to its session, whose destructor unsubscribes.
  void Wake() {
    std::vector<std::pair<uint64_t, std::function<void()>>> wakes;
    {
      std::lock_guard lock(mutex_);
      waking_ = std::this_thread::get_id();
      wakes.assign(wakes_.begin(), wakes_.end());
    }
    for (const auto& [id, wake] : wakes) {
      {
        std::lock_guard lock(mutex_);
        if (!wakes_.count(id)) continue;  // unsubscribed by an earlier wake
      }
      wake();
    }
    std::lock_guard lock(mutex_);
    waking_ = std::thread::id();
    woken_.notify_all();
  }

 private:
  static std::string StreamType(const std::string& kind) {
    if (kind == "output" || kind == "state") return "job." + kind;
    return kind;
  }

  ralph::ralphd::Daemon& daemon_;
  ralph::ralphd::LocalServer& local_;
  std::mutex mutex_;
  std::condition_variable woken_;
  std::thread::id waking_;  // the thread in Wake, if any
  uint64_t next_id_ = 0;
  std::map<uint64_t, std::function<void()>> wakes_;
};

// One API client attached to a tty job's terminal. The core's callbacks
// run on the loop's thread and are dropped once Detach began; the server
// may detach from inside one (its session ends), so the lock is recursive
// and the core's detach is posted rather than waited for.
class CoreTerminalSession final : public api::TerminalSessionInterface {
 public:
  struct Shared {
    std::recursive_mutex mutex;
    bool detached = false;
    api::TerminalCallbacks callbacks;
  };

  CoreTerminalSession(ralph::ralphd::Daemon& daemon, ralph::ralphd::LocalServer& local,
                      std::shared_ptr<Shared> shared, uint64_t attachment)
      : daemon_(daemon), local_(local), shared_(std::move(shared)), attachment_(attachment) {}
  ~CoreTerminalSession() override { Detach(); }

  ralph::Result<void> Write(std::string_view input) override {
    ralph::Result<void> written;
    RunOnLoop(local_, [&] { written = daemon_.WriteTerminal(attachment_, input); });
    return written;
  }

  ralph::Result<void> Resize(uint16_t columns, uint16_t rows) override {
    ralph::Result<void> resized;
    RunOnLoop(local_, [&] { resized = daemon_.ResizeTerminal(attachment_, columns, rows); });
    return resized;
  }

  void Detach() override {
    {
      std::lock_guard lock(shared_->mutex);
      if (shared_->detached) return;
      shared_->detached = true;
    }
    local_.Post([&daemon = daemon_, attachment = attachment_] {
      daemon.DetachTerminal(attachment, "detached");
    });
  }

 private:
  ralph::ralphd::Daemon& daemon_;
  ralph::ralphd::LocalServer& local_;
  std::shared_ptr<Shared> shared_;
  uint64_t attachment_;
};

// GET /v1/jobs/{id}/terminal: the API's WebSocket onto the core's terminals.
class CoreTerminals final : public api::TerminalProviderInterface {
 public:
  CoreTerminals(ralph::ralphd::Daemon& daemon, ralph::ralphd::LocalServer& local)
      : daemon_(daemon), local_(local) {}

  ralph::Result<std::unique_ptr<api::TerminalSessionInterface>> Attach(
      const api::Caller& caller, std::string_view job_id,
      api::TerminalCallbacks callbacks) override {
    uint64_t job = 0;
    auto [end, ec] = std::from_chars(job_id.data(), job_id.data() + job_id.size(), job);
    if (job_id.empty() || ec != std::errc() || end != job_id.data() + job_id.size() || job == 0) {
      return ralph::Error::Make(ralph::ErrorCode::kNotFound,
                                fmt::format("job '{}': not a job id", job_id));
    }
    auto shared = std::make_shared<CoreTerminalSession::Shared>();
    shared->callbacks = std::move(callbacks);
    ralph::ralphd::TerminalCallbacks core;
    core.output = [shared](std::string_view output) {
      std::lock_guard lock(shared->mutex);
      if (!shared->detached && shared->callbacks.output) shared->callbacks.output(output);
    };
    core.closed = [shared](int exit_status) {
      std::lock_guard lock(shared->mutex);
      if (!shared->detached && shared->callbacks.closed) shared->callbacks.closed(exit_status);
    };
    std::optional<ralph::Result<ralph::ralphd::Daemon::AttachedTerminal>> attached;
    RunOnLoop(local_, [&] {
      attached = daemon_.AttachTerminal(ralph::ralphd::Caller::ClientCertificate(caller.client_id),
                                        job, std::move(core));
      // On the loop, so before any live output the attachment gets.
      if (*attached && !(*attached)->replay.empty()) {
        std::lock_guard lock(shared->mutex);
        if (shared->callbacks.output) shared->callbacks.output((*attached)->replay);
      }
    });
    if (!*attached) return std::move(*attached).error();
    return std::unique_ptr<api::TerminalSessionInterface>(
        std::make_unique<CoreTerminalSession>(daemon_, local_, shared, (*attached)->attachment));
  }

 private:
  ralph::ralphd::Daemon& daemon_;
  ralph::ralphd::LocalServer& local_;
};

// The HTTPS API (services/ralphd/api) in front of the core: requests go
// through the core's decoder on the local socket's loop; terminals attach to
// the core's (CoreTerminals).
struct Api {
  std::unique_ptr<api::DeviceIdentity> identity;
  std::unique_ptr<LockedAuditSink> audit;
  std::unique_ptr<api::PairingRegistry> registry;
  std::unique_ptr<api::DispatcherHandler> handler;
  std::unique_ptr<CoreEventSource> events;
  std::unique_ptr<CoreTerminals> terminals;
  std::unique_ptr<api::ApiServer> server;
  std::unique_ptr<PairingAdmin> pairing;
};

ralph::Result<std::unique_ptr<Api>> StartApi(const Options& options, ralph::ralphd::Daemon& daemon,
                                             ralph::ralphd::LocalServer& local) {
  auto api = std::make_unique<Api>();
  const std::string dir = options.daemon.state_dir + "/api";
  api->identity = TRY(api::DeviceIdentity::LoadOrCreate(dir + "/identity"));
  std::string audit_db = options.daemon.audit_db.empty() ? options.daemon.state_dir + "/audit.db"
                                                         : options.daemon.audit_db;
  api->audit = std::make_unique<LockedAuditSink>(
      TRY(ralph::audit::AuditLog::Open(audit_db, ralph::audit::OpenMode::kExisting)));
  api->registry =
      TRY(api::PairingRegistry::Open(dir + "/pairings.db", *api->identity, *api->audit));
  api->handler = std::make_unique<api::DispatcherHandler>(
      daemon, [&local](std::function<void()> task) { local.Post(std::move(task)); });
  api->events = std::make_unique<CoreEventSource>(daemon, local);
  api->terminals = std::make_unique<CoreTerminals>(daemon, local);
  const HostPort& listen = *options.api_listen;
  // A request waiting for the core's loop holds no server thread
  // (DispatcherHandler::HandleAsync): the threads do TLS and HTTP, and the
  // requests that reach the loop together share one round and one audit
  // commit (Daemon::FlushAudit).
  api->server = TRY(api::ApiServer::Start(
      {.bind_address = listen.host, .port = listen.port, .threads = kApiThreads},
      {.identity = *api->identity,
       .registry = *api->registry,
       .handler = *api->handler,
       .events = api->events.get(),
       .terminals = api->terminals.get()}));
  uint16_t port = api->server->port();
  api->pairing =
      std::make_unique<PairingAdmin>(*api->registry, options.api_address, listen.host, port);
  daemon.SetPairingAdmin(api->pairing.get());
  // Where a supervisor or a test finds a port the kernel picked.
  TRY(ralph::WriteFileAtomically(dir + "/port", fmt::format("{}\n", port), 0644,
                                 ralph::Durability::kNone));
  ralph::LogInfo("api listening on {}:{} (pairing address {})", listen.host, port,
                 options.api_address.empty() ? "chosen at each offer" : options.api_address);
  // Last: nothing below can fail and leave the listener dangling.
  daemon.SetEventListener(
      ralph::ralphd::Daemon::Listener::kApi,
      [events = api->events.get()](const ralph::ralphd::Event&) { events->Wake(); });
  return api;
}

// The firmware's Secure Boot state for the status (it cannot change before
// the next boot, so it is read once). A machine without EFI variables (a
// BIOS boot, a development host) says why it is unknown.
std::string SecureBootText() {
  auto store = ralph::LibefivarStore::Open();
  if (!store) return fmt::format("unknown ({})", store.error().message());
  auto state = ralph::ReadSecureBootState(**store);
  if (!state) return fmt::format("unknown ({})", state.error().message());
  return ralph::DescribeSecureBoot(*state);
}

ralph::Result<void> Serve(Options options) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // Blocked before any thread starts, so every thread inherits the mask and
  // the signals reach only the signalfd.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ralph::UniqueFd stop(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!stop) return ralph::Error::FromErrno("signalfd", errno);
  ::signal(SIGPIPE, SIG_IGN);

  options.daemon.log = [](ralph::LogLevel level, const std::string& message) {
    if (level != ralph::LogLevel::kDebug) ralph::LogLine(level, message);
  };
  options.daemon.secure_boot = SecureBootText();
  std::unique_ptr<ralph::ralphd::Daemon> daemon = TRY(ralph::ralphd::Daemon::Open(options.daemon));
  std::unique_ptr<ralph::ralphd::LocalServer> server =
      TRY(ralph::ralphd::LocalServer::Create({.socket_path = options.socket}, *daemon));
  std::unique_ptr<Api> api;
  if (options.api_listen) api = TRY(StartApi(options, *daemon, *server));
  ralph::LogInfo("serving {} (state {})", options.socket, options.daemon.state_dir);
  ralph::Result<void> ran = server->Run(stop.get());
  // Requests in flight finish on the API's threads (LocalServer::Post runs
  // them there once the loop has stopped) before the core goes away.
  if (api) {
    api->server->Stop();
    daemon->SetPairingAdmin(nullptr);
    daemon->SetEventListener(ralph::ralphd::Daemon::Listener::kApi, {});
  }
  if (!ran) return std::move(ran).error();
  ralph::LogInfo("stopping: running jobs are killed");
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  ralph::LogInit("ralphd", ralph::LogSink::kStderr);
  Options options;
  if (std::optional<int> exit = Parse(argc, argv, options)) return *exit;
  ralph::Result<void> served = Serve(std::move(options));
  if (!served) {
    ralph::LogError("{}", served.error().ToString());
    return 1;
  }
  return 0;
}
