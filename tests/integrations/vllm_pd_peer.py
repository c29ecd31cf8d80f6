"""A vLLM instance in its own process, for the P/D tests: vLLM's real Scheduler and the worker
connector driven by vllm_harness, stepped like an engine loop. `PeerProcess` is the test's
handle on it.

Commands arrive as JSON lines on stdin ({"op": "add", "req_id", "tokens", "params",
"max_tokens"}, {"op": "stats"}); events leave as JSON lines on stdout: "ready", "finished" (a
request's kv_transfer_params, as the API server would return them, its tokens, and whether its
pages held the right KV at every position before the first one it computed), "freed" (its
pages went back to vLLM's pool: the other instance read them, or the lease ended) and, with
--announce-fetch, "fetch_wait" when the forward waits for a layer fetched from another
instance (--stop-in-fetch: and then stops itself there, SIGSTOP, for the test to kill)."""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from vllm_harness import LAYERS, Harness, expected_kv  # noqa: E402


def reply(obj):
    print(json.dumps(obj), flush=True)


def handle(h, cmd):
    if cmd["op"] == "add":
        h.add(cmd["req_id"], cmd["tokens"], max_tokens=cmd.get("max_tokens", 1),
              kv_transfer_params=cmd["params"])
    elif cmd["op"] == "stats":
        side = h.worker.worker_side
        reply({"event": "stats", "worker": side.stats, "server": side.page_server.stats,
               "puller": side.page_puller.stats})


def kv_before_first_compute(h, req_id) -> bool:
    """The request's pages hold the expected KV at every position before the first it computed."""
    request = h.requests[req_id]
    return all(h.page(req_id, pos, layer).equal(expected_kv(layer, pos, request.all_token_ids[pos]))
               for pos in range(h.computed_positions[req_id][0]) for layer in range(len(LAYERS)))


def announce_fetch_waits(stop: bool):
    from dualkv.integrations.vllm.pd_consumer import LayerFetch

    wait_layer = LayerFetch.wait_layer

    def announcing(self, layer):
        if any(f.error is None and f.handles[layer] is not None for f in self.fetches):
            reply({"event": "fetch_wait", "layer": layer})
            if stop:  # killed here by the test: mid-forward
                os.kill(os.getpid(), signal.SIGSTOP)
        wait_layer(self, layer)
    LayerFetch.wait_layer = announcing


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--kv-role", default="kv_producer")
    parser.add_argument("--extra", default="{}")
    parser.add_argument("--announce-fetch", action="store_true")
    parser.add_argument("--stop-in-fetch", action="store_true")
    args = parser.parse_args()
    if args.announce_fetch or args.stop_in_fetch:
        announce_fetch_waits(args.stop_in_fetch)
    h = Harness(args.model_dir, args.root, kv_role=args.kv_role, extra=json.loads(args.extra))
    reply({"event": "ready", "pid": os.getpid()})
    reported, freed, kv_ok = set(), set(), {}
    while True:
        busy = h.scheduler.has_requests()
        if select.select([sys.stdin], [], [], 0 if busy else 0.05)[0]:
            line = sys.stdin.readline()
            if not line:
                break
            handle(h, json.loads(line))
        if busy and h.step().total_num_scheduled_tokens == 0:
            time.sleep(0.002)  # only waiting on transfers
        for req_id in h.requests:
            if req_id not in kv_ok and h.computed_positions[req_id]:
                kv_ok[req_id] = kv_before_first_compute(h, req_id)
        for req_id, output in h.finished.items():
            if req_id not in reported:
                reported.add(req_id)
                reply({"event": "finished", "req_id": req_id,
                       "kv_transfer_params": output.kv_transfer_params,
                       "computed": h.computed_positions[req_id],
                       "tokens": list(h.requests[req_id].output_token_ids),
                       "kv_ok": kv_ok.get(req_id), "wrong_computes": h.num_wrong_computes})
            if req_id not in freed and req_id not in h.scheduler.requests:
                freed.add(req_id)
                reply({"event": "freed", "req_id": req_id, "at": time.monotonic()})
    h.close()


class PeerProcess:
    """The test's side of a peer: start it, send commands, wait for its events (deadlines)."""

    def __init__(self, model_dir, root, extra, kv_role="kv_producer", flags=()):
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + "/src"
        env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--model-dir", model_dir, "--root", root,
             "--kv-role", kv_role, "--extra", json.dumps(extra), *flags],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        self.events = []
        self.wait_for("ready", timeout_s=120)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout_s):
        """Next event, or None when none came within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            line = self.proc.stdout.readline()
            assert line, "peer process exited"
            if line.startswith("{"):  # vLLM and UCX may print other lines
                event = json.loads(line)
                self.events.append(event)
                return event
        return None

    def find(self, name, req_id=None):
        return next((e for e in self.events
                     if e["event"] == name and e.get("req_id") == req_id), None)

    def wait_for(self, name, req_id=None, timeout_s=60.0, step=None):
        """The event, within timeout_s; `step` (an in-process harness's step) runs between
        reads, so that instance keeps serving while this one works."""
        deadline = time.monotonic() + timeout_s
        while (event := self.find(name, req_id)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} event for {req_id} within {timeout_s} s")
            if step is not None:
                step()
            self.read(0.01 if step is not None else deadline - time.monotonic())
        return event

    def add(self, req_id, prompt, params, max_tokens=1):
        self.send(op="add", req_id=req_id, tokens=prompt, params=params, max_tokens=max_tokens)

    def prefill(self, req_id, prompt):
        self.add(req_id, prompt, {"do_remote_decode": True})
        return self.wait_for("finished", req_id)["kv_transfer_params"]

    def stats(self, step=None):
        self.events = [e for e in self.events if e["event"] != "stats"]
        self.send(op="stats")
        return self.wait_for("stats", step=step)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    main()
