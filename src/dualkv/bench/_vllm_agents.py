"""Multi-turn agents against an OpenAI completions endpoint (the P/D router, or one plain vLLM
instance as the reference): each agent's next prompt is its last prompt, the tokens it was
answered, and `append` new tokens, so contexts grow turn by turn and each turn's prefix was
prefilled (and stored) the turn before, as in the paper's agentic workloads (paper.md §2).

Agents run side by side, each one turn after the other. `barrier=True` makes every agent finish
turn t before any starts turn t+1, and calls `between_turns()` there (the tests reset the
instances' prefix caches, so every later turn's hit must come from storage).
"""
from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


def post_json(url: str, body: dict, timeout_s: float) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc


@dataclass
class Turn:
    agent: int
    turn: int
    prompt: list[int]
    tokens: list[int]           # the answer's token ids
    seconds: float              # request sent -> whole answer
    route: dict = field(default_factory=dict)  # the router's `dualkv` field


@dataclass
class AgentWorkload:
    num_agents: int = 4
    num_turns: int = 3
    first_tokens: int = 100     # each agent's first prompt
    append_tokens: int = 40     # new tokens per later turn
    gen_tokens: int = 8
    vocab: int = 1000
    seed: int = 0
    model: str = ""

    def first_prompts(self) -> list[list[int]]:
        rng = random.Random(self.seed)
        return [[rng.randrange(1, self.vocab) for _ in range(self.first_tokens)]
                for _ in range(self.num_agents)]

    def next_prompt(self, agent: int, turn: int, prompt: list[int], answer: list[int]) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + agent * 1009 + turn)
        return prompt + answer + [rng.randrange(1, self.vocab) for _ in range(self.append_tokens)]

    def body(self, prompt: list[int]) -> dict:
        return {"model": self.model, "prompt": prompt, "max_tokens": self.gen_tokens,
                "min_tokens": self.gen_tokens, "temperature": 0, "return_token_ids": True}

    def ask(self, url: str, agent: int, turn: int, prompt: list[int], timeout_s: float) -> Turn:
        start = time.monotonic()
        answer = post_json(url + "/v1/completions", self.body(prompt), timeout_s)
        tokens = answer["choices"][0].get("token_ids") or []
        return Turn(agent, turn, prompt, list(tokens), time.monotonic() - start,
                    answer.get("dualkv") or {})

    def run(self, url: str, timeout_s: float = 300.0, barrier: bool = False,
            between_turns=None) -> list[Turn]:
        """Every agent's turns against `url`; the turns in the order they ended."""
        prompts = self.first_prompts()
        done: list[Turn] = []

        def agent_loop(agent: int, turns: range) -> list[Turn]:
            out = []
            for t in turns:
                result = self.ask(url, agent, t, prompts[agent], timeout_s)
                prompts[agent] = self.next_prompt(agent, t, prompts[agent], result.tokens)
                out.append(result)
            return out

        with ThreadPoolExecutor(self.num_agents) as pool:
            if not barrier:
                for results in pool.map(lambda a: agent_loop(a, range(self.num_turns)),
                                        range(self.num_agents)):
                    done += results
                return sorted(done, key=lambda r: (r.turn, r.agent))
            for t in range(self.num_turns):
                if t and between_turns is not None:
                    between_turns()
                for results in pool.map(lambda a: agent_loop(a, range(t, t + 1)),
                                        range(self.num_agents)):
                    done += results
        return done
