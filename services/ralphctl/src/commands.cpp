// The command table: one line per top-level command.
#include "services/ralphctl/command.h"

namespace ralph::ralphctl {

namespace {

constexpr Command kCommands[] = {
    {"boot", "show and change the A/B boot state (try, commit, mark bad, recovery, repair)",
     RunBootCommand},
    {"secure-boot", "UEFI Secure Boot: on or off; enroll the owner's keys in setup mode",
     RunSecureBootCommand},
    {"update", "install a signed update bundle into the inactive slot; install progress",
     RunUpdateCommand},
    {"audit", "list, verify and export the hash-chained audit log", RunAuditCommand},
    {"status", "ralphd's jobs, policy version, audit tip; Secure Boot on or off", RunStatusCommand},
    {"job", "run, list, follow, cancel jobs; their files and workspaces (ralphd)", RunJobCommand},
    {"policy", "get, set, validate, version and roll back the job policy (ralphd)",
     RunPolicyCommand},
    {"creds", "log the agents in with their own login flows; list and revoke (ralphd)",
     RunCredsCommand},
    {"memory", "put, get, query the shared agent memory; a key's history, an agent's entries",
     RunMemoryCommand},
    {"pair", "a one-time pairing string and QR code for ralphd's HTTPS API", RunPairCommand},
    {"pairings", "list and revoke the API's paired clients (ralphd)", RunPairingsCommand},
    {"agent-image", "install, show and roll back the agent image agent jobs run on (ralphd)",
     RunAgentImageCommand},
    {"remote", "pair this host with an appliance's HTTPS API (for --remote)", RunRemoteCommand},
    {"recovery", "reboot into RECOVERY once, audited: the operator's break-glass (ralphd)",
     RunRecoveryCommand},
};

}  // namespace

std::span<const Command> Commands() {
  return kCommands;
}

}  // namespace ralph::ralphctl
