#include "services/audit/chain.h"

#include <cctype>
#include <charconv>

#include <fmt/format.h>

#include "platform/sha256.h"

namespace ralph::audit {
namespace {

// Bumped only with a new schema version: old rows keep verifying with the
// encoding they were written with.
constexpr std::string_view kEncodingTag = "ralph-audit-row-v1\n";

void AppendField(std::string& out, std::string_view field) {
  char digits[24];
  char* end = std::to_chars(digits, digits + sizeof digits, field.size()).ptr;
  out.append(digits, end);
  out += ':';
  out += field;
  out += '\n';
}

// `prefix`, then the canonical encoding of `row`, into `out`, grown once.
void Encode(std::string& out, std::string_view prefix, const AuditRecord& row) {
  char seq[24];
  std::string_view seq_text(seq, std::to_chars(seq, seq + sizeof seq, row.seq).ptr - seq);
  const std::string_view fields[] = {seq_text, row.time,    row.actor,
                                     row.type, row.subject, row.details};
  size_t size = prefix.size() + kEncodingTag.size();
  for (std::string_view field : fields) size += field.size() + 22;  // length, ':', '\n'
  out.reserve(size);
  out += prefix;
  out += kEncodingTag;
  for (std::string_view field : fields) AppendField(out, field);
}

}  // namespace

std::string CanonicalEncoding(const AuditRecord& row) {
  std::string out;
  Encode(out, {}, row);
  return out;
}

Result<std::string> ComputeRowHash(const AuditRecord& row) {
  // One buffer, one digest call: a row is a few hundred bytes.
  std::string bytes;
  Encode(bytes, row.prev_hash, row);
  Sha256Digest digest =
      TRY_CTX(Sha256::Of({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}),
              "hashing an audit row");
  return DigestToHex(digest);
}

std::string ChainTip::ToString() const {
  return fmt::format("{}:{}", seq, hash);
}

Result<ChainTip> ParseChainTip(std::string_view text) {
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("chain tip \"{}\" is not SEQ:HASH", text));
  }
  std::string_view seq_text = text.substr(0, colon);
  ChainTip tip;
  auto [end, ec] = std::from_chars(seq_text.data(), seq_text.data() + seq_text.size(), tip.seq);
  if (ec != std::errc() || end != seq_text.data() + seq_text.size() || tip.seq < 0) {
    return Error::Make(ErrorCode::kInvalidArgument,
                       fmt::format("chain tip \"{}\": \"{}\" is not a row number", text, seq_text));
  }
  auto digest = ParseSha256Hex(text.substr(colon + 1));
  if (!digest) {
    return std::move(digest).error().WithContext(fmt::format("chain tip \"{}\"", text));
  }
  tip.hash = DigestToHex(*digest);
  return tip;
}

std::string_view BreakKindName(BreakKind kind) {
  switch (kind) {
    case BreakKind::kHashMismatch: return "hash-mismatch";
    case BreakKind::kRewritten: return "rewritten";
    case BreakKind::kMissingRows: return "missing-rows";
    case BreakKind::kBadStart: return "bad-start";
    case BreakKind::kTruncated: return "truncated";
    case BreakKind::kAnchorMismatch: return "anchor-mismatch";
  }
  return "unknown";
}

void ChainVerifier::Break(int64_t seq, BreakKind kind, std::string message) {
  report_.broken = ChainBreak{seq, kind, fmt::format("audit log row {}: {}", seq, message)};
}

Result<bool> ChainVerifier::Add(const AuditRecord& row) {
  if (report_.broken) return false;
  // Sequence numbers are the primary key and read in ascending order, so a
  // row can only be ahead of the expected one: rows were deleted.
  if (row.seq != expected_seq_) {
    if (row.seq < expected_seq_) {
      Break(row.seq, BreakKind::kHashMismatch,
            fmt::format("sequence number out of order (expected {})", expected_seq_));
    } else if (expected_seq_ == row.seq - 1) {
      Break(expected_seq_, BreakKind::kMissingRows,
            fmt::format("missing (deleted; the log continues at row {})", row.seq));
    } else {
      Break(expected_seq_, BreakKind::kMissingRows,
            fmt::format("missing (rows {}..{} deleted; the log continues at row {})", expected_seq_,
                        row.seq - 1, row.seq));
    }
    return false;
  }
  // The row's own hash covers its content, its sequence number and the
  // previous hash it claims: any change to the row shows here.
  std::string computed = TRY(ComputeRowHash(row));
  if (computed != row.hash) {
    Break(row.seq, BreakKind::kHashMismatch, "hash mismatch (row modified)");
    return false;
  }
  // The row is self-consistent; it must also chain to the row before it.
  if (row.prev_hash != report_.tip.hash) {
    if (row.seq == 1) {
      Break(1, BreakKind::kBadStart,
            "does not chain to the start of the log (earlier rows removed and the rest "
            "renumbered?)");
    } else {
      // Row N-1 verified on its own, and row N verifies on its own, but N
      // names another hash for N-1: N-1 was rewritten with a fresh hash.
      Break(row.seq - 1, BreakKind::kRewritten,
            fmt::format("rewritten (its hash changed; row {} chains to a different row {})",
                        row.seq, row.seq - 1));
    }
    return false;
  }
  if (anchor_ && row.seq == anchor_->seq) {
    anchor_seen_ = true;
    if (row.hash != anchor_->hash) {
      Break(row.seq, BreakKind::kAnchorMismatch,
            fmt::format("differs from the previously seen tip {} (the log was rewritten)",
                        anchor_->ToString()));
      return false;
    }
  }
  report_.rows++;
  report_.tip = ChainTip{row.seq, row.hash};
  expected_seq_ = row.seq + 1;
  return true;
}

VerifyReport ChainVerifier::Finish() {
  if (!report_.broken && anchor_ && anchor_->seq > 0 && !anchor_seen_) {
    if (report_.rows == 0) {
      Break(1, BreakKind::kTruncated,
            fmt::format("missing: the log is empty, but row {} was seen before (the log was "
                        "truncated or replaced)",
                        anchor_->seq));
    } else {
      Break(report_.tip.seq + 1, BreakKind::kTruncated,
            fmt::format("missing: the log ends at row {}, but row {} was seen before (the newest "
                        "rows were truncated)",
                        report_.tip.seq, anchor_->seq));
    }
  }
  return report_;
}

}  // namespace ralph::audit
