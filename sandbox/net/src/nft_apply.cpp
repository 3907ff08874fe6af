#include "nft_apply.h"

// glibc's netinet/in.h must precede the kernel uapi headers below.
#include <netinet/in.h>  // NOLINT(build/include_order)

#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "netlink_handles.h"

namespace ralph::sandbox {
namespace {

// nft's set key types (nftables src/datatype.h: TYPE_IPADDR = 7, TYPE_IP6ADDR = 8);
// the kernel stores them opaquely, nft(8) uses them to print the set.
constexpr uint32_t kTypeIpv4Addr = 7;
constexpr uint32_t kTypeIpv6Addr = 8;

uint32_t InitialSeq() {
  return static_cast<uint32_t>(time(nullptr)) & 0x7fffffff;
}

// The table message of a plan, owned or not, with or without NLM_F_EXCL.
NftnlTablePtr MakeTable(const std::string& name) {
  NftnlTablePtr table(nftnl_table_alloc());
  nftnl_table_set_str(table.get(), NFTNL_TABLE_NAME, name.c_str());
  nftnl_table_set_u32(table.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
  return table;
}

class RuleBuilder {
 public:
  RuleBuilder(nftnl_rule* rule, uint16_t nflog_group) : rule_(rule), group_(nflog_group) {}

  void Meta(uint32_t key) {
    nftnl_expr* e = New("meta");
    nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
    nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
  }
  void Cmp(uint32_t op, const void* data, uint32_t len) {
    nftnl_expr* e = New("cmp");
    nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
    nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
  }
  void Payload(uint32_t base, uint32_t offset, uint32_t len) {
    nftnl_expr* e = New("payload");
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
  }
  void Bitwise(const uint8_t* mask, uint32_t len) {
    uint8_t zero[16] = {};
    nftnl_expr* e = New("bitwise");
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, len);
    nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, mask, len);
    nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, zero, len);
  }
  void Ifname(uint32_t key, const std::string& name) {
    Meta(key);
    if (!name.empty() && name.back() == '*') {
      Cmp(NFT_CMP_EQ, name.data(), static_cast<uint32_t>(name.size() - 1));
    } else {
      char padded[IFNAMSIZ] = {};
      std::memcpy(padded, name.data(), std::min(name.size(), sizeof(padded) - 1));
      Cmp(NFT_CMP_EQ, padded, sizeof(padded));
    }
  }
  void Address(bool source, const IpPrefix& prefix, bool negate) {
    bool v4 = prefix.family == IpFamily::kV4;
    uint32_t offset = v4 ? (source ? 12 : 16) : (source ? 8 : 24);
    uint32_t len = static_cast<uint32_t>(prefix.address_size());
    Payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len);
    if (!prefix.is_address()) Bitwise(prefix.Mask().data(), len);
    Cmp(negate ? NFT_CMP_NEQ : NFT_CMP_EQ, prefix.bytes.data(), len);
  }
  void Lookup(const std::string& set, uint32_t set_id, IpFamily family) {
    Payload(NFT_PAYLOAD_NETWORK_HEADER, family == IpFamily::kV4 ? 16 : 24,
            family == IpFamily::kV4 ? 4 : 16);
    nftnl_expr* e = New("lookup");
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
    nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, set.c_str());
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SET_ID, set_id);
  }
  void Ports(uint16_t min, uint16_t max) {
    Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    uint16_t from = htons(min);
    uint16_t to = htons(max);
    if (min == max) {
      Cmp(NFT_CMP_EQ, &from, sizeof(from));
      return;
    }
    nftnl_expr* e = New("range");
    nftnl_expr_set_u32(e, NFTNL_EXPR_RANGE_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_RANGE_OP, NFT_RANGE_EQ);
    nftnl_expr_set(e, NFTNL_EXPR_RANGE_FROM_DATA, &from, sizeof(from));
    nftnl_expr_set(e, NFTNL_EXPR_RANGE_TO_DATA, &to, sizeof(to));
  }
  void CtState(uint32_t mask) {
    nftnl_expr* e = New("ct");
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_STATE);
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
    Bitwise(reinterpret_cast<const uint8_t*>(&mask), sizeof(mask));  // host order, as nft does
    uint32_t zero = 0;
    Cmp(NFT_CMP_NEQ, &zero, sizeof(zero));
  }
  void Log(const std::string& prefix) {
    nftnl_expr* e = New("log");
    nftnl_expr_set_u16(e, NFTNL_EXPR_LOG_GROUP, group_);
    nftnl_expr_set_str(e, NFTNL_EXPR_LOG_PREFIX, prefix.c_str());
  }
  void Masquerade() { New("masq"); }
  void Verdict(NftVerdict verdict, const std::string& chain) {
    nftnl_expr* e = New("immediate");
    nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
    switch (verdict) {
      case NftVerdict::kAccept: nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, NF_ACCEPT); break;
      case NftVerdict::kDrop: nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, NF_DROP); break;
      case NftVerdict::kReturn:
        nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, static_cast<uint32_t>(NFT_RETURN));
        break;
      case NftVerdict::kJump:
        nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, static_cast<uint32_t>(NFT_JUMP));
        nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, chain.c_str());
        break;
      case NftVerdict::kNone: break;
    }
  }

 private:
  nftnl_expr* New(const char* name) {
    nftnl_expr* e = nftnl_expr_alloc(name);
    nftnl_rule_add_expr(rule_, e);  // the rule owns it from here
    return e;
  }
  nftnl_rule* rule_;
  uint16_t group_;
};

Result<void> BuildRule(RuleBuilder& b, const NftRule& rule, const NftTablePlan& plan) {
  if (rule.iifname) b.Ifname(NFT_META_IIFNAME, *rule.iifname);
  if (rule.oifname) b.Ifname(NFT_META_OIFNAME, *rule.oifname);
  if (rule.family) {
    uint8_t proto = *rule.family == IpFamily::kV4 ? NFPROTO_IPV4 : NFPROTO_IPV6;
    b.Meta(NFT_META_NFPROTO);
    b.Cmp(NFT_CMP_EQ, &proto, sizeof(proto));
  } else if (rule.saddr || rule.daddr || rule.daddr_set) {
    return Error::Make(ErrorCode::kInternal, "address match without a family");
  }
  if (rule.saddr) b.Address(true, *rule.saddr, rule.saddr_negate);
  if (rule.daddr) b.Address(false, *rule.daddr, false);
  if (rule.daddr_set) {
    uint32_t set_id = 0;
    for (size_t i = 0; i < plan.sets.size(); ++i) {
      if (plan.sets[i].name == *rule.daddr_set) set_id = static_cast<uint32_t>(i + 1);
    }
    if (set_id == 0) {
      return Error::Make(ErrorCode::kInternal, fmt::format("no set {}", *rule.daddr_set));
    }
    b.Lookup(*rule.daddr_set, set_id, *rule.family);
  }
  if (rule.l4proto) {
    b.Meta(NFT_META_L4PROTO);
    b.Cmp(NFT_CMP_EQ, &*rule.l4proto, 1);
    if (rule.icmpv6_type) {
      b.Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
      b.Cmp(NFT_CMP_EQ, &*rule.icmpv6_type, 1);
    } else if (rule.dport_min != 0) {
      b.Ports(rule.dport_min, rule.dport_max);
    }
  }
  if (rule.ct_state != 0) b.CtState(rule.ct_state);
  if (rule.log_prefix) b.Log(*rule.log_prefix);
  if (rule.masquerade) b.Masquerade();
  if (rule.verdict != NftVerdict::kNone) b.Verdict(rule.verdict, rule.jump_chain);
  return {};
}

uint32_t HookNumber(NftHook hook) {
  switch (hook) {
    case NftHook::kForward: return NF_INET_FORWARD;
    case NftHook::kInput: return NF_INET_LOCAL_IN;
    case NftHook::kPostrouting: return NF_INET_POST_ROUTING;
    case NftHook::kNone: break;
  }
  return 0;
}

// The chain message ApplyTablePlan sends for `planned`.
NftnlChainPtr MakeChain(const std::string& table, const NftChain& planned) {
  NftnlChainPtr chain(nftnl_chain_alloc());
  nftnl_chain_set_str(chain.get(), NFTNL_CHAIN_TABLE, table.c_str());
  nftnl_chain_set_str(chain.get(), NFTNL_CHAIN_NAME, planned.name.c_str());
  nftnl_chain_set_u32(chain.get(), NFTNL_CHAIN_FAMILY, NFPROTO_INET);
  if (planned.hook != NftHook::kNone) {
    nftnl_chain_set_u32(chain.get(), NFTNL_CHAIN_HOOKNUM, HookNumber(planned.hook));
    nftnl_chain_set_s32(chain.get(), NFTNL_CHAIN_PRIO, planned.priority);
    nftnl_chain_set_str(chain.get(), NFTNL_CHAIN_TYPE, planned.nat ? "nat" : "filter");
    nftnl_chain_set_u32(chain.get(), NFTNL_CHAIN_POLICY,
                        planned.policy == NftVerdict::kDrop ? NF_DROP : NF_ACCEPT);
  }
  return chain;
}

// The rule message ApplyTablePlan sends for rule `index` of `chain`.
Result<NftnlRulePtr> MakeRule(const NftTablePlan& plan, const NftChain& chain, size_t index) {
  NftnlRulePtr rule(nftnl_rule_alloc());
  nftnl_rule_set_str(rule.get(), NFTNL_RULE_TABLE, plan.name.c_str());
  nftnl_rule_set_str(rule.get(), NFTNL_RULE_CHAIN, chain.name.c_str());
  nftnl_rule_set_u32(rule.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
  RuleBuilder builder(rule.get(), plan.nflog_group);
  TRY_CTX(BuildRule(builder, chain.rules[index], plan),
          fmt::format("chain {} rule {}", chain.name, index));
  return rule;
}

// The expressions of `rule`, in order.
std::vector<const nftnl_expr*> Expressions(nftnl_rule* rule) {
  std::vector<const nftnl_expr*> exprs;
  nftnl_expr_foreach(
      rule,
      [](nftnl_expr* e, void* out) {
        static_cast<std::vector<const nftnl_expr*>*>(out)->push_back(e);
        return 0;
      },
      &exprs);
  return exprs;
}

// Whether the kernel's expression `theirs` is the one we send as `ours`:
// every attribute either side has is compared byte for byte, except those
// the kernel adds with their neutral value (a lookup's flags, a bitwise
// operation's kind) and the set id, which only travels within a
// transaction. Anything else one side lacks is a difference: a rule that
// fails to compare is replaced, never taken.
bool SameExpression(const nftnl_expr* ours, const nftnl_expr* theirs) {
  std::string name = nftnl_expr_get_str(ours, NFTNL_EXPR_NAME);
  if (name != nftnl_expr_get_str(theirs, NFTNL_EXPR_NAME)) return false;
  auto neutral = [&](uint16_t attr, const nftnl_expr* e) {
    if (name == "lookup" && attr == NFTNL_EXPR_LOOKUP_SET_ID) return e == ours;
    if ((name == "lookup" && attr == NFTNL_EXPR_LOOKUP_FLAGS) ||
        (name == "bitwise" && attr == NFTNL_EXPR_BITWISE_OP)) {
      return e == theirs && nftnl_expr_get_u32(e, attr) == 0;
    }
    return false;
  };
  constexpr uint16_t kMaxAttribute = NFTNL_EXPR_BASE + 32;
  for (uint16_t attr = NFTNL_EXPR_BASE; attr < kMaxAttribute; ++attr) {
    bool in_ours = nftnl_expr_is_set(ours, attr);
    bool in_theirs = nftnl_expr_is_set(theirs, attr);
    if (in_ours && in_theirs) {
      uint32_t our_len = 0, their_len = 0;
      const void* our_data = nftnl_expr_get(ours, attr, &our_len);
      const void* their_data = nftnl_expr_get(theirs, attr, &their_len);
      if (our_len != their_len || (our_data == nullptr) != (their_data == nullptr)) return false;
      // An attribute set without data (length 0, no pointer) has nothing
      // more to compare; memcmp must not see the null pointer.
      if (our_len != 0 && our_data != nullptr && std::memcmp(our_data, their_data, our_len) != 0) {
        return false;
      }
    } else if (in_ours != in_theirs && !neutral(attr, in_ours ? ours : theirs)) {
      return false;
    }
  }
  return true;
}

bool SameChain(const nftnl_chain* ours, const nftnl_chain* theirs) {
  for (uint16_t attr : {NFTNL_CHAIN_HOOKNUM, NFTNL_CHAIN_PRIO, NFTNL_CHAIN_POLICY}) {
    bool in_ours = nftnl_chain_is_set(ours, attr);
    if (in_ours != nftnl_chain_is_set(theirs, attr)) return false;
    if (in_ours && nftnl_chain_get_u32(ours, attr) != nftnl_chain_get_u32(theirs, attr))
      return false;
  }
  bool typed = nftnl_chain_is_set(ours, NFTNL_CHAIN_TYPE);
  if (typed != nftnl_chain_is_set(theirs, NFTNL_CHAIN_TYPE)) return false;
  if (typed && std::string_view(nftnl_chain_get_str(ours, NFTNL_CHAIN_TYPE)) !=
                   nftnl_chain_get_str(theirs, NFTNL_CHAIN_TYPE))
    return false;
  // A base chain's NFT_CHAIN_BASE is all the kernel may add (no offload,
  // no binding).
  uint32_t flags = nftnl_chain_is_set(theirs, NFTNL_CHAIN_FLAGS)
                       ? nftnl_chain_get_u32(theirs, NFTNL_CHAIN_FLAGS)
                       : 0;
  return (flags & ~static_cast<uint32_t>(NFT_CHAIN_BASE)) == 0;
}

}  // namespace

class NftSocket::Batch {
 public:
  // The buffer is deliberately not zeroed: only the pages the batch writes
  // get touched. Zeroing 1 MiB (fresh mmap'd pages every time) cost ~30 ms
  // per job on this VM, a hundred times the kernel's commit.
  explicit Batch(uint32_t seq) : buffer_(new char[kBufferSize]), seq_(seq) {
    batch_.reset(mnl_nlmsg_batch_start(buffer_.get(), kBufferSize));
    nftnl_batch_begin(static_cast<char*>(mnl_nlmsg_batch_current(batch_.get())), seq_++);
    mnl_nlmsg_batch_next(batch_.get());
    first_seq_ = seq_;
  }

  // Starts a message; `what` names it in errors.
  nlmsghdr* Begin(uint16_t type, uint16_t flags, std::string what) {
    names_.push_back(std::move(what));
    return nftnl_nlmsg_build_hdr(static_cast<char*>(mnl_nlmsg_batch_current(batch_.get())), type,
                                 NFPROTO_INET, flags | NLM_F_ACK, seq_++);
  }
  // Finishes the message started last. kNoSpace when the batch is full.
  Result<void> End() {
    if (!mnl_nlmsg_batch_next(batch_.get())) {
      return Error::Make(ErrorCode::kNoSpace, "nft batch: buffer full");
    }
    return {};
  }
  // Closes the batch; returns the next unused sequence number.
  uint32_t Finish() {
    nftnl_batch_end(static_cast<char*>(mnl_nlmsg_batch_current(batch_.get())), seq_++);
    mnl_nlmsg_batch_next(batch_.get());
    return seq_;
  }

  mnl_nlmsg_batch* get() { return batch_.get(); }
  size_t messages() const { return names_.size(); }
  // The message a reply answers, if it is one of ours.
  std::optional<size_t> Index(uint32_t seq) const {
    if (seq < first_seq_ || seq - first_seq_ >= names_.size()) return std::nullopt;
    return seq - first_seq_;
  }
  const std::string& Name(size_t index) const { return names_[index]; }

 private:
  static constexpr size_t kBufferSize = 1 << 20;
  std::unique_ptr<char[]> buffer_;
  MnlBatchPtr batch_;
  uint32_t seq_;
  uint32_t first_seq_ = 0;
  std::vector<std::string> names_;
};

Result<std::unique_ptr<NftSocket>> NftSocket::Open() {
  MnlSocketPtr socket(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));
  if (!socket) return Error::FromErrno("opening a netfilter netlink socket", errno);
  if (mnl_socket_bind(socket.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    return Error::FromErrno("binding the netfilter netlink socket", errno);
  }
  // A receive timeout so a kernel that never answers cannot hang the caller.
  timeval timeout{.tv_sec = 5, .tv_usec = 0};
  if (setsockopt(mnl_socket_get_fd(socket.get()), SOL_SOCKET, SO_RCVTIMEO, &timeout,
                 sizeof(timeout)) != 0) {
    return Error::FromErrno("setting the netfilter netlink socket's receive timeout", errno);
  }
  return std::unique_ptr<NftSocket>(new NftSocket(std::move(socket), InitialSeq()));
}

uint32_t NftSocket::portid() const {
  return mnl_socket_get_portid(socket_.get());
}

Result<void> NftSocket::Commit(Batch& batch) {
  seq_ = batch.Finish();
  if (mnl_socket_sendto(socket_.get(), mnl_nlmsg_batch_head(batch.get()),
                        mnl_nlmsg_batch_size(batch.get())) < 0) {
    return Error::FromErrno("nft batch: sending", errno);
  }
  // The kernel processes the whole batch inside sendto() and queues one
  // answer per message (NLM_F_ACK; nfnetlink_rcv_batch goes on after an
  // error so that all errors are reported). Replies that are not for this
  // batch (left over from an earlier one that timed out) are skipped.
  size_t answered = 0;
  std::optional<Error> first;
  std::vector<char> reply(MNL_SOCKET_BUFFER_SIZE);
  int flags = 0;
  while (answered < batch.messages()) {
    ssize_t n = recvfrom(mnl_socket_get_fd(socket_.get()), reply.data(), reply.size(), flags,
                         nullptr, nullptr);
    if (n < 0) {
      // Once an error is in hand, the rest is drained without waiting.
      if (first && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (errno == EINTR) continue;
      return Error::FromErrno("nft batch: waiting for the kernel's answer", errno);
    }
    int len = static_cast<int>(n);
    // reinterpret_cast: netlink messages are laid out in the byte buffer the
    // kernel filled; libmnl's accessors walk them in place.
    for (auto* nlh = reinterpret_cast<nlmsghdr*>(reply.data()); mnl_nlmsg_ok(nlh, len);
         nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_type != NLMSG_ERROR) continue;
      std::optional<size_t> index = batch.Index(nlh->nlmsg_seq);
      if (!index) continue;
      ++answered;
      auto* error = static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
      if (error->error != 0 && !first) {
        // The kernel aborted the whole transaction.
        first = Error::FromErrno(fmt::format("nft batch: {}", batch.Name(*index)), -error->error);
        flags = MSG_DONTWAIT;
      }
    }
  }
  if (first) return std::move(*first);
  return {};
}

Result<bool> NftSocket::ProbeTableOwner(std::string_view probe_table) {
  std::lock_guard lock(mutex_);
  Batch batch(seq_);
  std::string name(probe_table);
  NftnlTablePtr table = MakeTable(name);
  nftnl_table_set_u32(table.get(), NFTNL_TABLE_FLAGS, NFT_TABLE_F_OWNER);
  nftnl_table_nlmsg_build_payload(
      batch.Begin(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, fmt::format("table {}", name)),
      table.get());
  TRY(batch.End());
  NftnlTablePtr gone = MakeTable(name);
  nftnl_table_nlmsg_build_payload(batch.Begin(NFT_MSG_DELTABLE, 0, fmt::format("table {}", name)),
                                  gone.get());
  TRY(batch.End());
  auto result = Commit(batch);
  if (result) return true;
  // Before 5.12 nf_tables_newtable accepted only NFT_TABLE_F_DORMANT
  // (EINVAL for other bits); since then unknown bits are EOPNOTSUPP.
  int code = result.error().sys_errno();
  if (code == EOPNOTSUPP || code == EINVAL) return false;
  return std::move(result).error().WithContext("probing for nft table ownership");
}

Result<void> NftSocket::ApplyTablePlan(const NftTablePlan& plan, TableOwner owner,
                                       ExistingTable existing) {
  std::lock_guard lock(mutex_);
  Batch batch(seq_);
  const std::string& name = plan.name;

  if (existing == ExistingTable::kReplace) {
    // nft's "table x; delete table x; table x { ... }": the first message
    // makes sure there is something to delete (no flags: an existing
    // unowned table is left as it is, one owned by another socket fails the
    // whole transaction with EPERM), the second deletes it, the rest
    // creates the new one.
    NftnlTablePtr ensure = MakeTable(name);
    nftnl_table_nlmsg_build_payload(
        batch.Begin(NFT_MSG_NEWTABLE, NLM_F_CREATE, fmt::format("stale table {}", name)),
        ensure.get());
    TRY(batch.End());
    NftnlTablePtr stale = MakeTable(name);
    nftnl_table_nlmsg_build_payload(
        batch.Begin(NFT_MSG_DELTABLE, 0, fmt::format("deleting stale table {}", name)),
        stale.get());
    TRY(batch.End());
  }
  NftnlTablePtr table = MakeTable(name);
  if (owner == TableOwner::kThisSocket) {
    nftnl_table_set_u32(table.get(), NFTNL_TABLE_FLAGS, NFT_TABLE_F_OWNER);
  }
  nftnl_table_nlmsg_build_payload(
      batch.Begin(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, fmt::format("table {}", name)),
      table.get());
  TRY(batch.End());

  for (size_t i = 0; i < plan.sets.size(); ++i) {
    const NftSet& planned = plan.sets[i];
    NftnlSetPtr set(nftnl_set_alloc());
    nftnl_set_set_str(set.get(), NFTNL_SET_TABLE, name.c_str());
    nftnl_set_set_str(set.get(), NFTNL_SET_NAME, planned.name.c_str());
    nftnl_set_set_u32(set.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
    nftnl_set_set_u32(set.get(), NFTNL_SET_ID, static_cast<uint32_t>(i + 1));
    bool v4 = planned.family == IpFamily::kV4;
    nftnl_set_set_u32(set.get(), NFTNL_SET_KEY_LEN, v4 ? 4 : 16);
    nftnl_set_set_u32(set.get(), NFTNL_SET_KEY_TYPE, v4 ? kTypeIpv4Addr : kTypeIpv6Addr);
    if (planned.timeout) nftnl_set_set_u32(set.get(), NFTNL_SET_FLAGS, NFT_SET_TIMEOUT);
    nftnl_set_nlmsg_build_payload(
        batch.Begin(NFT_MSG_NEWSET, NLM_F_CREATE, fmt::format("set {}", planned.name)), set.get());
    TRY(batch.End());
  }

  // Chains first (rules jump between them), then their rules.
  for (const NftChain& planned : plan.chains) {
    NftnlChainPtr chain = MakeChain(name, planned);
    nftnl_chain_nlmsg_build_payload(
        batch.Begin(NFT_MSG_NEWCHAIN, NLM_F_CREATE, fmt::format("chain {}", planned.name)),
        chain.get());
    TRY(batch.End());
  }
  for (const NftChain& planned : plan.chains) {
    for (size_t i = 0; i < planned.rules.size(); ++i) {
      NftnlRulePtr rule = TRY(MakeRule(plan, planned, i));
      nftnl_rule_nlmsg_build_payload(batch.Begin(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                                                 fmt::format("chain {} rule {}", planned.name, i)),
                                     rule.get());
      TRY(batch.End());
    }
  }
  TRY_CTX(Commit(batch), fmt::format("creating table inet {}", name));
  return {};
}

Result<void> NftSocket::DeleteTables(const std::vector<std::string>& names) {
  std::lock_guard lock(mutex_);
  auto commit = [this](const std::vector<std::string>& batch_names) -> Result<void> {
    Batch batch(seq_);
    for (const std::string& name : batch_names) {
      NftnlTablePtr table = MakeTable(name);
      nftnl_table_nlmsg_build_payload(
          batch.Begin(NFT_MSG_DELTABLE, 0, fmt::format("table {}", name)), table.get());
      TRY(batch.End());
    }
    auto result = Commit(batch);
    if (!result && result.error().sys_errno() == ENOENT && batch_names.size() == 1) return {};
    TRY_CTX(std::move(result),
            fmt::format("deleting table(s) inet {}", fmt::join(batch_names, ", ")));
    return {};
  };
  auto result = commit(names);
  if (result || result.error().sys_errno() != ENOENT) return result;
  // One missing table fails the whole transaction (nothing is deleted):
  // the others one by one.
  for (const std::string& name : names) TRY(commit({name}));
  return {};
}

Result<void> NftSocket::AddSetElement(std::string_view table_name, std::string_view set_name,
                                      const IpPrefix& address, uint64_t timeout_ms) {
  std::lock_guard lock(mutex_);
  Batch batch(seq_);
  std::string table(table_name);
  std::string name(set_name);
  NftnlSetPtr set(nftnl_set_alloc());
  nftnl_set_set_str(set.get(), NFTNL_SET_TABLE, table.c_str());
  nftnl_set_set_str(set.get(), NFTNL_SET_NAME, name.c_str());
  nftnl_set_set_u32(set.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
  nftnl_set_elem* element = nftnl_set_elem_alloc();
  nftnl_set_elem_set(element, NFTNL_SET_ELEM_KEY, address.bytes.data(),
                     static_cast<uint32_t>(address.address_size()));
  nftnl_set_elem_set_u64(element, NFTNL_SET_ELEM_TIMEOUT, timeout_ms);
  nftnl_set_elem_add(set.get(), element);  // the set owns it from here
  nftnl_set_elems_nlmsg_build_payload(
      batch.Begin(NFT_MSG_NEWSETELEM, NLM_F_CREATE,
                  fmt::format("element {} in set {}", address.AddressString(), name)),
      set.get());
  TRY(batch.End());
  TRY_CTX(Commit(batch), fmt::format("table inet {}", table));
  return {};
}

Result<void> NftSocket::Dump(uint16_t type, const std::function<void(nlmsghdr*)>& fill,
                             const std::function<void(const nlmsghdr*)>& each) {
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  uint32_t seq = seq_++;
  nlmsghdr* request = nftnl_nlmsg_build_hdr(buffer.data(), type, NFPROTO_INET, NLM_F_DUMP, seq);
  if (fill) fill(request);
  if (mnl_socket_sendto(socket_.get(), request, request->nlmsg_len) < 0) {
    return Error::FromErrno("nft dump: sending", errno);
  }
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(socket_.get(), buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno("nft dump: receiving", errno);
    }
    int len = static_cast<int>(n);
    // reinterpret_cast: as in Commit.
    for (auto* nlh = reinterpret_cast<nlmsghdr*>(buffer.data()); mnl_nlmsg_ok(nlh, len);
         nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_seq != seq) continue;  // a late answer to something else
      if (nlh->nlmsg_type == NLMSG_DONE) return {};
      if (nlh->nlmsg_type == NLMSG_ERROR) {
        auto* error = static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
        if (error->error == 0) continue;
        return Error::FromErrno("nft dump", -error->error);
      }
      each(nlh);
    }
  }
}

Result<std::vector<NftTableInfo>> NftSocket::ListTables() {
  std::lock_guard lock(mutex_);
  std::vector<NftTableInfo> tables;
  bool unparsed = false;
  TRY_CTX(Dump(NFT_MSG_GETTABLE, {},
               [&](const nlmsghdr* nlh) {
                 NftnlTablePtr table(nftnl_table_alloc());
                 if (nftnl_table_nlmsg_parse(nlh, table.get()) < 0) {
                   unparsed = true;
                   return;
                 }
                 NftTableInfo info;
                 info.name = nftnl_table_get_str(table.get(), NFTNL_TABLE_NAME);
                 uint32_t flags = nftnl_table_is_set(table.get(), NFTNL_TABLE_FLAGS)
                                      ? nftnl_table_get_u32(table.get(), NFTNL_TABLE_FLAGS)
                                      : 0;
                 info.owned = (flags & NFT_TABLE_F_OWNER) != 0;
                 if (info.owned && nftnl_table_is_set(table.get(), NFTNL_TABLE_OWNER)) {
                   info.owner_portid = nftnl_table_get_u32(table.get(), NFTNL_TABLE_OWNER);
                 }
                 tables.push_back(std::move(info));
               }),
          "listing nft tables");
  if (unparsed) return Error::Make(ErrorCode::kIo, "listing nft tables: a table did not parse");
  return tables;
}

Result<bool> NftSocket::TableMatches(const NftTablePlan& plan) {
  std::lock_guard lock(mutex_);
  const std::string& name = plan.name;
  auto context = [&] { return fmt::format("reading table inet {} back", name); };
  bool unparsed = false;
  // The table: there, with no flags (not dormant, whose hooks are off; not
  // owned by some socket).
  bool found = false;
  uint32_t table_flags = 0;
  TRY_CTX(Dump(NFT_MSG_GETTABLE, {},
               [&](const nlmsghdr* nlh) {
                 NftnlTablePtr table(nftnl_table_alloc());
                 if (nftnl_table_nlmsg_parse(nlh, table.get()) < 0) {
                   unparsed = true;
                 } else if (name == nftnl_table_get_str(table.get(), NFTNL_TABLE_NAME)) {
                   found = true;
                   if (nftnl_table_is_set(table.get(), NFTNL_TABLE_FLAGS))
                     table_flags = nftnl_table_get_u32(table.get(), NFTNL_TABLE_FLAGS);
                 }
               }),
          context());
  if (!found || table_flags != 0) return false;

  // Its chains, exactly the planned ones.
  std::map<std::string, NftnlChainPtr> chains;
  TRY_CTX(Dump(
              NFT_MSG_GETCHAIN,
              [&](nlmsghdr* request) {
                NftnlChainPtr filter(nftnl_chain_alloc());
                nftnl_chain_set_str(filter.get(), NFTNL_CHAIN_TABLE, name.c_str());
                nftnl_chain_nlmsg_build_payload(request, filter.get());
              },
              [&](const nlmsghdr* nlh) {
                NftnlChainPtr chain(nftnl_chain_alloc());
                if (nftnl_chain_nlmsg_parse(nlh, chain.get()) < 0) {
                  unparsed = true;
                } else if (name == nftnl_chain_get_str(chain.get(), NFTNL_CHAIN_TABLE)) {
                  chains[nftnl_chain_get_str(chain.get(), NFTNL_CHAIN_NAME)] = std::move(chain);
                }
              }),
          context());
  if (chains.size() != plan.chains.size()) return false;
  for (const NftChain& planned : plan.chains) {
    auto it = chains.find(planned.name);
    if (it == chains.end() || !SameChain(MakeChain(name, planned).get(), it->second.get()))
      return false;
  }

  // Their rules, in order, each the rule this code sends.
  std::map<std::string, std::vector<NftnlRulePtr>> rules;
  TRY_CTX(
      Dump(
          NFT_MSG_GETRULE,
          [&](nlmsghdr* request) {
            NftnlRulePtr filter(nftnl_rule_alloc());
            nftnl_rule_set_str(filter.get(), NFTNL_RULE_TABLE, name.c_str());
            nftnl_rule_nlmsg_build_payload(request, filter.get());
          },
          [&](const nlmsghdr* nlh) {
            NftnlRulePtr rule(nftnl_rule_alloc());
            if (nftnl_rule_nlmsg_parse(nlh, rule.get()) < 0) {
              unparsed = true;
            } else if (name == nftnl_rule_get_str(rule.get(), NFTNL_RULE_TABLE)) {
              rules[nftnl_rule_get_str(rule.get(), NFTNL_RULE_CHAIN)].push_back(std::move(rule));
            }
          }),
      context());
  for (const NftChain& planned : plan.chains) {
    std::vector<NftnlRulePtr>& theirs = rules[planned.name];
    if (theirs.size() != planned.rules.size()) return false;
    for (size_t i = 0; i < theirs.size(); ++i) {
      NftnlRulePtr ours = TRY(MakeRule(plan, planned, i));
      std::vector<const nftnl_expr*> our_exprs = Expressions(ours.get());
      std::vector<const nftnl_expr*> their_exprs = Expressions(theirs[i].get());
      if (our_exprs.size() != their_exprs.size()) return false;
      for (size_t e = 0; e < our_exprs.size(); ++e) {
        if (!SameExpression(our_exprs[e], their_exprs[e])) return false;
      }
    }
  }
  if (rules.size() != plan.chains.size()) return false;

  // Its sets, by name (what is in them is the caller's question).
  std::set<std::string> sets;
  TRY_CTX(Dump(
              NFT_MSG_GETSET,
              [&](nlmsghdr* request) {
                NftnlSetPtr filter(nftnl_set_alloc());
                nftnl_set_set_str(filter.get(), NFTNL_SET_TABLE, name.c_str());
                nftnl_set_nlmsg_build_payload(request, filter.get());
              },
              [&](const nlmsghdr* nlh) {
                NftnlSetPtr set(nftnl_set_alloc());
                if (nftnl_set_nlmsg_parse(nlh, set.get()) < 0) {
                  unparsed = true;
                } else if (name == nftnl_set_get_str(set.get(), NFTNL_SET_TABLE)) {
                  sets.insert(nftnl_set_get_str(set.get(), NFTNL_SET_NAME));
                }
              }),
          context());
  std::set<std::string> planned_sets;
  for (const NftSet& set : plan.sets) planned_sets.insert(set.name);
  if (sets != planned_sets) return false;
  if (unparsed) return Error::Make(ErrorCode::kIo, context() + ": an object did not parse");
  return true;
}

}  // namespace ralph::sandbox
