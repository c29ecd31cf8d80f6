"""dualkv.sched: the DualPath scheduler (paper.md §8), plain objects an event loop calls.

No simulator or engine imports: the same objects run inside `dualkv.sim` and a real engine
cluster. The caller owns time and state; the scheduler only decides.

Inter-engine (one `Scheduler` per cluster)::

    sched = Scheduler(SchedulerConfig(policy="dualpath", alpha_tokens=..., beta_tokens=...),
                      pe_groups=[GroupSpec(group_id, node_id, engine_ids), ...],
                      de_groups=[...])
    sched.submit(Request(rid, prompt_tokens, hit_tokens, gen_tokens))    # on arrival
    # when a PE group leader fetches (periodically), it reports its engines' load:
    report = GroupReport(group_id, read_q=<node read queue, tokens>,
                         engines=[EngineReport(engine_id, seq, tok), ...])
    result = sched.fetch_for_pe_group(report)
    # DE leaders do the same, with EngineReport(..., free_hbm_tokens=...):
    result = sched.fetch_for_de_group(report)
    # result.assigned: requests now on this group's engines (request.pe / request.de set)
    # result.placed:   requests whose PE, DE and read side ("pe"/"de") are all chosen now;
    #                  start their read on request.pe_node or request.de_node.
    # result.woken_groups: DE groups whose private queue just got work (wake their leaders).
    sched.report_read_q(node_id, read_q)   # a leader's report when it has nothing to fetch

`submit` returns the (PE group, DE group) a round-robin policy chose, or None for the smart
policies (any group may take the request at its next fetch).

`has_pe_work(group_id)` / `has_de_work(group_id)` tell a loop whether a fetch can return
anything; `read_q` is the scheduler's view of each node's read queue (reports overwrite it,
placements add their hit tokens to it).

Intra-engine (one `PrefillBatcher` per PE GPU)::

    batcher = PrefillBatcher(AttentionFlops(...), FlopCurve.linear(flops_per_s), quota_s=0.3)
    chunks, flops = batcher.next_batch(ready_queue)   # deque of Requests whose KV is ready
    # each Chunk(request, cached, bsz, is_last); the request leaves the queue with its last.

Policies (`SchedulerConfig.policy`): basic (round robin, PE-side reads, no layerwise),
layer (+layerwise), dpl (+dual path, alternating side), dualpath (Algorithm 1, two-level DE
choice, shorter read queue), oracle (dualpath with I/O free), round_robin (dualpath's engine
choice, alternating read side: the naive baseline of the balance metric), split (dualpath, but
one request's hit may be read by both sides: the PE node reads a prefix of
`request.pe_read_tokens`, the DE node the rest, sized by both read queues; `read_side` is then
"split" and `request.read_parts()` lists (node, tokens) per reading node). The policy's `is_layerwise` and
`is_io_free` tell the caller how to run engines; the scheduler itself uses `is_smart` and
`side`.
"""
from dualkv.sched.config import POLICIES, Policy, SchedulerConfig, get_policy
from dualkv.sched.cost import AttentionFlops, FlopCurve
from dualkv.sched.inter import Scheduler
from dualkv.sched.intra import Chunk, PrefillBatcher
from dualkv.sched.request import EngineReport, FetchResult, GroupReport, GroupSpec, Request

__all__ = [
    "POLICIES", "Policy", "SchedulerConfig", "get_policy", "AttentionFlops", "FlopCurve",
    "Scheduler", "Chunk", "PrefillBatcher", "EngineReport", "FetchResult", "GroupReport",
    "GroupSpec", "Request",
]
