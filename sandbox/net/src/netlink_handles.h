// Owning handles for the C libraries of the network code (freed on every
// error path).
#pragma once

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>

#include <memory>

namespace ralph::sandbox {

struct MnlSocketDeleter {
  void operator()(mnl_socket* socket) const { mnl_socket_close(socket); }
};
struct MnlBatchDeleter {
  void operator()(mnl_nlmsg_batch* batch) const { mnl_nlmsg_batch_stop(batch); }
};
struct NftnlTableDeleter {
  void operator()(nftnl_table* table) const { nftnl_table_free(table); }
};
struct NftnlChainDeleter {
  void operator()(nftnl_chain* chain) const { nftnl_chain_free(chain); }
};
struct NftnlRuleDeleter {
  void operator()(nftnl_rule* rule) const { nftnl_rule_free(rule); }
};
struct NftnlSetDeleter {
  void operator()(nftnl_set* set) const { nftnl_set_free(set); }
};
struct NftnlExprDeleter {
  void operator()(nftnl_expr* expr) const { nftnl_expr_free(expr); }
};

using MnlSocketPtr = std::unique_ptr<mnl_socket, MnlSocketDeleter>;
using MnlBatchPtr = std::unique_ptr<mnl_nlmsg_batch, MnlBatchDeleter>;
using NftnlTablePtr = std::unique_ptr<nftnl_table, NftnlTableDeleter>;
using NftnlChainPtr = std::unique_ptr<nftnl_chain, NftnlChainDeleter>;
using NftnlRulePtr = std::unique_ptr<nftnl_rule, NftnlRuleDeleter>;
using NftnlSetPtr = std::unique_ptr<nftnl_set, NftnlSetDeleter>;
using NftnlExprPtr = std::unique_ptr<nftnl_expr, NftnlExprDeleter>;

}  // namespace ralph::sandbox
