// A notice ping-pong between two agents driven from C++ (see transfer_pingpong_ucx.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "dualkv/status.h"

namespace dualkv {

class Agent;

struct PingPong {
  uint64_t peer = 0;
  uint64_t local_region = 0;
  uint64_t remote_region = 0;
  int64_t size = 0;  // bytes put each way: local offset size (send) -> remote offset 0
  int64_t iters = 0;
  bool is_initiator = false;
  int64_t ping_id = 1, pong_id = 2;  // request ids of the two directions' notices
};

Status run_pingpong(Agent& agent, const PingPong& pp, int64_t deadline_ns,
                    std::vector<int64_t>* rtt_ns);

}  // namespace dualkv
