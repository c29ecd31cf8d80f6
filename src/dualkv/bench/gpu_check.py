"""`make gpu-check`: what dualkv claims about CUDA, run on a CUDA machine.

1. the GPU-marked tests (`pytest -m gpu`), which skip everywhere else;
2. host -> device and device -> host copies of the store's registered (cudaHostRegister'ed)
   pool through the traffic manager, beside torch's own copy between a pinned tensor and the
   same device tensor: same bytes, same direction, --rounds rounds with the order alternated,
   medians and per-round ratios (`ratio` = dualkv / torch, higher is better).

Prints one JSON document. Without a CUDA device (or with a CPU-only torch) it says so and
exits with status 2: nothing was checked, and that must not read as a pass.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from dualkv.bench.report import Report, with_rounds

NO_GPU = 2


def parse_args(argv):
    p = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=256, help="bytes of one copy, in MiB")
    p.add_argument("--rounds", type=int, default=5, help="at least 3")
    p.add_argument("--skip-tests", action="store_true")
    return p.parse_args(argv)


def cuda_absence() -> str | None:
    """Why there is nothing to check here, or None on a usable CUDA machine."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build (make test keeps a CUDA "
                "build when one is installed)")
    if not torch.cuda.is_available():
        return f"no CUDA device is present (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return None


def run_gpu_tests() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs",
                           os.path.join(root, "tests")], capture_output=True, text=True,
                          timeout=1800)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"test": "pytest -m gpu", "returncode": done.returncode, "summary": summary}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def copy_rows(report: Report, num_bytes: int, rounds: int) -> None:
    import torch

    from dualkv.layout import KVLayout
    from dualkv.store.pool import HostPool
    from dualkv.transfer.traffic import TrafficConfig, TrafficManager

    layout = KVLayout(8, 2 * 1024 * 1024 // 8 // 64, 64)  # ~2 MiB Full Blocks
    num_slots = max(1, num_bytes // layout.full_block_bytes)
    pool = HostPool(layout, num_slots, cuda="required")
    host = torch.from_numpy(pool.array().reshape(-1))  # the registered pool's own bytes
    host.random_(0, 256)
    pinned = torch.empty_like(host).pin_memory()
    dev = torch.empty(host.numel(), dtype=torch.uint8, device="cuda")
    node = dict(node=f"gpucheck{os.getpid()}", cnic_gbps=0.0)  # 0: no emulated NIC cap
    with TrafficManager(TrafficConfig(**node)) as tm:
        def ours(dst, src):
            handle = tm.copy(dst, src)
            tm.wait(handle, 60)
            tm.release(handle)

        def torchs(dst, src):
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()

        for direction in ("h2d", "d2h"):
            pair = ((dev, host), (dev, pinned)) if direction == "h2d" else \
                ((host, dev), (pinned, dev))
            ours(*pair[0]), torchs(*pair[1])  # warm-up
            figures = {"dualkv": [], "torch": []}
            for rnd in range(rounds):
                order = ["dualkv", "torch"] if rnd % 2 == 0 else ["torch", "dualkv"]
                for side in order:
                    fn, args = (ours, pair[0]) if side == "dualkv" else (torchs, pair[1])
                    figures[side].append(host.numel() / timed(lambda: fn(*args)) / 1e9)
            row = {"test": "copy", "direction": direction, "bytes": host.numel(),
                   "host_memory": "HostPool (cudaHostRegister)", "ref_host_memory":
                   "torch pin_memory", "device": torch.cuda.get_device_name()}
            report.add(with_rounds(row, "gbps", "torch pinned copy_", figures["dualkv"],
                                   figures["torch"]))
    del host, pool  # the pool unregisters and unmaps when its last view goes


def main(argv=None) -> int:
    args = parse_args(argv)
    absent = cuda_absence()
    if absent is not None:
        print(f"gpu-check: nothing checked: {absent}", file=sys.stderr)
        return NO_GPU
    if args.rounds < 3:
        print("gpu-check: --rounds must be at least 3", file=sys.stderr)
        return 1
    report = Report("gpu-check", as_json=True)
    status = 0
    if not args.skip_tests:
        tests = run_gpu_tests()
        report.rows.append(tests)
        status = tests["returncode"]
    copy_rows(report, args.mib * 1024 * 1024, args.rounds)
    report.finish()
    return status


if __name__ == "__main__":
    sys.exit(main())
