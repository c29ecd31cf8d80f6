"""Prefill and decode engines joined by the transfer engine: two UCX agents in one process
(as NIXL's tests do), the PE's KV put into the DE buffer with per-layer notices, and on the de
read path the hit Layer Blocks put from the DE buffer into the PE. Results must equal a full
recompute byte for byte, as in process."""
import time

import numpy as np
import pytest

from conftest import TINY, check_written_back, reference_generate
from dualkv.engine import BlockBuffer, Decoder, LayerBlockCodec, SlotSource, StoreWriteBack
from dualkv.engine.prefill import PrefillItem, prefill_batch

transfer = pytest.importorskip("dualkv.transfer")
BT = 16


@pytest.fixture(params=["agent", "traffic"])
def agents(memory_store, request, tmp_path):
    """Two agents joined; KV moves through the agents themselves, or (as in the cluster)
    through each node's TrafficManager: kv class, chunked, paced by a capped compute NIC."""
    try:
        pe, de = transfer.Agent(transfer.TransferConfig(name="pe")), transfer.Agent(transfer.TransferConfig(name="de"))
    except Exception as exc:  # a build without UCX
        pytest.skip(f"no UCX transport: {exc}")
    pool = memory_store.pool  # one store, one pool: both nodes' buffers are slots of it
    pool_pe = pe.register(ptr=pool.base_ptr, size=pool.size_bytes)
    pool_de = de.register(ptr=pool.base_ptr, size=pool.size_bytes)
    staging = np.zeros(2 * 256 * TINY.layout(BT).bytes_per_token_layer, np.uint8)
    recv = np.zeros(TINY.num_layers * 16 * TINY.layout(BT).layer_block_bytes, np.uint8)
    regions = dict(pool_pe=pool_pe, pool_de=pool_de, staging_region=pe.register(staging),
                   recv_region=pe.register(recv))
    de_peer = pe.connect(de.local_info())
    pe_peer = de.connect(pe.local_info())
    movers = dict(pe_mover=pe, de_mover=de)
    if request.param == "traffic":
        from dualkv.transfer.traffic import TrafficConfig, TrafficManager

        movers = {f"{role}_mover": TrafficManager(
            TrafficConfig(node=f"{role}{id(pe)}", cnic_gbps=0.05, chunk_bytes=4096,
                          shm_dir=str(tmp_path)), kv_agent=agent)
            for role, agent in (("pe", pe), ("de", de))}
    yield dict(pe=pe, de=de, de_peer=de_peer, pe_peer=pe_peer, staging=staging, recv=recv,
               **regions, **movers)
    if request.param == "traffic":
        for mover in movers.values():
            mover.close()
    pe.close()
    de.close()


def remote_turn(model, store, a, prompt, read_side, num_gen, rid):
    from dualkv.engine.remote import (RemoteBuffer, RemoteBufferSink, RemoteLayerSource,
                                      stream_hit_layers, wait_landed)

    codec = LayerBlockCodec(TINY, BT)
    keys = store.chain_keys(prompt)
    hit = store.match(keys)
    de_buffer = BlockBuffer(store.pool, store.layout, len(prompt))  # on the DE node
    stream = None
    if read_side == "de":  # the DE reads the hit, then streams it to the PE layer by layer
        loaded = SlotSource.load(store, keys[:hit], de_buffer.slots[:hit])
        hit = loaded.prepare(time.monotonic() + 10) // BT
        if hit:
            stream = stream_hit_layers(a["de_mover"], de_buffer, a["pool_de"], hit, a["pe_peer"],
                                       a["recv_region"], rid)
        source = RemoteLayerSource(a["pe"], a["recv"], hit, store.layout, rid, a["de_peer"])
    else:
        source = SlotSource.load(store, keys[:hit])
    target = RemoteBuffer.of(de_buffer, a["de_peer"], a["pool_de"])
    sink = RemoteBufferSink(a["pe_mover"], a["staging"], a["staging_region"], target, codec, rid)
    first = prefill_batch(model, [PrefillItem(prompt, source, sink, read_side)], codec)[0]
    cached = source.prepare(0) // BT
    source.close()
    if stream is not None:
        stream.wait(10)
        assert stream.num_pending == 0
    wait_landed(a["de"], de_buffer, rid, time.monotonic() + 10, a["pe_peer"])
    writeback = StoreWriteBack(store, codec, cached, keys[cached - 1] if cached else None)
    decoder = Decoder(model, codec)
    decoder.admit(rid, de_buffer, prompt, first, num_gen, num_cached_blocks=cached, writeback=writeback)
    while decoder.num_running:
        done = decoder.step()
    writeback.finish()
    return done[rid], cached


@pytest.mark.parametrize("read_side", ["pe", "de"])
def test_remote_conversation_matches_recompute(model, memory_store, agents, read_side):
    rng = np.random.default_rng(21)
    prompt = [int(t) for t in rng.integers(0, TINY.vocab_size, 45)]
    for turn in range(3):
        out, cached = remote_turn(model, memory_store, agents, np.asarray(prompt, np.int32),
                                  read_side, 12, rid=turn + 1)
        assert out == reference_generate(model, prompt, 12), turn
        assert (cached > 0) == (turn > 0)
        check_written_back(model, memory_store, LayerBlockCodec(TINY, BT), prompt + out)
        prompt = prompt + out + [int(t) for t in rng.integers(0, TINY.vocab_size, 7)]
    assert memory_store.pool.num_free == memory_store.pool.num_slots
