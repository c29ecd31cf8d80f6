"""One request's way through the instances (docs/vllm-pd.md has the connector's side).

Basic read (read side "pe", or no hit): the prompt to the prefill instance P with
`do_remote_decode` (max_tokens 1): P loads the hit from the store, computes the rest, writes
the new Full Blocks and holds the pages; then the request, with P's answer, to the decode
instance D, which pulls the pages and decodes.
DualPath read (read side "de"): first the hit request to D (`dualpath_read`): D loads the hit
into its pages and holds them; then the prompt to P with D's answer: P fetches the hit layer by
layer while its forward runs; then the request to D with P's answer: D pulls only the new pages.

Failures are retried where that is safe and never produce wrong tokens (the instances recompute
what they cannot load): a hit request that fails falls back to the Basic read; a prefill that
fails goes to the next live prefill instance, and with none left the request goes to D alone,
which computes the prompt itself; a decode hop that fails before its first byte goes to the
next live decode instance (which pulls the whole prompt from P). An answer an instance gives
with a client error (HTTP 4xx: a bad request) goes back to the client as it is.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp

from dualkv.router.instances import Instance
from dualkv.router.placement import Placement
from dualkv.router.protocol import hit_prompt, is_pull_answer, prefill_params

log = logging.getLogger("dualkv.router")

# fields of the client's request that make no sense for a one-token prefill hop
_NOT_FOR_PREFILL = ("stream", "stream_options", "min_tokens", "best_of", "n", "echo", "logprobs",
                    "prompt_logprobs", "return_token_ids")


class HopFailed(Exception):
    def __init__(self, instance: Instance, reason: str, status: int = 0):
        super().__init__(f"{instance.name}: {reason}")
        self.instance, self.reason, self.status = instance, reason, status

    @property
    def is_client_error(self) -> bool:
        """The request itself is bad: another instance would refuse it too."""
        return 400 <= self.status < 500


def prefill_body(body: dict, prompt: list[int], kv_params: dict) -> dict:
    hop = {k: v for k, v in body.items() if k not in _NOT_FOR_PREFILL}
    hop.update(prompt=prompt, max_tokens=1, kv_transfer_params=kv_params)
    return hop


class Hops:
    def __init__(self, session: aiohttp.ClientSession, prefills: list[Instance],
                 decodes: list[Instance], hop_timeout_s: float):
        self.session = session
        self.prefills, self.decodes = prefills, decodes
        self.hop_timeout_s = hop_timeout_s

    # -- one HTTP hop -----------------------------------------------------------------------
    async def _send(self, instance: Instance, body: dict, stream: bool,
                    path: str = "/v1/completions"):
        timeout = aiohttp.ClientTimeout(total=None if stream else self.hop_timeout_s,
                                        sock_connect=min(10.0, self.hop_timeout_s),
                                        sock_read=self.hop_timeout_s)
        try:
            try:
                response = await self.session.post(instance.url + path, json=body,
                                                   timeout=timeout)
            except aiohttp.ServerDisconnectedError:  # a pooled connection closed as it was
                response = await self.session.post(  # reused: once more on a fresh one
                    instance.url + path, json=body, timeout=timeout)
        except aiohttp.ClientConnectionError as exc:  # refused, reset: the instance is gone
            instance.mark(False, f"{type(exc).__name__}: {exc}")
            raise HopFailed(instance, f"cannot reach it ({type(exc).__name__}: {exc})") from exc
        except asyncio.TimeoutError as exc:
            raise HopFailed(instance, f"no answer within {self.hop_timeout_s} s") from exc
        if response.status != 200:
            text = (await response.text())[:500]
            response.release()
            raise HopFailed(instance, f"HTTP {response.status}: {text}", response.status)
        return response

    async def post_json(self, instance: Instance, body: dict,
                        path: str = "/v1/completions") -> dict:
        instance.stats["requests"] += 1
        started = time.monotonic()
        try:
            response = await self._send(instance, body, stream=False, path=path)
            try:
                answer = json.loads(await response.text())
                answer.setdefault("_hop_s", round(time.monotonic() - started, 6))
                return answer
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                raise HopFailed(instance, f"answer broken off ({type(exc).__name__})") from exc
            finally:
                response.release()
        except HopFailed:
            instance.stats["failures"] += 1
            raise

    def _candidates(self, first: Instance, pool: list[Instance]) -> list[Instance]:
        """The placed instance, then the other live ones, least loaded first."""
        others = sorted((i for i in pool if i is not first and i.alive),
                        key=lambda i: i.report()[1])
        return [first, *others]

    @staticmethod
    def _count_reads(instance: Instance, answer: dict, trace: dict) -> None:
        params = answer.get("kv_transfer_params") or {}
        tokens = int(params.get("dualkv_store_read_tokens", 0) or 0)
        num_bytes = int(params.get("dualkv_store_read_bytes", 0) or 0)
        instance.stats["store_read_tokens"] += tokens
        instance.stats["store_read_bytes"] += num_bytes
        if num_bytes:
            reads = trace["store_read_bytes"]
            reads[instance.name] = reads.get(instance.name, 0) + num_bytes

    # -- the hops -----------------------------------------------------------------------------
    async def prefill(self, placement: Placement, body: dict, prompt: list[int], trace: dict,
                      on_read_done) -> tuple[dict | None, Instance | None]:
        """Hops 1 (DualPath read) and 2. Returns (P's answer for the decode instance, P), or
        (None, None) when no prefill instance prefilled it (D then computes it alone)."""
        kv_for_p: dict = {"do_remote_decode": True}
        hit = placement.request.hit_tokens
        if placement.read_side == "de" and hit > 0:
            try:
                answer = await self.post_json(
                    placement.de, prefill_body(body, hit_prompt(prompt, hit), {"dualpath_read": True}))
                self._count_reads(placement.de, answer, trace)
                trace["hop_s"].append(answer.pop("_hop_s"))
                held = answer.get("kv_transfer_params")
                if is_pull_answer(held):
                    kv_for_p = prefill_params(held)
                    trace["hops"].append(f"hit:{placement.de.name}")
                else:
                    trace["fallback"] = f"{placement.de.name} held no hit; P reads the store"
            except HopFailed as exc:
                if exc.is_client_error:
                    raise
                trace["fallback"] = f"hit request failed ({exc}); P reads the store"
                log.warning("dualkv router: %s", trace["fallback"])
            on_read_done()
        for pe in self._candidates(placement.pe, self.prefills):
            try:
                answer = await self.post_json(pe, prefill_body(body, prompt, kv_for_p))
            except HopFailed as exc:
                if exc.is_client_error:
                    raise
                trace["retries"] += 1
                log.warning("dualkv router: prefill of %s failed on %s; trying the next",
                            trace["rid"], exc)
                continue
            finally:
                on_read_done()
            self._count_reads(pe, answer, trace)
            trace["hops"].append(f"prefill:{pe.name}")
            trace["hop_s"].append(answer.pop("_hop_s"))
            params = answer.get("kv_transfer_params")
            return (params if is_pull_answer(params) else None), pe
        return None, None

    async def decode(self, placement: Placement, body: dict, params: dict | None, trace: dict,
                     path: str = "/v1/completions"):
        """Hop 3: the client's request (with P's answer) to a decode instance, on `path` (the
        client's endpoint). Returns the answer (a dict), or for `stream` the open HTTP response
        whose body the caller streams through and then releases."""
        hop = dict(body)
        if params is not None:
            hop["kv_transfer_params"] = params
        else:
            hop.pop("kv_transfer_params", None)
        stream = bool(body.get("stream"))
        last: HopFailed | None = None
        for de in self._candidates(placement.de, self.decodes):
            try:
                if stream:
                    de.stats["requests"] += 1
                    try:
                        response = await self._send(de, hop, stream=True, path=path)
                    except HopFailed:
                        de.stats["failures"] += 1
                        raise
                    trace["hops"].append(f"decode:{de.name}")
                    return response
                answer = await self.post_json(de, hop, path)
                trace["hops"].append(f"decode:{de.name}")
                trace["hop_s"].append(answer.pop("_hop_s"))
                return answer
            except HopFailed as exc:
                if exc.is_client_error:
                    raise
                last = exc
                trace["retries"] += 1
                log.warning("dualkv router: decode of %s failed on %s; trying the next",
                            trace["rid"], exc)
        raise last if last is not None else HopFailed(placement.de, "no live decode instance")
