"""Runs prompts through one fresh vLLM engine on CPU and prints what happened as JSON.

One process = one engine, so a later turn can only reuse KV through the connector, never
through vLLM's in-process prefix cache. Used by the end-to-end test and `dualkv bench vllm`:
  python -m dualkv.bench.vllm_engine --model DIR --connector dualkv --root DIR \
      --prompts prompts.json --max-tokens 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

CONNECTORS = {
    "dualkv": ("DualKVConnector", "dualkv.integrations.vllm"),
    "example": ("TimedExampleConnector", "dualkv.bench.vllm_example"),
}


def kv_transfer_config(connector: str, root: str, extra: dict,
                       failure_policy: str = "recompute"):
    from vllm.config import KVTransferConfig

    if connector == "none":
        return None
    name, module = CONNECTORS[connector]
    key = "root" if connector == "dualkv" else "shared_storage_path"
    return KVTransferConfig(kv_connector=name, kv_connector_module_path=module, kv_role="kv_both",
                            kv_load_failure_policy=failure_policy,
                            kv_connector_extra_config={key: root, **extra})


def connector_stats() -> dict:
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    if not has_kv_transfer_group():
        return {}
    connector = get_kv_transfer_group()
    side = getattr(connector, "worker_side", None)
    return dict(side.stats) if side is not None else dict(getattr(connector, "stats", {}))


def run(args) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, skip_tokenizer_init=True, enforce_eager=True, dtype=args.dtype,
              max_model_len=args.max_model_len, seed=0, distributed_executor_backend="uni",
              kv_transfer_config=kv_transfer_config(args.connector, args.root,
                                                    json.loads(args.extra), args.failure_policy),
              block_size=args.block_size, max_num_batched_tokens=args.max_model_len)
    prompts = json.load(open(args.prompts))
    if args.warmup:  # first-call costs stay out of the timings; shorter than a block: no I/O
        llm.generate([{"prompt_token_ids": [1] * (args.block_size // 2)}],
                     SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)
    results = []
    for prompt in prompts:  # one at a time: each turn's time to first token on its own
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        first = out.metrics.first_token_latency if getattr(out, "metrics", None) else None
        results.append({"tokens": list(out.outputs[0].token_ids),
                        "finish_reason": out.outputs[0].finish_reason,
                        "num_prompt_tokens": len(prompt),
                        "num_cached_tokens": out.num_cached_tokens,
                        "seconds": time.perf_counter() - start, "ttft_s": first})
    doc = {"connector": args.connector, "turns": results, "stats": connector_stats()}
    del llm
    return doc


def main(argv=None) -> int:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--connector", choices=["none", *CONNECTORS], default="none")
    parser.add_argument("--root", default="")
    parser.add_argument("--extra", default="{}", help="more kv_connector_extra_config (JSON)")
    parser.add_argument("--failure-policy", choices=["recompute", "fail"], default="recompute",
                        help="vLLM's kv_load_failure_policy")
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", help="model and KV dtype")
    parser.add_argument("--warmup", action="store_true", help="one short untimed prompt first")
    parser.add_argument("--out", required=True, help="where the JSON result goes")
    args = parser.parse_args(argv)
    doc = run(args)
    with open(args.out, "w") as f:
        json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
