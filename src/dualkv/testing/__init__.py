"""Support for dualkv's own tests and benchmarks. Not API: nothing here is promised to stay.

    memory_pool.py  MemoryPool: HostPool's slot API in numpy, for engines without the native store
    sglang_cpu.py   importing SGLang on a machine without its GPU packages (placeholders)
    vllm_model.py   seeded tiny/small Llama checkpoints that vLLM on CPU loads

The submodules are imported by path (`from dualkv.testing.sglang_cpu import ...`); importing
this package loads nothing.
"""
