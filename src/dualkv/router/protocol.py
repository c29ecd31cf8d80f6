"""The request shapes of the P/D hops (docs/vllm-pd.md), without importing vLLM: the router
builds them, the connector (`dualkv.integrations.vllm.pd_params`) reads them."""
from __future__ import annotations


def hit_prompt(prompt: list[int], num_hit_tokens: int) -> list[int]:
    """The router's hit request (hop 1): the hit prefix (whole blocks) and the next token, which
    the decode instance computes (vLLM computes at least one token of every prompt)."""
    if not 0 < num_hit_tokens < len(prompt):
        raise ValueError(f"a hit of {num_hit_tokens} tokens leaves nothing to prefill "
                         f"in a prompt of {len(prompt)}")
    return list(prompt[:num_hit_tokens + 1])


def prefill_params(hit_answer: dict) -> dict:
    """The router's kv_transfer_params for the prefill instance (hop 2): the decode instance's
    hit answer, and a request to hold the result for the decode instance."""
    return {**hit_answer, "do_remote_decode": True}


def is_pull_answer(params) -> bool:
    """An instance's answer that names pages another instance can pull."""
    return isinstance(params, dict) and bool(params.get("do_remote_prefill")) and \
        bool(params.get("remote_block_ids"))
