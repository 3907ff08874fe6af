// The audit log's hash chain, as pure functions over plain rows (unit-tested
// without a database): the canonical encoding of a row, its hash, and a verifier that
// walks rows in sequence order and names the first broken one. The SQLite
// store (audit_log.h) feeds rows to these; nothing here touches a file.
//
// Each row's hash is SHA-256 over the previous row's hash and the row's
// canonical encoding (CanonicalEncoding below). Row 1 chains to kGenesisHash.
//
// What the chain can and cannot show (see also docs in audit_log.h):
//   detected: a row modified in place (its hash no longer matches); a row
//     deleted from the middle (a gap in the sequence numbers); rows reordered
//     (sequence numbers swapped: the hash covers the sequence number); a row
//     rewritten together with its own hash (the next row no longer chains to
//     it); rows removed from the start and the rest renumbered (row 1 does not
//     chain to the genesis value) — unless everything after was re-hashed too.
//   detected only with an anchor (a ChainTip seen earlier and kept elsewhere):
//     truncation of the newest rows, and a wholesale rewrite of the chain up to
//     the anchored row by someone who recomputed every hash after the change.
//   not detected: anything done after the last anchor by someone who can
//     write the database and recompute hashes (the chain has no secret key;
//     it proves consistency, not authorship), or deleting the whole log when
//     no anchor is kept.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "platform/result.h"

namespace ralph::audit {

// One stored row. `details` is the canonical JSON text exactly as stored
// (the hash covers these bytes, never a re-serialisation).
struct AuditRecord {
  int64_t seq = 0;
  std::string time;       // RFC 3339 UTC with milliseconds: 2026-11-22T16:40:01.123Z
  std::string actor;      // "ota", "health", "ralphctl", "ralphd"
  std::string type;       // "install-started", "downgrade-override", "rollback"
  std::string subject;    // "slot B", "job 42"
  std::string details;    // a JSON object, redacted, keys sorted, no whitespace
  std::string prev_hash;  // 64 hex digits
  std::string hash;       // 64 hex digits
};

// The previous hash of row 1: 64 zeros.
inline constexpr std::string_view kGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";

// The bytes the row hash covers after the previous hash: a version tag, then
// every field but the hashes, each as "<decimal length>:<bytes>\n", so no two
// different rows encode alike.
std::string CanonicalEncoding(const AuditRecord& row);

// SHA-256(prev_hash || CanonicalEncoding(row)) as 64 lower-case hex digits,
// using row.prev_hash. kInternal only when OpenSSL fails.
Result<std::string> ComputeRowHash(const AuditRecord& row);

// The newest row of a chain: its sequence number and hash (seq 0 and
// kGenesisHash for an empty log). Callers that keep a tip somewhere the log's
// writer cannot reach can later detect truncation and rewrites (see above).
struct ChainTip {
  int64_t seq = 0;
  std::string hash = std::string(kGenesisHash);

  // "17:ab12...ef" (seq, colon, 64 hex digits).
  std::string ToString() const;
  bool operator==(const ChainTip&) const = default;
};
// Parses ChainTip::ToString's form; kInvalidArgument naming what is wrong.
Result<ChainTip> ParseChainTip(std::string_view text);

enum class BreakKind {
  kHashMismatch,    // the row's content does not match its hash: modified or moved
  kRewritten,       // the row's hash changed: the next row chains to another hash
  kMissingRows,     // a gap in the sequence numbers: rows deleted
  kBadStart,        // row 1 is absent or does not chain to the genesis hash
  kTruncated,       // the log ends before the anchored tip
  kAnchorMismatch,  // the anchored row exists with another hash: rewritten
};
std::string_view BreakKindName(BreakKind kind);

struct ChainBreak {
  int64_t seq = 0;  // the first row found broken (or missing)
  BreakKind kind = BreakKind::kHashMismatch;
  std::string message;  // "audit log row 17: hash mismatch (row modified)"
};

struct VerifyReport {
  int64_t rows = 0;  // rows read before the break (all rows when intact)
  ChainTip tip;      // the last row that verified
  std::optional<ChainBreak> broken;
  bool ok() const { return !broken.has_value(); }
};

// Walks rows in ascending sequence order. Feed every row with Add() (it
// returns false once the chain is broken: stop feeding), then call Finish().
class ChainVerifier {
 public:
  // `anchor`: a tip seen earlier; the chain must contain it unchanged.
  explicit ChainVerifier(std::optional<ChainTip> anchor = std::nullopt)
      : anchor_(std::move(anchor)) {}

  // kInternal only when hashing fails; a broken chain is not an error.
  Result<bool> Add(const AuditRecord& row);
  VerifyReport Finish();

 private:
  void Break(int64_t seq, BreakKind kind, std::string message);

  std::optional<ChainTip> anchor_;
  VerifyReport report_;  // report_.tip: the last row that verified
  int64_t expected_seq_ = 1;
  bool anchor_seen_ = false;
};

}  // namespace ralph::audit
