"""Host<->device copies of the traffic manager on CUDA: async copies on a low-priority stream
(kv) or a high-priority stream (model) from registered (pinned) host memory, completion
observed through CUDA events. Imported only when a CUDA tensor is copied."""
from __future__ import annotations

import time

from dualkv.errors import InvalidArgument, NotFound, TimedOut


class CudaCopier:
    def __init__(self, cnic):
        import torch

        self.torch = torch
        self.cnic = cnic
        lowest, highest = torch.cuda.Stream.priority_range()  # numerically: low > high
        self.streams = {"kv": torch.cuda.Stream(priority=lowest),
                        "model": torch.cuda.Stream(priority=highest)}
        self.events: dict[int, object] = {}

    def copy(self, handle: int, dst, src, cls: str) -> int:
        if dst.numel() * dst.element_size() != src.numel() * src.element_size():
            raise InvalidArgument("copy between tensors of different byte sizes")
        num_bytes = src.numel() * src.element_size()
        if cls == "kv":
            self.cnic.acquire(num_bytes, 60.0)  # every GPU byte crosses the CNIC (paper §7.2)
        else:
            self.cnic.debit(num_bytes)
        stream = self.streams[cls]
        # the device side's current stream (dst is a host tensor in a device-to-host copy, and
        # current_stream refuses a CPU device)
        device = dst.device if dst.is_cuda else src.device
        stream.wait_stream(self.torch.cuda.current_stream(device))
        with self.torch.cuda.stream(stream):
            dst.view(-1).view(self.torch.uint8).copy_(src.view(-1).view(self.torch.uint8),
                                                      non_blocking=True)
            event = self.torch.cuda.Event()
            event.record(stream)
        self.events[handle] = event
        return handle

    def _event(self, handle):
        if handle not in self.events:
            raise NotFound(f"unknown or released handle {handle}")
        return self.events[handle]

    def poll(self, handle: int) -> bool:
        return self._event(handle).query()

    def wait(self, handle: int, timeout: float) -> None:
        event, deadline, pause = self._event(handle), time.monotonic() + timeout, 1e-5
        while not event.query():  # CUDA events have no timed wait; back off while polling
            if time.monotonic() > deadline:
                raise TimedOut("device copy did not finish before the deadline")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def release(self, handle: int) -> None:
        self._event(handle)
        del self.events[handle]
