"""`dualkv bench vllm`: later-turn time to first token in a real vLLM engine (CPU), with no
connector, vLLM's ExampleConnector and DualKVConnector; same prompts, same seeded model.

Per connector: one engine process runs every conversation's first turn (saving), then a fresh
engine process runs, with max_tokens=1, one conversation's next turn (first turn + answer + new
user tokens) and another's first turn again (the only case ExampleConnector, which names a
whole prompt, can hit). Every config runs once per round, --rounds >= 3, in an order that
reverses each round; a row has the medians and, for dualkv's configs, the per-round ratio of
load GB/s to ExampleConnector's. Both load spans end with the data in vLLM's pages
(ExampleConnector's includes its copy in; dualkv's staged load its scatter). Runs in the vLLM venv: `scripts/venv.sh vllm`, then
  PYTHONPATH=src ~/.cache/dualkv/venvs/vllm/bin/python -m dualkv.cli bench vllm [--preset small --context 3000] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from dualkv.bench.report import Report, with_rounds
from dualkv.errors import InvalidArgument
from dualkv.testing.vllm_model import PRESETS, write_llama

CONFIGS = {  # name -> (connector, extra config)
    "none": ("none", {}),
    "example": ("example", {}),
    "dualkv": ("dualkv", {}),  # defaults: layerwise, direct into vLLM's pages
    # whole blocks into pool slots, one copy per layer: fewer, larger reads; a pure load time
    "dualkv-staged": ("dualkv", {"layerwise": False, "load_path": "staged"}),
}


def conversation(index: int, num_tokens: int, vocab: int) -> list[int]:
    return [(index * 7919 + i * 104729) % (vocab - 2) + 1 for i in range(num_tokens)]


def run_engine(args, workdir, name, model, connector, root, extra, prompts, max_tokens):
    block_size = args.block_size
    prompts_path = os.path.join(workdir, f"{name}.prompts.json")
    out = os.path.join(workdir, f"{name}.json")
    with open(prompts_path, "w") as f:
        json.dump(prompts, f)
    cmd = [sys.executable, "-m", "dualkv.bench.vllm_engine", "--model", model, "--connector",
           connector, "--root", root, "--extra", json.dumps(extra), "--prompts", prompts_path,
           "--max-tokens", str(max_tokens), "--block-size", str(block_size), "--out", out,
           "--max-model-len", str(8192), "--warmup", "--dtype", args.dtype]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"engine run {name} failed:\n{done.stdout[-3000:]}")
    with open(out) as f:
        return json.load(f)


def drop_from_page_cache(root: str) -> None:
    """A later turn reads what an earlier one wrote minutes before, on another engine: from the
    disk. ExampleConnector reads through the page cache (dualkv uses O_DIRECT), so its files are
    flushed and dropped from the cache before the timed phase."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def gbps(num_bytes, seconds):
    return num_bytes / seconds / 1e9 if seconds else None


def bench_config(args, workdir, model, name, turn1s, turn2):
    connector, extra = CONFIGS[name]
    root = os.path.join(workdir, f"blocks-{name}")
    os.makedirs(root, exist_ok=True)
    first = run_engine(args, workdir, f"{name}-turn1", model, connector, root, extra, turn1s,
                       args.answer_tokens)
    if not args.warm_cache:
        drop_from_page_cache(root)
    later = run_engine(args, workdir, f"{name}-later", model, connector, root, extra,
                       [turn2(first["turns"][0]["tokens"]), turn1s[1]], 1)
    saved, loaded = first["stats"], later["stats"]
    next_turn, replay = later["turns"]
    return {
        "config": name, "preset": args.preset, "dtype": args.dtype,
        "page_cache": "warm" if args.warm_cache else "dropped", "context_tokens": args.context,
        "new_tokens": args.new_tokens, "block_tokens": args.block_size,
        "next_turn_prompt_tokens": next_turn["num_prompt_tokens"],
        "next_turn_ttft_s": next_turn["seconds"], "next_turn_tokens_loaded": next_turn["num_cached_tokens"],
        "replay_ttft_s": replay["seconds"], "replay_tokens_loaded": replay["num_cached_tokens"],
        "first_turn_s": sum(t["seconds"] for t in first["turns"]) / len(first["turns"]),
        "save_gbps": gbps(saved.get("bytes_saved", 0), saved.get("save_s")),
        "save_s": saved.get("save_s"), "save_copy_s": saved.get("save_copy_s"),
        "load_gbps": gbps(loaded.get("bytes_loaded", 0), loaded.get("load_s")),
        "bytes_loaded": loaded.get("bytes_loaded", 0), "load_errors": loaded.get("load_errors", 0),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dualkv bench vllm", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--context", type=int, default=3000, help="first-turn prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=200, help="user tokens of the next turn")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="float32: this CPU has no bf16 math")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--workdir", default="", help="model, blocks, logs (default: a new temp "
                        "dir; it must be on a real disk for O_DIRECT, not tmpfs)")
    parser.add_argument("--warm-cache", action="store_true", help="leave written blocks in the "
                        "page cache before the timed phase (default: dropped, reads hit the disk)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (>= 3); every config "
                        "runs once per round, in an order that reverses each round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        raise InvalidArgument(f"--rounds {args.rounds}: the comparison needs at least 3 rounds")
    workdir = args.workdir or tempfile.mkdtemp(prefix="dualkv-bench-vllm-")
    model = write_llama(os.path.join(workdir, f"llama-{args.preset}"), args.preset, seed=0)
    vocab = PRESETS[args.preset]["vocab_size"]
    turn1s = [conversation(i, args.context, vocab) for i in range(2)]
    new_turn = conversation(99, args.new_tokens, vocab)

    def turn2(answer):
        return turn1s[0] + answer + new_turn

    report = Report("dualkv bench vllm", args.json)
    names = args.configs.split(",")
    runs = {name: [] for name in names}
    for rnd in range(args.rounds):  # the order reverses every round
        for name in names if rnd % 2 == 0 else names[::-1]:
            runs[name].append(bench_config(args, os.path.join(workdir, f"r{rnd}"), model, name,
                                           turn1s, turn2))
    for name in names:
        report.add(summarize(runs[name], runs.get("example") if name.startswith("dualkv")
                             else None, compared_figure(name)))
    report.finish()
    return 0


def compared_figure(name: str) -> str:
    """What a config is compared on. A layerwise load's span runs from its first read to its
    last layer's wait, with the model's forward in between (that overlap is the point), so its
    bytes over that span are no bandwidth: such a config is compared on the replay's time to
    first token, which holds the whole load either way. The others on load GB/s."""
    connector, extra = CONFIGS[name]
    return "replay_ttft_s" if connector == "dualkv" and extra.get("layerwise", True) \
        else "load_gbps"


def summarize(rows: list[dict], example_rows: list[dict] | None,
              figure: str = "load_gbps") -> dict:
    """One row per config: the medians of its rounds' figures, every round's load GB/s, and
    for dualkv configs the paired per-round ratio to ExampleConnector's `figure` (load GB/s:
    both spans end with the data in vLLM's pages; or the replay's TTFT, lower is better)."""
    row = dict(rows[0])
    for key, value in rows[0].items():
        values = [r[key] for r in rows]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and None not in values:
            row[key] = statistics.median(values)
    row["num_rounds"] = len(rows)
    ours = [r["load_gbps"] for r in rows]
    row["runs_load_gbps"] = ours
    if figure != "load_gbps":
        row["load_span"] = "overlaps the forward (layerwise): load_gbps is not a bandwidth"
    ours = [r[figure] for r in rows]
    refs = example_rows and [r[figure] for r in example_rows]
    if refs and None not in ours and None not in refs:
        row = with_rounds(row, figure, "example", ours, refs)
    return row


if __name__ == "__main__":
    sys.exit(main())
