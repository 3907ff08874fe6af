// The hash chain as pure functions: canonical encoding, row hashes, and the
// verifier naming the first broken row for every kind of tampering.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "services/audit/chain.h"

namespace ralph::audit {
namespace {

using ::testing::HasSubstr;

// A correctly chained log of `count` rows.
std::vector<AuditRecord> MakeChain(int count) {
  std::vector<AuditRecord> rows;
  std::string prev(kGenesisHash);
  for (int i = 1; i <= count; ++i) {
    AuditRecord row;
    row.seq = i;
    row.time = "2026-11-22T16:40:0" + std::to_string(i % 10) + ".000Z";
    row.actor = "ota";
    row.type = "install-started";
    row.subject = "slot B";
    row.details = "{\"n\":" + std::to_string(i) + "}";
    row.prev_hash = prev;
    auto hash = ComputeRowHash(row);
    EXPECT_TRUE(hash.has_value());
    row.hash = *hash;
    prev = row.hash;
    rows.push_back(row);
  }
  return rows;
}

VerifyReport Walk(const std::vector<AuditRecord>& rows,
                  std::optional<ChainTip> anchor = std::nullopt) {
  ChainVerifier verifier(anchor);
  for (const AuditRecord& row : rows) {
    auto go_on = verifier.Add(row);
    EXPECT_TRUE(go_on.has_value());
    if (!*go_on) break;
  }
  return verifier.Finish();
}

// Re-hashes row `index` after a change, as a tamperer who knows the scheme
// would.
void Rehash(AuditRecord& row) {
  row.hash = *ComputeRowHash(row);
}

TEST(CanonicalEncoding, LengthPrefixedSoFieldsCannotShift) {
  AuditRecord a;
  a.actor = "ab";
  a.type = "c";
  AuditRecord b;
  b.actor = "a";
  b.type = "bc";
  EXPECT_NE(CanonicalEncoding(a), CanonicalEncoding(b));
  EXPECT_THAT(CanonicalEncoding(a), HasSubstr("2:ab\n1:c\n"));
  // The hashes are not part of the encoding (the previous hash is hashed
  // before it).
  AuditRecord c = a;
  c.hash = "ff";
  EXPECT_EQ(CanonicalEncoding(a), CanonicalEncoding(c));
}

// The encoding is a stored format: rows written by any build must keep
// verifying. The expected digest was computed outside this code (Python's
// hashlib over the bytes chain.h describes).
TEST(ComputeRowHash, MatchesTheDocumentedEncoding) {
  AuditRecord row;
  row.seq = 42;
  row.time = "2026-11-22T16:40:01.123Z";
  row.actor = "ota";
  row.type = "rollback";
  row.subject = "slot B";
  row.details = R"({"reason":"health gate failed"})";
  row.prev_hash = std::string(kGenesisHash);
  EXPECT_EQ(CanonicalEncoding(row),
            "ralph-audit-row-v1\n2:42\n24:2026-11-22T16:40:01.123Z\n3:ota\n8:rollback\n6:slot "
            "B\n31:{\"reason\":\"health gate failed\"}\n");
  auto hash = ComputeRowHash(row);
  ASSERT_TRUE(hash.has_value()) << hash.error().ToString();
  EXPECT_EQ(*hash, "d17b15dcc7a587037be5062374c46f66b4845b74fa98a2d9390099ff3ee1581e");
}

TEST(ComputeRowHash, CoversEveryFieldAndThePreviousHash) {
  AuditRecord base = MakeChain(1)[0];
  const std::string hash = *ComputeRowHash(base);
  EXPECT_EQ(hash.size(), 64u);
  EXPECT_EQ(hash, base.hash);
  auto changed = [&](auto mutate) {
    AuditRecord row = base;
    mutate(row);
    return *ComputeRowHash(row);
  };
  EXPECT_NE(changed([](AuditRecord& r) { r.seq = 2; }), hash);
  EXPECT_NE(changed([](AuditRecord& r) { r.time[0] = '3'; }), hash);
  EXPECT_NE(changed([](AuditRecord& r) { r.actor = "health"; }), hash);
  EXPECT_NE(changed([](AuditRecord& r) { r.type = "x"; }), hash);
  EXPECT_NE(changed([](AuditRecord& r) { r.subject = "slot A"; }), hash);
  EXPECT_NE(changed([](AuditRecord& r) { r.details = "{}"; }), hash);
  EXPECT_NE(changed([](AuditRecord& r) { r.prev_hash[63] = '1'; }), hash);
}

TEST(ChainVerifier, IntactChainVerifiesAndReportsItsTip) {
  auto rows = MakeChain(5);
  VerifyReport report = Walk(rows);
  EXPECT_TRUE(report.ok()) << report.broken->message;
  EXPECT_EQ(report.rows, 5);
  EXPECT_EQ(report.tip, (ChainTip{5, rows[4].hash}));
}

TEST(ChainVerifier, EmptyLogIsIntact) {
  VerifyReport report = Walk({});
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.rows, 0);
  EXPECT_EQ(report.tip, ChainTip{});
}

TEST(ChainVerifier, ModifiedRowIsNamed) {
  auto rows = MakeChain(20);
  rows[16].details = "{\"n\":999}";
  VerifyReport report = Walk(rows);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 17);
  EXPECT_EQ(report.broken->kind, BreakKind::kHashMismatch);
  EXPECT_EQ(report.broken->message, "audit log row 17: hash mismatch (row modified)");
  EXPECT_EQ(report.rows, 16);
  EXPECT_EQ(report.tip.seq, 16);
}

TEST(ChainVerifier, RowRewrittenWithAFreshHashIsNamed) {
  auto rows = MakeChain(6);
  rows[2].subject = "slot A";
  Rehash(rows[2]);
  VerifyReport report = Walk(rows);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 3);
  EXPECT_EQ(report.broken->kind, BreakKind::kRewritten);
  EXPECT_THAT(report.broken->message,
              HasSubstr("audit log row 3: rewritten (its hash changed; row 4 chains to"));
}

TEST(ChainVerifier, DeletedRowsShowAsAGap) {
  auto rows = MakeChain(10);
  rows.erase(rows.begin() + 4);  // row 5
  VerifyReport one = Walk(rows);
  ASSERT_FALSE(one.ok());
  EXPECT_EQ(one.broken->seq, 5);
  EXPECT_EQ(one.broken->kind, BreakKind::kMissingRows);
  EXPECT_EQ(one.broken->message, "audit log row 5: missing (deleted; the log continues at row 6)");

  rows.erase(rows.begin() + 4, rows.begin() + 7);  // rows 6..8
  VerifyReport several = Walk(rows);
  ASSERT_FALSE(several.ok());
  EXPECT_EQ(several.broken->message,
            "audit log row 5: missing (rows 5..8 deleted; the log continues at row 9)");
}

TEST(ChainVerifier, SwappedSequenceNumbersBreakTheFirstMovedRow) {
  auto rows = MakeChain(6);
  std::swap(rows[2].seq, rows[3].seq);
  std::swap(rows[2], rows[3]);  // read back in seq order
  VerifyReport report = Walk(rows);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 3);
  EXPECT_EQ(report.broken->kind, BreakKind::kHashMismatch);
}

TEST(ChainVerifier, RemovedHeadRenumberedIsABadStart) {
  auto rows = MakeChain(4);
  rows.erase(rows.begin());
  // Renumbered, each row re-hashed over its own (old) previous hash.
  for (auto& row : rows) {
    row.seq -= 1;
    Rehash(row);
  }
  VerifyReport report = Walk(rows);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 1);
  EXPECT_EQ(report.broken->kind, BreakKind::kBadStart);
}

TEST(ChainVerifier, TruncatedTipIsDetectedOnlyWithAnAnchor) {
  auto rows = MakeChain(8);
  ChainTip anchor{8, rows[7].hash};
  rows.resize(5);
  // Without an anchor a truncated log is indistinguishable from a short one.
  EXPECT_TRUE(Walk(rows).ok());
  VerifyReport report = Walk(rows, anchor);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 6);
  EXPECT_EQ(report.broken->kind, BreakKind::kTruncated);
  EXPECT_EQ(report.broken->message,
            "audit log row 6: missing: the log ends at row 5, but row 8 was seen before (the "
            "newest rows were truncated)");
  VerifyReport emptied = Walk({}, anchor);
  ASSERT_FALSE(emptied.ok());
  EXPECT_EQ(emptied.broken->kind, BreakKind::kTruncated);
}

TEST(ChainVerifier, WholesaleRewriteIsDetectedOnlyWithAnAnchor) {
  auto rows = MakeChain(6);
  ChainTip anchor{4, rows[3].hash};
  // Row 2 changed and every later row re-chained: consistent on its own.
  rows[1].subject = "forged";
  for (size_t i = 1; i < rows.size(); ++i) {
    rows[i].prev_hash = rows[i - 1].hash;
    Rehash(rows[i]);
  }
  EXPECT_TRUE(Walk(rows).ok());
  VerifyReport report = Walk(rows, anchor);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.broken->seq, 4);
  EXPECT_EQ(report.broken->kind, BreakKind::kAnchorMismatch);
  // The true anchor still verifies on an honest chain that grew since.
  auto grown = MakeChain(9);
  EXPECT_TRUE(Walk(grown, ChainTip{4, grown[3].hash}).ok());
}

TEST(ChainTip, RoundTripsAndRejectsBadText) {
  auto rows = MakeChain(3);
  ChainTip tip{3, rows[2].hash};
  auto parsed = ParseChainTip(tip.ToString());
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(*parsed, tip);

  auto no_colon = ParseChainTip("17");
  ASSERT_FALSE(no_colon.has_value());
  EXPECT_EQ(no_colon.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(no_colon.error().message(), HasSubstr("is not SEQ:HASH"));
  auto bad_seq = ParseChainTip("x1:" + rows[0].hash);
  ASSERT_FALSE(bad_seq.has_value());
  EXPECT_THAT(bad_seq.error().message(), HasSubstr("\"x1\" is not a row number"));
  auto bad_hash = ParseChainTip("3:abc");
  ASSERT_FALSE(bad_hash.has_value());
  EXPECT_EQ(bad_hash.error().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ralph::audit
