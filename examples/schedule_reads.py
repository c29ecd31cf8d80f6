"""Where DualPath's scheduler sends each request's storage read, driven by a plain loop.

Two prefill (PE) nodes and two decode (DE) nodes, one engine each. Agent turns arrive with
30K tokens of context already in storage. Each node's group leader fetches with a report of
its engines' load and its node's read queue, the way an engine cluster drives
`dualkv.sched.Scheduler`. Under Basic every read goes to the PE's node; under DualPath the
scheduler picks the node with the shorter read queue. The decode nodes' disks then work for
prefill too.

    python examples/schedule_reads.py
"""
from dualkv.sched import EngineReport, GroupReport, GroupSpec, Request, Scheduler, SchedulerConfig

PE_NODES, DE_NODES = (0, 1), (2, 3)  # node id = group id = engine id here
NUM_TURNS, CONTEXT, APPEND, GENERATE = 40, 30_000, 300, 200


def schedule(policy: str) -> dict:
    sched = Scheduler(SchedulerConfig(policy),
                      pe_groups=[GroupSpec(n, n, (n,)) for n in PE_NODES],
                      de_groups=[GroupSpec(n, n, (n,)) for n in DE_NODES])
    read_q = {n: 0 for n in PE_NODES + DE_NODES}  # tokens queued on each node's disk
    load = {n: EngineReport(n, 0, 0) for n in PE_NODES + DE_NODES}
    for rid in range(NUM_TURNS):
        sched.submit(Request(rid, CONTEXT + APPEND, CONTEXT, GENERATE))
    placed = []
    for _ in range(100):  # leaders fetch in turns; a request needs a PE, then a DE
        if len(placed) == NUM_TURNS:
            return read_q
        for node in PE_NODES + DE_NODES:
            report = GroupReport(node, read_q[node], [EngineReport(node, load[node].seq,
                                                                   load[node].tok)])
            if node in PE_NODES and sched.has_pe_work(node):
                result = sched.fetch_for_pe_group(report)
            elif node in DE_NODES and sched.has_de_work(node):
                result = sched.fetch_for_de_group(report)
            else:
                continue
            for r in result.assigned:  # the engine's load grows by what it was given
                load[node].seq += 1
                load[node].tok += r.prompt_tokens
            for r in result.placed:  # start the read on the chosen side's node
                read_q[r.pe_node if r.read_side == "pe" else r.de_node] += r.hit_tokens
                placed.append(r)
    raise RuntimeError(f"{NUM_TURNS - len(placed)} turns still unplaced after 100 rounds")


def main():
    for policy in ("basic", "dualpath"):
        read_q = schedule(policy)
        total = sum(read_q.values())
        on_de = sum(read_q[n] for n in DE_NODES) / total
        nodes = "  ".join(f"{'PE' if n in PE_NODES else 'DE'}{n}={read_q[n] / 1e3:.0f}K"
                          for n in PE_NODES + DE_NODES)
        print(f"{policy:9s} tokens read per node: {nodes}  (decode nodes read {on_de:.0%})")


if __name__ == "__main__":
    main()
