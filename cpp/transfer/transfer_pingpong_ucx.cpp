// A notice ping-pong driven from C++, for `dualkv bench transfer`: the same submit / notice /
// wait_notice path the Python API takes, without the interpreter, so the bench can tell the
// transport's share of a per-layer notice from the cost of the Python calls around it.
#include "dualkv/transfer.h"
#include "dualkv/transfer_pingpong.h"

namespace dualkv {

static Status put_with_notice(Agent& agent, const PingPong& pp, int64_t request_id,
                              int64_t layer) {
  RmaBatch batch;
  batch.peer = pp.peer;
  batch.local_region = pp.local_region;
  batch.remote_region = pp.remote_region;
  batch.descs.push_back({pp.size, 0, pp.size});  // send buffer -> peer's receive buffer
  batch.has_notice = true;
  batch.request_id = request_id;
  batch.layer = layer;
  uint64_t handle = 0;
  Status st = agent.submit(std::move(batch), 0, &handle);
  if (st.ok()) agent.handles().erase(handle);  // completion is seen through the answer
  return st;
}

// The initiator puts (ping_id, i) and waits for (pong_id, i); the responder answers each ping.
// Every wait ends at `deadline_ns`; round trips (ns) go to `rtt_ns` on the initiator.
Status run_pingpong(Agent& agent, const PingPong& pp, int64_t deadline_ns,
                    std::vector<int64_t>* rtt_ns) {
  if (pp.size <= 0 || pp.iters <= 0)
    return make_status(Code::kInvalidArgument, "pingpong needs size > 0 and iters > 0");
  for (int64_t i = 0; i < pp.iters; ++i) {
    int64_t start = now_ns();
    if (pp.is_initiator) {
      Status st = put_with_notice(agent, pp, pp.ping_id, i);
      if (st.ok()) st = agent.wait_notice(pp.pong_id, i, pp.peer, deadline_ns);
      if (!st.ok()) return st;
      rtt_ns->push_back(now_ns() - start);
    } else {
      Status st = agent.wait_notice(pp.ping_id, i, pp.peer, deadline_ns);
      if (st.ok()) st = put_with_notice(agent, pp, pp.pong_id, i);
      if (!st.ok()) return st;
    }
  }
  agent.clear_notices(pp.is_initiator ? pp.pong_id : pp.ping_id);
  return Status::Ok();
}

}  // namespace dualkv
