// Pieces shared by the two halves of the UCX agent (lifecycle and data path).
#pragma once

#include <ucp/api/ucp.h>

#include <string>

#include "dualkv/transfer.h"

namespace dualkv {

constexpr unsigned kNoticeAmId = 7;
constexpr uint32_t kNoticeMagic = 0x444b564e;  // "DKVN"
constexpr uint32_t kLayerNotice = 1;
constexpr uint32_t kRevokeRegion = 2;

inline Status ucx_error(const char* what, ucs_status_t s) {
  std::string msg = std::string(what) + ": " + ucs_status_string(s);
  switch (s) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CANCELED:
    case UCS_ERR_REJECTED:
      return make_status(Code::kPeerDisconnected, msg);
    case UCS_ERR_TIMED_OUT:
      return make_status(Code::kTimedOut, msg);
    case UCS_ERR_NO_MEMORY:
      return make_status(Code::kOutOfMemory, msg);
    case UCS_ERR_INVALID_PARAM:
      return make_status(Code::kInvalidArgument, msg);
    default:
      return make_status(Code::kInternal, msg);
  }
}

// One submitted batch. Shared between the caller's handle, the peer's in-order queue and raw
// UCX callback pointers; it is dropped only after every UCX callback for it has run.
struct Agent::Batch {
  Agent* agent = nullptr;
  RmaBatch rma;
  Region* local = nullptr;  // pinned by its inflight count until finish
  uint64_t local_base = 0;
  ucp_mem_h memh = nullptr;
  uint64_t remote_base = 0;
  ucp_rkey_h rkey = nullptr;
  std::shared_ptr<Completion> completion;
  DoneCallback done;
  int64_t deadline_ns = 0;
  Status status;
  NoticeHeader header{};
  int ucx_outstanding = 0;  // flush / notice requests whose callback has not run yet
  bool is_flushed = false;
  bool is_notice_sent = false;
  bool is_finished = false;
};

}  // namespace dualkv
