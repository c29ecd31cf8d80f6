"""The router's HTTP front: OpenAI's /v1/completions and /v1/chat/completions, served through
the P/D hops.

    router = Router(RouterConfig(prefill_urls=[...], decode_urls=[...], policy="dualpath"))
    await router.start()          # scrapes every instance once, learns the block size
    app = router.app()            # aiohttp application; or `dualkv router ...` (commands/router)

Prompts are token ids (or one text, tokenized by a prefill instance's /tokenize). Chat requests
are tokenized the same way (/tokenize with the messages and the template fields): the router
schedules and prefills those token ids, and the decode hop is the client's chat request itself,
which the decode instance renders into the same tokens (the pulled KV's parameters carry a
digest of them; a prompt that differs is computed there instead). Non-streamed
answers carry a `dualkv` field saying how the request went (instances, read side, hit tokens,
store bytes each instance read for it, retries); `GET /dualkv/status` has the instances' loads,
their totals and the latest requests.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from dualkv.errors import InvalidArgument
from dualkv.router.hops import HopFailed, Hops
from dualkv.router.instances import Instance, VllmLoad
from dualkv.router.placement import Placer
from dualkv.router.prefix import PrefixIndex
from dualkv.sched import Request, SchedulerConfig
from dualkv.sched.config import require_one_read_side

log = logging.getLogger("dualkv.router")
KEEPALIVE_S = 2.0  # below uvicorn's 5 s idle timeout


@dataclass
class RouterConfig:
    prefill_urls: list[str]
    decode_urls: list[str]
    policy: str = "dualpath"
    alpha_tokens: float = SchedulerConfig.alpha_tokens
    beta_tokens: float = SchedulerConfig.beta_tokens
    block_size: int = 0             # 0: learned from the instances' /metrics
    hop_timeout_s: float = 600.0    # one hop's answer (a stream: between two reads)
    place_timeout_s: float = 600.0  # a request waiting for the scheduler to place it
    poll_s: float = 0.5             # /metrics scrape period
    start_timeout_s: float = 60.0   # every instance answers /metrics within this at start
    recent: int = 1000              # requests kept in /dualkv/status
    names: list[str] = field(default_factory=list)  # instance names (default p0.., d0..)


COMPLETIONS_PATH, CHAT_PATH = "/v1/completions", "/v1/chat/completions"
# what renders chat messages into tokens (vLLM's /tokenize takes them as its chat endpoint does)
_CHAT_TOKENIZE_FIELDS = ("messages", "add_generation_prompt", "continue_final_message",
                         "add_special_tokens", "chat_template", "chat_template_kwargs", "tools")
# what of a chat request a prefill hop keeps: besides the tokens, what names the KV's blocks
_CHAT_PREFILL_FIELDS = ("model", "cache_salt", "priority")


def _max_tokens(value) -> int:
    tokens = int(value or 16)
    if tokens < 1:
        raise InvalidArgument("max_tokens must be >= 1")
    return tokens


def _bad_request(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"
                                        if status < 500 else "server_error", "code": status}},
                             status=status)


class Router:
    def __init__(self, config: RouterConfig):
        SchedulerConfig(config.policy, config.alpha_tokens, config.beta_tokens)  # validates
        require_one_read_side(config.policy, "the router")  # a connector loads from one side
        if not config.prefill_urls or not config.decode_urls:
            raise InvalidArgument("the router needs at least one prefill and one decode URL")
        self.config = config
        n = len(config.prefill_urls)
        names = config.names or ([f"p{i}" for i in range(n)] +
                                 [f"d{i}" for i in range(len(config.decode_urls))])
        self.prefills = [Instance(names[i], "prefill", url, i)
                         for i, url in enumerate(config.prefill_urls)]
        self.decodes = [Instance(names[n + i], "decode", url, n + i)
                        for i, url in enumerate(config.decode_urls)]
        self.instances = self.prefills + self.decodes
        self.placer = Placer(SchedulerConfig(config.policy, config.alpha_tokens,
                                             config.beta_tokens), self.prefills, self.decodes)
        self.prefix: PrefixIndex | None = None
        self.session: aiohttp.ClientSession | None = None
        self.hops: Hops | None = None
        self.rids = itertools.count(1)
        self.recent: collections.deque = collections.deque(maxlen=config.recent)
        self.totals = {"requests": 0, "errors": 0, "read_side_pe": 0, "read_side_de": 0}
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # uvicorn (vllm serve) closes an idle connection after 5 s; a pooled one kept longer can
        # be reused in the instant the server closes it (ServerDisconnectedError on a live
        # instance), so the pool lets idle connections go first
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S))
        self.hops = Hops(self.session, self.prefills, self.decodes, self.config.hop_timeout_s)
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            await self.scrape()
            if all(i.alive for i in self.instances):
                break
            if time.monotonic() > deadline:
                down = ", ".join(f"{i.name} ({i.url}): {i.down_reason}"
                                 for i in self.instances if not i.alive)
                if any(i.alive for i in self.prefills) and any(i.alive for i in self.decodes):
                    log.warning("dualkv router: starting without %s (marked down until its "
                                "/metrics answers)", down)
                    break
                await self.close()
                raise TimeoutError(f"no live prefill and decode instance within "
                                   f"{self.config.start_timeout_s} s: {down}")
            await asyncio.sleep(self.config.poll_s)
        sizes = {i.load.block_size for i in self.instances if i.load and i.load.block_size}
        if self.config.block_size:
            block_size = self.config.block_size
        elif len(sizes) == 1:
            block_size = sizes.pop()
        else:
            await self.close()
            raise InvalidArgument(f"the instances report block sizes {sorted(sizes)}: they must "
                                  f"agree (or pass --block-size)")
        self.prefix = PrefixIndex(block_size)
        self._tasks = [asyncio.create_task(self._poll_loop()),
                       asyncio.create_task(self._place_loop())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.session is not None:
            await self.session.close()

    async def scrape(self) -> None:
        async def one(instance: Instance):
            try:
                async with self.session.get(instance.url + "/metrics",
                                            timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status != 200:
                        raise InvalidArgument(f"/metrics answered HTTP {resp.status}")
                    instance.load = VllmLoad.from_metrics(await resp.text())
                instance.scraped_at = time.monotonic()
                instance.mark(True)
            except (aiohttp.ClientError, asyncio.TimeoutError, InvalidArgument) as exc:
                instance.mark(False, f"{type(exc).__name__}: {exc}")
        await asyncio.gather(*(one(i) for i in self.instances))

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            await self.scrape()
            self.placer.place()

    async def _place_loop(self) -> None:
        """Requests that could not be placed (no PE under its token budget, no DE with room)
        are tried again often: loads change when requests end, between scrapes."""
        while True:
            await asyncio.sleep(0.05)
            if self.placer.num_waiting:
                self.placer.place()

    # -- HTTP ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/dualkv/status", self.status)
        return app

    async def health(self, request: web.Request) -> web.Response:
        ok = any(i.alive for i in self.prefills) and any(i.alive for i in self.decodes)
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({
            "policy": self.config.policy, "block_size": self.prefix.block_size,
            "waiting": self.placer.num_waiting, "totals": self.totals,
            "instances": [i.status() for i in self.instances],
            "recent": list(self.recent)})

    async def models(self, request: web.Request) -> web.Response:
        for instance in self.instances:
            if instance.alive:
                try:
                    async with self.session.get(instance.url + "/v1/models",
                                                timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        return web.json_response(await resp.json(), status=resp.status)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    continue
        return _bad_request("no live instance", 503)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise InvalidArgument("the body must be a JSON object")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise InvalidArgument("'messages' must be a non-empty list")
            tokenize = {k: body[k] for k in _CHAT_TOKENIZE_FIELDS if k in body}
            prompt = await self._tokenize(body, tokenize)
            gen_tokens = _max_tokens(body.get("max_completion_tokens") or body.get("max_tokens"))
        except (ValueError, TypeError, InvalidArgument) as exc:
            return _bad_request(str(exc))
        prefill = {k: body[k] for k in _CHAT_PREFILL_FIELDS if k in body}
        return await self._serve(request, body, prompt, gen_tokens, prefill, CHAT_PATH)

    async def _prompt_ids(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return await self._tokenize(body, {"prompt": prompt})
        if (isinstance(prompt, list) and prompt and
                all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)):
            return prompt
        raise InvalidArgument("'prompt' must be one non-empty list of token ids or one text")

    async def _tokenize(self, body: dict, what: dict) -> list[int]:
        """Token ids of a text ({"prompt": ...}) or of chat messages, by a prefill instance."""
        for instance in self.prefills:
            if not instance.alive:
                continue
            try:
                async with self.session.post(instance.url + "/tokenize",
                                             json={"model": body.get("model"), **what},
                                             timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    answer = await resp.json()
                    if resp.status == 200 and answer.get("tokens"):
                        return list(answer["tokens"])
                    raise InvalidArgument(f"{instance.name} cannot tokenize: {answer}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                continue
        raise InvalidArgument("no prefill instance could tokenize the prompt")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise InvalidArgument("the body must be a JSON object")
            prompt = await self._prompt_ids(body)
            gen_tokens = _max_tokens(body.get("max_tokens"))
        except (ValueError, TypeError, InvalidArgument) as exc:
            return _bad_request(str(exc))
        return await self._serve(request, dict(body, prompt=prompt), prompt, gen_tokens, body,
                                 COMPLETIONS_PATH)

    async def _serve(self, request: web.Request, decode_body: dict, prompt: list[int],
                     gen_tokens: int, prefill_body: dict, decode_path: str) -> web.StreamResponse:
        """Places the request, prefills `prompt` (built from prefill_body's fields) and sends
        decode_body to decode_path on the decode instance."""
        rid = next(self.rids)
        hit = self.prefix.hit_tokens(prompt)
        trace = {"rid": rid, "prompt_tokens": len(prompt), "hit_tokens": hit, "hops": [],
                 "hop_s": [], "retries": 0, "store_read_bytes": {}, "arrived": time.time()}
        self.totals["requests"] += 1
        try:
            placement = await asyncio.wait_for(
                self.placer.submit(Request(rid, len(prompt), hit, gen_tokens)),
                self.config.place_timeout_s)
        except asyncio.TimeoutError:
            self.placer.finish(rid)
            self.totals["errors"] += 1
            return _bad_request(f"not placed within {self.config.place_timeout_s} s (no live "
                                f"prefill or decode instance with room)", 503)
        trace.update(pe=placement.pe.name, de=placement.de.name, read_side=placement.read_side)
        self.totals[f"read_side_{placement.read_side}"] += 1
        try:
            params, pe = await self.hops.prefill(placement, prefill_body, prompt, trace,
                                                 lambda: self.placer.read_done(rid))
            if pe is not None:
                self.prefix.add(prompt)  # P wrote its new Full Blocks to the store
            trace["prefilled_s"] = round(time.time() - trace["arrived"], 6)
            result = await self.hops.decode(placement, decode_body, params, trace, decode_path)
            if isinstance(result, dict):
                result["dualkv"] = trace
                return web.json_response(result)
            return await self._stream(request, result)
        except HopFailed as exc:
            self.totals["errors"] += 1
            trace["error"] = str(exc)
            if exc.is_client_error:
                return _bad_request(exc.reason, exc.status)
            return _bad_request(f"the request failed on every instance tried: {exc}", 502)
        finally:
            trace["done_s"] = round(time.time() - trace["arrived"], 6)
            self.placer.finish(rid)
            self.recent.append(trace)

    @staticmethod
    async def _stream(request: web.Request, upstream) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={
            "Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
            "Cache-Control": "no-cache"})
        await out.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
        finally:
            upstream.release()
        await out.write_eof()
        return out
