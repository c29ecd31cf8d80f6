"""A PE process and two DE processes, joined by UCX and ZeroMQ, sharing a block directory,
with dualkv.sched placing every request: several multi-turn conversations, run as batches,
give the tokens of a full recompute, and the blocks the DEs wrote back hold the recomputed KV
byte for byte."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dualkv.transfer")

from dualkv.engine import LayerBlockCodec, Model, ModelConfig  # noqa: E402

CFG = ModelConfig(vocab_size=256, hidden=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, ffn=128)
BT = 16


def reference(model, prompt, num_tokens):
    seq = list(prompt)
    for _ in range(num_tokens):
        seq.append(int(model.forward(torch.tensor(seq))[0].argmax()))
    return seq[len(prompt):]


def check_blocks(block_root, model, seq):
    from dualkv.store import BlockStore, StoreConfig

    codec = LayerBlockCodec(CFG, BT)
    _, ref_kv = model.forward(torch.tensor(seq))
    with BlockStore(StoreConfig(block_root, CFG.layout(BT), pool_slots=4, cuda="off")) as store:
        keys = store.chain_keys(np.asarray(seq, np.int32))
        assert store.match(keys) == (len(seq) - 1) // BT  # rebuilt from the DEs' block files
        slot = store.pool.alloc(1)
        for b in range(store.match(keys)):
            assert store.wait(store.load(keys[b:b + 1], slot), 10).all()
            for layer in range(CFG.num_layers):
                got = codec.tensor(store.pool.layer_view(int(slot[0]), layer))
                assert torch.equal(got, ref_kv[layer][b * BT:(b + 1) * BT]), (b, layer)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["dualpath", "basic"])
def test_scheduled_conversations_across_processes(block_root, policy):
    from dualkv.cluster.local import LocalCluster

    model = Model.from_seed(CFG, seed=3, batch_invariant=True)
    rng = np.random.default_rng(2)
    prompts = [[int(t) for t in rng.integers(0, CFG.vocab_size, n)] for n in (40, 70, 25)]
    sides, des = set(), set()
    with LocalCluster(CFG, block_root, num_de=2, policy=policy, seed=3, block_tokens=BT) as cluster:
        for turn in range(3):
            results = cluster.run_batch([(p, 8) for p in prompts])
            for i, (prompt, result) in enumerate(zip(prompts, results)):
                assert result.generated == reference(model, prompt, 8), (turn, i, result)
                assert result.num_cached_blocks == result.num_matched_blocks
                assert (result.num_cached_blocks > 0) == (turn > 0)
                sides.add(result.read_side)
                des.add(result.de)
                prompts[i] = prompt + result.generated + [int(t) for t in rng.integers(0, 256, 9)]
    assert des == {0, 1}
    assert sides == ({"pe", "de"} if policy == "dualpath" else {"pe"})
    for prompt in prompts:
        check_blocks(block_root, model, prompt[:-9])


@pytest.mark.slow
def test_killed_decode_process_is_replaced_and_its_requests_rerun(block_root):
    """SIGKILL of a DE process between turns: the next batch notices it at once, a fresh DE
    takes its place, the failed requests are placed again and recomputed from the store, and
    every result still equals the recompute."""
    import signal

    from dualkv.cluster.local import LocalCluster

    model = Model.from_seed(CFG, seed=3, batch_invariant=True)
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, CFG.vocab_size, n)] for n in (40, 50, 30)]
    with LocalCluster(CFG, block_root, num_de=2, seed=3, block_tokens=BT) as cluster:
        for turn in range(2):
            if turn == 1:
                cluster.procs["de1"].send_signal(signal.SIGKILL)
                cluster.procs["de1"].wait()
            results = cluster.run_batch([(p, 6) for p in prompts])
            for i, (prompt, result) in enumerate(zip(prompts, results)):
                assert result.generated == reference(model, prompt, 6), (turn, i)
                prompts[i] = prompt + result.generated + [int(t) for t in rng.integers(0, 256, 5)]
        assert cluster.num_restarts == 1
        assert cluster.procs["de1"].poll() is None


def test_kv_between_nodes_pays_the_compute_nic(block_root):
    """Each node's TrafficManager carries its KV to other nodes: with the compute NIC capped,
    a turn's first token comes no sooner than its prompt KV could cross the PE's compute NIC
    (PE -> DE on every read path), and with it uncapped the same turn is much faster."""
    from dualkv.cluster.engine_proc import NIC_BURST_BYTES
    from dualkv.cluster.local import LocalCluster

    rng = np.random.default_rng(5)
    prompt = [int(t) for t in rng.integers(0, CFG.vocab_size, 600)]
    kv_bytes = len(prompt) * CFG.layout(BT).bytes_per_token_layer * CFG.num_layers  # 307 KB
    cnic_mbps = 0.2  # about 1.5 s for it
    ttft = {}
    for cap in (cnic_mbps, 0.0):
        with LocalCluster(CFG, block_root, num_de=1, seed=3, block_tokens=BT,
                          batch_invariant=False, cnic_mbps=cap) as cluster:
            ttft[cap] = cluster.run_turn(prompt, 2).ttft_s
    # a burst goes through free, and the last chunk (one burst) is granted when it starts
    floor = (kv_bytes - 2 * NIC_BURST_BYTES) / (cnic_mbps * 1e6)
    assert ttft[cnic_mbps] >= floor > 0.8, ttft
    assert ttft[0.0] < ttft[cnic_mbps] / 2, ttft
