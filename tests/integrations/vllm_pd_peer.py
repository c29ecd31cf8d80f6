"""A vLLM prefill instance (kv_producer) in its own process, for the P/D tests: vLLM's real
Scheduler and the worker connector driven by vllm_harness, stepped like an engine loop.

Commands arrive as JSON lines on stdin ({"op": "add", "req_id", "tokens", "params"},
{"op": "stats"}); events leave as JSON lines on stdout: "ready", "finished" (a request's
kv_transfer_params, as the API server would return them) and "freed" (its pages went back to
vLLM's pool: the decode instance pulled them, or the lease ended)."""
import argparse
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from vllm_harness import Harness  # noqa: E402


def reply(obj):
    print(json.dumps(obj), flush=True)


def handle(h, cmd):
    if cmd["op"] == "add":
        h.add(cmd["req_id"], cmd["tokens"], max_tokens=1, kv_transfer_params=cmd["params"])
    elif cmd["op"] == "stats":
        side = h.worker.worker_side
        reply({"event": "stats", "worker": side.stats, "server": side.page_server.stats})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--extra", default="{}")
    args = parser.parse_args()
    h = Harness(args.model_dir, args.root, kv_role="kv_producer", extra=json.loads(args.extra))
    reply({"event": "ready", "pid": os.getpid()})
    reported, freed = set(), set()
    while True:
        busy = h.scheduler.has_requests()
        if select.select([sys.stdin], [], [], 0 if busy else 0.05)[0]:
            line = sys.stdin.readline()
            if not line:
                break
            handle(h, json.loads(line))
        if busy and h.step().total_num_scheduled_tokens == 0:
            time.sleep(0.002)  # only waiting on transfers
        for req_id, output in h.finished.items():
            if req_id not in reported:
                reported.add(req_id)
                reply({"event": "finished", "req_id": req_id,
                       "kv_transfer_params": output.kv_transfer_params,
                       "computed": h.computed_positions[req_id]})
            if req_id not in freed and req_id not in h.scheduler.requests:
                freed.add(req_id)
                reply({"event": "freed", "req_id": req_id, "at": time.monotonic()})
    h.close()


if __name__ == "__main__":
    main()
