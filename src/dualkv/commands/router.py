"""`dualkv router`: the OpenAI-compatible P/D router in front of vLLM instances (docs/vllm-pd.md).

    dualkv router --prefill http://p0:8100 --decode http://d0:8100 --decode http://d1:8100 \\
        --policy dualpath --port 8000
    dualkv router --launch-local 1p2d --model DIR --root /blocks --port 8000   # one machine
"""
from __future__ import annotations

import shlex

from dualkv.errors import InvalidArgument


def add_arguments(parser):
    parser.add_argument("--prefill", action="append", default=[], metavar="URL",
                        help="a prefill instance (repeat for each)")
    parser.add_argument("--decode", action="append", default=[], metavar="URL",
                        help="a decode instance (repeat for each)")
    parser.add_argument("--policy", default="dualpath",
                        help="basic (every read on the prefill side, round robin) or dualpath "
                             "(Algorithm 1 chooses engines and read side); also layer, dpl")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--block-size", type=int, default=0,
                        help="tokens per KV block (default: what the instances report)")
    parser.add_argument("--alpha-tokens", type=float, default=1.5e6,
                        help="a node read queue at or below this is short (paper.md §8)")
    parser.add_argument("--beta-tokens", type=float, default=7.0e5,
                        help="a prefill instance with more unfinished tokens takes no new work")
    parser.add_argument("--hop-timeout-s", type=float, default=600.0)
    parser.add_argument("--launch-local", metavar="NpMd",
                        help="start N prefill and M decode vLLM instances here first (e.g. 1p2d)")
    parser.add_argument("--model", help="--launch-local: the model (directory or name)")
    parser.add_argument("--root", help="--launch-local: the shared block directory")
    parser.add_argument("--token", help="cluster token (default $DUALKV_CLUSTER_TOKEN)")
    parser.add_argument("--base-port", type=int, default=8100,
                        help="--launch-local: instance i listens on base-port + i")
    parser.add_argument("--vllm-args", default="",
                        help="--launch-local: more arguments for every `vllm serve` line")
    parser.add_argument("--snic-gbps", type=float, default=0.0,
                        help="--launch-local: emulated storage NIC per instance (0 = unpaced)")
    parser.add_argument("--cnic-gbps", type=float, default=0.0,
                        help="--launch-local: emulated compute NIC per instance (0 = unpaced)")
    parser.add_argument("--log-dir", default="router-logs", help="--launch-local: instance logs")


def run(args):
    import asyncio

    from dualkv import env
    from dualkv.router.launch import LocalSet
    from dualkv.router.server import Router, RouterConfig

    local = None
    if args.launch_local:
        if not args.model or not args.root:
            raise InvalidArgument("--launch-local needs --model and --root")
        local = LocalSet(args.launch_local, args.model, args.root,
                         args.token or env.get_str("CLUSTER_TOKEN", ""), args.log_dir,
                         base_port=args.base_port, vllm_args=shlex.split(args.vllm_args),
                         extra_config={"snic_gbps": args.snic_gbps, "cnic_gbps": args.cnic_gbps})
        args.prefill, args.decode = local.prefill_urls, local.decode_urls
        print(f"starting {args.launch_local} vLLM instances (logs in {args.log_dir}) ...", flush=True)
        local.start()
    elif not args.prefill or not args.decode:
        raise InvalidArgument("give --prefill and --decode URLs, or --launch-local NpMd")
    config = RouterConfig(args.prefill, args.decode, policy=args.policy,
                          alpha_tokens=args.alpha_tokens, beta_tokens=args.beta_tokens,
                          block_size=args.block_size, hop_timeout_s=args.hop_timeout_s)
    try:
        asyncio.run(serve(Router(config), args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        if local is not None:
            local.stop()
    return 0


async def serve(router, host: str, port: int, ready=None) -> None:
    """Runs the router until cancelled; `ready` (an asyncio.Event) is set once it listens."""
    import asyncio

    from aiohttp import web

    await router.start()
    runner = web.AppRunner(router.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"dualkv router ({router.config.policy}) on http://{host}:{port}: prefill "
          f"{router.config.prefill_urls}, decode {router.config.decode_urls}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await router.close()
