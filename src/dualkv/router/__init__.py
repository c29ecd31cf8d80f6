"""dualkv router: an OpenAI-compatible proxy in front of vLLM prefill and decode instances that
runs DualPath's global scheduler (`dualkv.sched`, unchanged) and the P/D hops of
docs/vllm-pd.md.

    instances.py  the instances, their load (scraped from vLLM's /metrics) and liveness
    prefix.py     which prompt prefixes are in the block store (the hit of a new request)
    placement.py  `dualkv.sched.Scheduler` fed with the instances' loads: PE, DE, read side
    hops.py       one request's hops (Basic: P then D; DualPath read: D, P, D), retries
    server.py     the HTTP front (/v1/completions, /v1/models, /health, /dualkv/status)
    launch.py     `--launch-local 1p2d`: the whole set of vLLM instances on one machine
"""
