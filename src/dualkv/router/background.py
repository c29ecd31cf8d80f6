"""A router on a thread of its own (tests, the bench, embedding in a Python program):

    with RouterThread(RouterConfig(prefill_urls, decode_urls, policy="dualpath"), port=8000) as r:
        ...  # POST http://127.0.0.1:8000/v1/completions
"""
from __future__ import annotations

import asyncio
import threading

from dualkv.router.server import Router, RouterConfig


class RouterThread:
    def __init__(self, config: RouterConfig, host: str = "127.0.0.1", port: int = 8000,
                 start_timeout_s: float = 120.0):
        self.router = Router(config)
        self.host, self.port, self.start_timeout_s = host, port, start_timeout_s
        self.url = f"http://{host}:{port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> RouterThread:
        from dualkv.commands.router import serve

        async def main():
            ready = asyncio.Event()
            self._task = asyncio.current_task()
            waiter = asyncio.create_task(ready.wait())
            waiter.add_done_callback(lambda _: self._ready.set())
            try:
                await serve(self.router, self.host, self.port, ready)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                self._error = exc
                self._ready.set()

        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="dualkv-router", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise TimeoutError(f"the router did not start within {self.start_timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def status(self) -> dict:
        """The router's /dualkv/status, read on its own loop."""
        future = asyncio.run_coroutine_threadsafe(self._status(), self._loop)
        return future.result(30)

    async def _status(self) -> dict:
        return {"totals": dict(self.router.totals), "recent": list(self.router.recent),
                "instances": [i.status() for i in self.router.instances]}

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout_s)

    def __enter__(self) -> RouterThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
