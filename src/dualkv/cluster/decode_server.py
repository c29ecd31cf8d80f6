"""The decode side of a DE process: buffers opened for prompts, and a running decode batch that
advances one step at a time between control messages.

A request goes open (buffer allocated; on the de read path its hit is read and streamed to the
PE) → admit (its prompt KV has landed: copied into the running batch, buffer freed) → finished
(all tokens generated, every Full Block written back) → collected by `poll`. The engine
process calls `step()` whenever no message waits, so new requests join a batch that is already
decoding (continuous batching), and the driver may prefill the next batch meanwhile.

Host-buffer admission: the pool holds the prompt buffers *and* the slots of write-backs in
flight (freed when a request finishes), so `free_tokens` subtracts every slot an opened or
running request may still take; `open` refuses (OutOfMemory) a request that does not fit, and
the scheduler, which sees `free_tokens` as the DE's free capacity, keeps it queued until it
does. Nothing is dropped: a refused request waits for space.
"""
from __future__ import annotations

import time

import numpy as np

from dualkv.cluster.messages import Admitted, DecodeResult, Dropped, Opened, Polled
from dualkv.engine import BlockBuffer, Decoder, SlotSource, StoreWriteBack
from dualkv.engine.remote import RemoteBuffer, stream_hit_layers, wait_landed
from dualkv.errors import OutOfMemory


class DecodeServer:
    def __init__(self, server):
        self.server = server  # the EngineServer: store, agent, traffic manager, codec, timeout_s
        self.decoder = Decoder(server.model, server.codec, server.timeout_s)
        self.opened = {}    # rid -> (BlockBuffer, hit stream or None, max blocks written back)
        self.running = {}   # rid -> (StoreWriteBack, max blocks written back, admitted_at)
        self.finished = []  # results not yet collected by poll
        self.max_rid = 0     # the newest request id seen (the scheduler's report mark)
        self.second_at = {}  # rid -> when its second token (the first decoded one) came

    # -- admission ------------------------------------------------------------------------
    def _future_slots(self) -> int:
        """Pool slots that opened and running requests may still take for write-backs."""
        opened = sum(wb_end for _, _, wb_end in self.opened.values())
        running = sum(max(0, wb_end - wb.next_block) for wb, wb_end, _ in self.running.values())
        return opened + running

    def num_tokens(self) -> int:
        """Tokens of every unfinished request here (the scheduler's `tok`)."""
        return sum(b.num_tokens for b, _, _ in self.opened.values()) + \
            sum(len(r.seq) for r in self.decoder.running.values())

    def free_tokens(self) -> int:
        """Room for requests of prompt + generated tokens, as the scheduler counts them
        (`Request.hbm_tokens`): a request of n such tokens takes at most 2 n / bt + 1 slots
        (its buffer, then its write-backs), so whatever the scheduler fits here opens."""
        pool, bt = self.server.store.pool, self.server.codec.block_tokens
        return max(0, pool.num_free - self._future_slots() - 1) * bt // 2

    def open(self, msg) -> Opened:
        s, bt = self.server, self.server.codec.block_tokens
        self.max_rid = max(self.max_rid, msg.rid)  # seen, whether it fits or not
        num_blocks = -(-msg.num_tokens // bt)
        wb_end = (msg.num_tokens + msg.max_new_tokens - 1) // bt
        if s.store.pool.num_free - self._future_slots() < num_blocks + wb_end:
            raise OutOfMemory(f"DE buffer: {num_blocks + wb_end} slots needed for request "
                              f"{msg.rid}, {s.store.pool.num_free - self._future_slots()} free")
        keys = np.frombuffer(msg.hit_keys, np.uint8).reshape(-1, 32)
        buffer = BlockBuffer(s.store.pool, s.store.layout, msg.num_tokens)
        num_hit, stream, ready_at = 0, None, time.monotonic()
        if msg.read_side == "de" and len(keys):
            source = SlotSource.load(s.store, keys, buffer.slots[:len(keys)])
            num_hit = source.prepare(time.monotonic() + s.timeout_s) // bt
            ready_at = s.read_through_snic(len(keys))
            if num_hit:
                stream = stream_hit_layers(s.tm, buffer, s.pool_region, num_hit,
                                           msg.pe_peer, msg.pe_recv_region, msg.rid,
                                           msg.pe_recv_offset)
        self.opened[msg.rid] = (buffer, stream, wb_end)
        target = RemoteBuffer.of(buffer, 0, s.pool_region)
        return Opened(slot_offsets=list(target.slot_offsets), num_hit_blocks=num_hit,
                      ready_at=ready_at)

    def admit(self, msg) -> Admitted:
        """Each request's prompt KV has been put by the PE: into the running batch."""
        s = self.server
        for req in msg.requests:
            rid = req.rid
            buffer, stream, wb_end = self.opened.pop(rid)
            deadline = time.monotonic() + s.timeout_s
            self._settle(stream, deadline)
            wait_landed(s.agent, buffer, rid, deadline, req.pe_peer)
            cached = req.num_cached_blocks
            prior = np.frombuffer(req.prior_key, np.uint8) if cached else None
            wb = StoreWriteBack(s.store, s.codec, cached, prior)
            self.decoder.admit(rid, buffer, req.prompt, req.first_token,
                               req.max_new_tokens, num_cached_blocks=cached, writeback=wb)
            self.running[rid] = (wb, wb_end, time.monotonic())
        return Admitted(num_running=len(self.running))

    def drop(self, msg) -> Dropped:
        """Frees the buffers of opened requests that will not be admitted (a failed batch)."""
        rids = msg.rids or list(self.opened)
        for rid in rids:
            if rid in self.opened:
                buffer, stream, _ = self.opened.pop(rid)
                try:  # puts to a PE that may be gone: settle, then free
                    self._settle(stream, time.monotonic() + 5.0)
                except Exception:
                    pass
                buffer.free()
        return Dropped(num_dropped=len(rids))

    def _settle(self, stream, deadline: float) -> None:
        if stream is not None:  # the hit's layers streamed to the PE (stream_hit_layers)
            stream.wait(max(0.0, deadline - time.monotonic()))

    # -- decoding -------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        return self.decoder.num_running > 0

    def step(self) -> None:
        """One token for every running request; finished ones are written back and queued."""
        done = self.decoder.step()
        now = time.monotonic()
        for rid, req in self.decoder.running.items():  # the time of each second token
            if len(req.generated) >= 2:
                self.second_at.setdefault(rid, now)
        for rid, generated in done.items():
            wb, _, admitted_at = self.running.pop(rid)
            wb.finish(self.server.timeout_s)
            # write-backs go out through the node's storage NIC too, in its transmit direction
            # (never waited for: they are off the turn's critical path)
            self.server.tm.snic_tx.debit((wb.next_block - wb.first_block)
                                      * self.server.store.layout.full_block_bytes)
            second_at = self.second_at.pop(rid, now if len(generated) >= 2 else None)
            self.finished.append(DecodeResult(
                rid=rid, generated=generated, num_written_blocks=wb.next_block,
                admitted_at=admitted_at, second_at=second_at, done_at=time.monotonic()))

    def poll(self, msg) -> Polled:
        """Finished results since the last poll, and how far each running request is."""
        done, self.finished = self.finished, []
        progress = [(rid, len(r.generated)) for rid, r in self.decoder.running.items()]
        return Polled(results=done, progress=progress, free_tokens=self.free_tokens())
