"""Fixtures of the engine tests: a tiny fp32 model, and a dict-backed store with the
`dualkv.store.BlockStore` batch API (store-api.md) for running engines without the native
store. Store-backed variants of the same tests use the real BlockStore when it is built."""
import hashlib
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dualkv.engine import Model, ModelConfig  # noqa: E402
from dualkv.errors import InvalidArgument  # noqa: E402
from dualkv.testing.memory_pool import MemoryPool  # noqa: E402

torch.set_num_threads(1)  # the test machine's cores are shared; one thread avoids OpenMP stalls

TINY = ModelConfig(vocab_size=256, hidden=64, num_layers=3, num_heads=4, num_kv_heads=2,
                   head_dim=16, ffn=128, dtype="fp32")


class MemoryBlockStore:
    """Full Blocks kept as bytes in a dict keyed by chain key; loads/stores finish at submit."""

    def __init__(self, layout, pool_slots=256):
        self.layout, self.pool = layout, MemoryPool(layout, pool_slots)
        self.blocks, self.parents = {}, {}
        self._handles, self._ids = {}, itertools.count(1)
        self.num_stores = 0
        self.unreadable = set()  # keys whose next load fails (a corrupt block file)

    def chain_keys(self, tokens, prior=None):
        tokens = np.asarray(tokens)
        if tokens.dtype != np.int32:
            raise InvalidArgument("tokens must be int32")
        bt, keys = self.layout.block_tokens, []
        for i in range(len(tokens) // bt):
            digest = hashlib.sha256()
            if prior is not None:
                digest.update(bytes(np.asarray(prior, np.uint8)))
            digest.update(tokens[i * bt:(i + 1) * bt].astype("<i4").tobytes())
            prior = np.frombuffer(digest.digest(), np.uint8)
            keys.append(prior)
        return np.array(keys, np.uint8).reshape(-1, 32)

    def match(self, keys, touch=True):
        return next((i for i, k in enumerate(keys) if bytes(k) not in self.blocks), len(keys))

    def load(self, keys, slots, layers=None):
        ok = []
        for key, slot in zip(keys, slots):
            if bytes(key) in self.unreadable:  # a failed read drops the block, as the store does
                self.blocks.pop(bytes(key), None)
            data = self.blocks.get(bytes(key))
            if data is not None:
                self.pool.view(int(slot))[:] = data
            ok.append(data is not None)
        return self._handle(np.array(ok, bool))

    def store(self, keys, slots, parent=None):
        for key, slot in zip(keys, slots):
            self.blocks[bytes(key)] = self.pool.view(int(slot)).copy()
            self.parents[bytes(key)] = None if parent is None else bytes(np.asarray(parent, np.uint8))
            parent = key
        self.num_stores += len(keys)
        return self._handle(np.ones(len(keys), bool))

    def wait(self, handle, timeout):
        return self._handles[handle]

    def poll(self, handle):
        return True

    def release(self, handle):
        del self._handles[handle]

    def _handle(self, result):
        handle = next(self._ids)
        self._handles[handle] = result
        return handle


@pytest.fixture
def model():
    return Model.from_seed(TINY, seed=7, batch_invariant=True)


@pytest.fixture
def memory_store():
    return MemoryBlockStore(TINY.layout(block_tokens=16), pool_slots=128)


def native_store(root, layout, pool_slots):
    """The real dualkv.store.BlockStore, or a skip where the native module is not built."""
    try:
        from dualkv.store import BlockStore, StoreConfig
    except ImportError as exc:
        pytest.skip(f"native store not built: {exc}")
    return BlockStore(StoreConfig(root, layout, pool_slots=pool_slots, cuda="off"))


@pytest.fixture(params=["memory", "native"])
def make_store(request, tmp_path):
    """make_store(block_tokens, pool_slots) -> a fresh store of the parametrized kind."""
    stores = []

    def make(block_tokens=16, pool_slots=64):
        layout = TINY.layout(block_tokens)
        if request.param == "memory":
            store = MemoryBlockStore(layout, pool_slots)
        else:
            store = native_store(str(tmp_path / f"blocks{len(stores)}"), layout, pool_slots)
        stores.append(store)
        return store
    yield make
    for store in stores:
        if hasattr(store, "close"):
            store.close()


def make_unreadable(store, key):
    """The next load of `key` fails verification, as a corrupt block file would."""
    if isinstance(store, MemoryBlockStore):
        store.unreadable.add(bytes(key))
        return
    with open(store.io.path_of(bytes(key)), "r+b") as f:
        f.seek(store.layout.layer_offset(1) + 3)
        byte = f.read(1)[0]
        f.seek(store.layout.layer_offset(1) + 3)
        f.write(bytes([byte ^ 0x40]))


_REFERENCE = {}


def reference_generate(model, prompt, num_tokens):
    """Greedy tokens by full recompute of the whole sequence for every token (no cache).

    Memoized per (weights, prompt): the same conversation runs under several modes and stores.
    """
    key = (str(model.device), model.batch_invariant, tuple(model.w["lm_head.weight"][0, :8].tolist()),
           tuple(int(t) for t in prompt), num_tokens)
    if key not in _REFERENCE:
        _REFERENCE[key] = _recompute(model, prompt, num_tokens)
    return list(_REFERENCE[key])


def _recompute(model, prompt, num_tokens):
    seq = [int(t) for t in prompt]
    for _ in range(num_tokens):
        logits, _ = model.forward(torch.tensor(seq))
        seq.append(int(logits.argmax()))
    return seq[len(prompt):]


def stored_kv(store, codec, key, layer):
    slot = store.pool.alloc(1)
    try:
        assert store.wait(store.load(key[None], slot), 5.0).all()
        return codec.tensor(store.pool.layer_view(int(slot[0]), layer)).clone()
    finally:
        store.pool.free(slot)


def check_written_back(model, store, codec, seq, exact=True, tol=1e-5):
    """Blocks of prompt + generated whose KV is complete are stored, equal to a recompute;
    the partial last block is not."""
    bt = codec.block_tokens
    num_kv_tokens = len(seq) - 1  # the last generated token has no KV yet
    keys = store.chain_keys(np.asarray(seq, np.int32))
    assert store.match(keys) == num_kv_tokens // bt
    _, ref_kvs = model.forward(torch.tensor(seq))
    for b in range(num_kv_tokens // bt):
        for layer in range(model.num_layers):
            got = stored_kv(store, codec, keys[b], layer)
            want = ref_kvs[layer][b * bt:(b + 1) * bt].cpu()
            if exact:
                assert torch.equal(got, want), (b, layer, (got - want).abs().max())
            else:
                torch.testing.assert_close(got, want, rtol=tol, atol=tol)
