"""The simulator's compute constants for the demo, measured by a calibration run of its own.

The prediction printed beside the demo's measured DualPath/Basic ratio must not be fitted on
the runs it predicts. The simulator needs two facts about this machine: the PE's prefill
FLOP/s and a DE's decode step time (TPOT). Both come from an Oracle run (no I/O charged) of
the same cluster on *other* conversations (the demo's seed + CALIBRATION_SEED), together with
the turn shapes (prompt, hit, generated tokens) that run had. The result is cached as JSON
under ~/.cache/dualkv/calibration, keyed by everything that changes it (model, workload
shape, cluster size, engine threads, CPU count), and reused until one of them changes or
`--recalibrate` asks for a fresh one. The demo says which file its prediction came from.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time

import numpy as np

CALIBRATION_SEED = 1_000_003  # added to --seed: conversations the compared runs never see
FORMAT = 1


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("DUALKV_CALIBRATION_DIR") or os.path.join(base, "dualkv", "calibration")


def calibration_key(args, cfg) -> dict:
    """Everything the two constants and the turn shapes depend on."""
    from dualkv.cluster.local import engine_threads

    return {"format": FORMAT, "model": {k: getattr(cfg, k) for k in (
                "vocab_size", "hidden", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "ffn")},
            "agents": args.agents, "rounds": args.rounds, "context": args.context,
            "append": args.append, "gen": args.gen, "num_de": args.num_de,
            "block_tokens": args.block_tokens, "seed": args.seed + CALIBRATION_SEED,
            "engine_threads": engine_threads(1 + args.num_de), "cpus": os.cpu_count()}


def cache_path(key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"demo-{digest}.json")


def load_or_measure(args, cfg, progress=None, force: bool = False) -> dict:
    """The calibration for this configuration: from the cache, else measured now and cached."""
    key = calibration_key(args, cfg)
    path = cache_path(key)
    if not force:
        cached = _read(path, key)
        if cached is not None:
            return dict(cached, path=path, reused=True)
    other_conversations = copy.copy(args)
    other_conversations.seed = args.seed + CALIBRATION_SEED
    doc = dict(measure(other_conversations, cfg, progress), key=key,
               measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _write(path, doc)
    return dict(doc, path=path, reused=False)


def measure(args, cfg, progress=None) -> dict:
    """One Oracle run of `args` (whose seed load_or_measure moved to other conversations):
    prefill FLOP/s = its prefill FLOPs / its prefill seconds, TPOT = its decode seconds per
    round (slowest DE: rounds are synchronous batches) / (gen - 1), and its turn shapes."""
    from dualkv.demo.cluster_demo import run_policy
    from dualkv.demo.cluster_predict import prefill_flops, timed_workload

    _, timed = run_policy(args, "oracle", cfg, progress)
    work = timed_workload(args, timed)
    turns = [t for _, t in timed]  # round-major
    rounds = [turns[r * args.agents:(r + 1) * args.agents] for r in range(args.rounds)]
    prefill_s = sum(batch[0].ttft_s for batch in rounds)
    decode_s = sum(max(t.decode_s for t in batch) for batch in rounds) / args.rounds
    return {"pe_flops_per_s": prefill_flops(cfg, work) / prefill_s,
            "tpot_s": decode_s / (args.gen - 1),
            "workload": {"prompt": work.prompt.tolist(), "hit": work.hit.tolist(),
                         "gen": work.gen.tolist(), "start": work.start.tolist()}}


def workload_of(calibration: dict):
    from dualkv.sim.workload import Workload

    w = calibration["workload"]
    start = np.asarray(w["start"], np.int64)
    return Workload("demo", np.asarray(w["prompt"], np.int64), np.asarray(w["hit"], np.int64),
                    np.asarray(w["gen"], np.int64), start, np.zeros(len(start) - 1))


def _read(path: str, key: dict) -> dict | None:
    """A cached calibration, or None when absent, unreadable or made for another key."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    ok = (isinstance(doc, dict) and doc.get("key") == key
          and all(isinstance(doc.get(k), (int, float)) and doc[k] > 0
                  for k in ("pe_flops_per_s", "tpot_s")) and isinstance(doc.get("workload"), dict))
    return doc if ok else None


def _write(path: str, doc: dict) -> None:
    """Atomically; a cache that cannot be written only costs a calibration next time."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(temp, path)
    except OSError:
        pass
