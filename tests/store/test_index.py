"""PrefixIndex: chains, match, pins, removal, eviction, rebuild from edges, bad input."""
import hashlib
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dualkv.errors import InvalidArgument
from dualkv.store.index import PrefixIndex


def chain(n, seed=b"", prior=b""):
    """n chained 32-byte keys, like block keys of a prompt (distinct per seed)."""
    out, previous = [], prior
    for i in range(n):
        previous = hashlib.sha256(previous + seed + i.to_bytes(4, "little")).digest()
        out.append(previous)
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(n, 32)


def as_set(keys):
    return {bytes(k) for k in keys}


def test_insert_and_match_prefixes():
    index = PrefixIndex()
    keys = chain(10)
    assert index.insert_chain(keys, block_bytes=100).shape == (0, 32)
    assert index.match(keys) == 10
    assert index.match(keys[:4]) == 4
    assert index.match(chain(10, b"other")) == 0
    assert index.match(np.concatenate([keys[:6], chain(3, b"x")])) == 6
    found = index.contains(np.concatenate([keys[3:5], chain(1, b"y")]))
    assert found.tolist() == [True, True, False]
    s = index.stats()
    assert (s["num_blocks"], s["bytes"], len(index)) == (10, 1000, 10)
    assert (s["hits"], s["misses"]) == (10 + 4 + 0 + 6, 0 + 0 + 10 + 3)


def test_match_checks_parent_links():
    index = PrefixIndex()
    a, b = chain(3, b"a"), chain(3, b"b")
    index.insert_chain(a)
    index.insert_chain(b)
    # Both keys are held, but b[1] hangs under b[0], not under a[0].
    assert index.match(np.stack([a[0], b[1]])) == 1
    # A chain under a parent: its first key can start a match on its own.
    tail = chain(4, b"t", prior=bytes(a[2]))
    index.insert_chain(tail, parent_key=bytes(a[2]))
    assert index.match(np.concatenate([a, tail])) == 7
    assert index.match(tail[1:]) == 3


def test_shared_prefix_branches():
    index = PrefixIndex()
    trunk = chain(4, b"trunk")
    left, right = chain(3, b"l"), chain(3, b"r")
    index.insert_chain(np.concatenate([trunk, left]))
    index.insert_chain(right, parent_key=trunk[-1])
    assert index.match(np.concatenate([trunk, right])) == 7
    assert index.match(np.concatenate([trunk, left])) == 7
    assert index.stats()["num_blocks"] == 10


def test_remove_takes_descendants():
    index = PrefixIndex()
    trunk, left, right = chain(4, b"t"), chain(3, b"l"), chain(2, b"r")
    index.insert_chain(np.concatenate([trunk, left]))
    index.insert_chain(right, parent_key=trunk[1])
    removed = index.remove(trunk[2:3])
    assert bytes(removed[0]) == bytes(trunk[2])
    assert as_set(removed) == as_set(trunk[2:]) | as_set(left)
    assert index.match(np.concatenate([trunk, left])) == 2
    assert index.match(np.concatenate([trunk[:2], right])) == 4
    assert index.remove(trunk[2:3]).shape == (0, 32)  # already gone
    assert index.stats()["removed"] == 5
    assert index.stats()["orphans"] == 0


def test_evict_takes_lru_leaves_and_spares_pins():
    index = PrefixIndex()
    old, new = chain(3, b"old"), chain(3, b"new")
    index.insert_chain(old, block_bytes=10)
    index.insert_chain(new, block_bytes=10)
    evicted = index.evict(10)
    assert [bytes(k) for k in evicted] == [bytes(old[2])]  # the oldest leaf, not its parents
    index.match(old[:2])  # old is now the most recent
    assert [bytes(k) for k in index.evict(20)] == [bytes(new[2]), bytes(new[1])]
    assert index.pin(old[1:2]).tolist() == [True]
    evicted = index.evict(1000)
    assert as_set(evicted) == {bytes(new[0])}  # old[1] pinned, so old[0] is not a leaf
    assert index.match(old) == 2
    index.unpin(old[1:2])
    assert as_set(index.evict(1000)) == as_set(old[:2])
    s = index.stats()
    assert (s["num_blocks"], s["bytes"], s["evictions"], s["evicted_bytes"]) == (0, 0, 6, 60)


def test_capacity_evicts_on_insert():
    index = PrefixIndex(capacity_bytes=50)
    first, second = chain(4, b"1"), chain(3, b"2")
    assert index.insert_chain(first, block_bytes=10).shape == (0, 32)
    evicted = index.insert_chain(second, block_bytes=10)
    assert [bytes(k) for k in evicted] == [bytes(first[3]), bytes(first[2])]
    assert index.stats()["bytes"] == 50
    assert index.match(second) == 3 and index.match(first) == 2


def test_match_can_pin_atomically():
    index = PrefixIndex()
    keys = chain(5)
    index.insert_chain(keys, block_bytes=1)
    assert index.match(np.concatenate([keys[:3], chain(2, b"z")]), pin=True) == 3
    assert index.stats()["pinned"] == 3
    assert as_set(index.evict(100)) == as_set(keys[3:])
    index.unpin(keys[:3])
    assert index.stats()["pinned"] == 0


def test_unpin_errors_change_nothing():
    index = PrefixIndex()
    keys = chain(3)
    index.insert_chain(keys)
    index.pin(keys[:1])
    with pytest.raises(InvalidArgument):
        index.unpin(np.stack([keys[0], keys[1]]))  # keys[1] is not pinned
    assert index.stats()["pinned"] == 1
    index.unpin(np.concatenate([keys[:1], chain(1, b"absent")]))  # absent keys are skipped
    assert index.stats()["pinned"] == 0
    assert index.pin(chain(1, b"absent")).tolist() == [False]


def test_insert_edges_links_children_seen_before_parents():
    rng = np.random.default_rng(0)
    trunk, left, right = chain(20, b"t"), chain(15, b"l"), chain(10, b"r")
    edges = [(trunk[i], trunk[i - 1] if i else None) for i in range(20)]
    edges += [(left[i], left[i - 1] if i else trunk[-1]) for i in range(15)]
    edges += [(right[i], right[i - 1] if i else trunk[4]) for i in range(10)]
    order = rng.permutation(len(edges))
    keys = np.stack([edges[i][0] for i in order])
    no_parent = np.zeros(32, np.uint8)
    parents = np.stack([edges[i][1] if edges[i][1] is not None else no_parent for i in order])
    has_parent = np.array([edges[i][1] is not None for i in order])
    index = PrefixIndex()
    index.insert_edges(keys, parents, has_parent, block_bytes=1)
    assert index.stats()["orphans"] == 0 and index.stats()["num_blocks"] == 45
    assert index.match(np.concatenate([trunk, left]), touch=False) == 35
    assert index.match(np.concatenate([trunk[:5], right]), touch=False) == 15
    # Eviction still takes leaves only, whatever order the rebuild saw.
    evicted = index.evict(45)
    assert len(evicted) == 45 and index.stats()["num_blocks"] == 0


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_insert_edges_in_any_order_and_batches(data):
    n = data.draw(st.integers(1, 40))
    parent_of = [None] + [data.draw(st.none() | st.integers(0, i - 1)) for i in range(1, n)]
    keys = []
    for i, p in enumerate(parent_of):
        keys.append(hashlib.sha256((keys[p] if p is not None else b"") + bytes([i])).digest())
    order = data.draw(st.permutations(range(n)))
    cuts = sorted(data.draw(st.sets(st.integers(1, n), max_size=4)) | {n})
    index, start = PrefixIndex(), 0
    for end in cuts:
        batch = order[start:end]
        parents = [keys[parent_of[i]] if parent_of[i] is not None else bytes(32) for i in batch]
        has_parent = np.array([parent_of[i] is not None for i in batch])
        index.insert_edges([keys[i] for i in batch], parents, has_parent, block_bytes=1)
        start = end
    assert index.stats()["orphans"] == 0 and len(index) == n
    for i in range(n):
        path = [i]
        while parent_of[path[-1]] is not None:
            path.append(parent_of[path[-1]])
        assert index.match([keys[j] for j in reversed(path)], touch=False) == len(path)
    present = set(range(n))
    while present:  # one block at a time: always a leaf, never an orphan
        (evicted,) = index.evict(1)
        i = keys.index(bytes(evicted))
        assert not any(parent_of[j] == i for j in present if j != i)
        present.remove(i)


def test_missing_parents_leave_orphans_until_dropped():
    index = PrefixIndex()
    lost = chain(3, b"lost")
    under = chain(4, b"u", prior=bytes(lost[2]))
    index.insert_chain(under, parent_key=lost[2])
    assert index.stats()["orphans"] == 1
    assert index.match(under) == 4
    index.insert_chain(lost)  # the parent shows up: the chain is linked again
    assert index.stats()["orphans"] == 0
    assert index.match(np.concatenate([lost, under])) == 7
    index.remove(lost[:1])
    index.insert_edges(under, np.stack([lost[2]] + list(under[:-1])), np.ones(4, bool))
    assert index.stats()["orphans"] == 1
    assert as_set(index.drop_orphans()) == as_set(under)
    assert index.stats()["num_blocks"] == 0 and index.stats()["orphans"] == 0


def test_compact_keeps_content_pins_orphans_and_recency():
    """compact() moves every node (freed ids included, placeholders and orphans too): every
    match, pin, orphan and the LRU order after it are those of an index never compacted."""
    def build():
        index = PrefixIndex()
        trunk, branch, gone = chain(30, b"t"), chain(10, b"b", prior=b"x"), chain(8, b"g")
        index.insert_chain(gone)
        index.insert_chain(trunk[:10])
        index.insert_chain(branch, parent_key=trunk[4])
        index.insert_chain(trunk[10:], parent_key=trunk[9])
        index.remove(gone[3:4])  # frees ids in the middle: the free list is dropped
        lost = chain(2, b"lost")
        index.insert_chain(chain(5, b"o", prior=bytes(lost[1])), parent_key=lost[1])  # orphans
        index.pin(trunk[:3])
        index.match(branch[:1], touch=True)
        return index, trunk, branch, gone, lost

    plain, trunk, branch, gone, lost = build()
    packed = build()[0]
    packed.compact()
    packed.compact()  # twice: already packed must be a no-op
    orphan_chain = chain(5, b"o", prior=bytes(lost[1]))
    for probe in (trunk, np.concatenate([trunk[:5], branch]), gone, orphan_chain, lost):
        assert packed.match(probe, touch=False) == plain.match(probe, touch=False)
    for name in ("num_blocks", "bytes", "pinned", "orphans", "hits", "misses"):
        assert packed.stats()[name] == plain.stats()[name], name
    assert as_list_of(packed.evict(10**6)) == as_list_of(plain.evict(10**6))  # same LRU order
    assert len(packed) == len(plain) == 3  # the pinned blocks stay
    packed.insert_chain(lost)  # placeholders still link their orphans once the parent shows up
    assert packed.stats()["orphans"] == 0
    assert packed.match(np.concatenate([lost, orphan_chain]), touch=False) == 2  # orphans evicted


def as_list_of(keys):
    return [bytes(k) for k in keys]


def test_compacted_rebuild_matches_like_whole_chains():
    """Edges in random order, then compact(): chains are found block for block as before."""
    rng = np.random.default_rng(5)
    chains = [chain(64, bytes([c])) for c in range(20)]
    keys = np.concatenate(chains)
    order = rng.permutation(len(keys))
    has_parent = (order % 64 != 0).astype(np.uint8)
    index = PrefixIndex()
    index.insert_edges(keys[order], keys[order - 1], has_parent, block_bytes=1)
    index.compact()
    for c, other in zip(chains, chains[1:] + chains[:1]):
        assert index.match(c) == 64
        assert index.match(np.concatenate([c[:10], other[10:12]])) == 10
    assert index.stats()["orphans"] == 0


def test_chains_grown_by_turns_keep_ids_reserved_and_capped():
    """A chain's newest block keeps ids behind it for the chain's next blocks (so a chain
    grown a few blocks per turn, between other chains' turns, stays in runs); the reserve is
    used by the next turns, dropped by compact(), and capped at 1/8 of the blocks."""
    index = PrefixIndex()
    a, b = chain(40, b"a"), chain(40, b"b")
    index.insert_chain(a[:4])
    assert index.stats()["reserved_ids"] == 32
    index.insert_chain(b[:4])  # b's reserve too: the cap is at least 128 ids
    assert index.stats()["reserved_ids"] == 64
    for first in range(4, 36, 4):  # turns of both chains, interleaved, into their reserves
        index.insert_chain(a[first:first + 4], parent_key=a[first - 1])
        index.insert_chain(b[first:first + 4], parent_key=b[first - 1])
    # both reserves used up; b's last block is the newest id, so b kept 32 more
    assert index.stats()["reserved_ids"] == 32
    index.insert_chain(a[36:], parent_key=a[35])  # a fresh run for a, with a fresh reserve
    assert index.stats()["reserved_ids"] == 64
    assert index.match(a) == 40 and index.match(b[:36]) == 36 and len(index) == 76
    index.compact()
    assert index.stats()["reserved_ids"] == 0 and index.match(a) == 40
    many = PrefixIndex()
    for c in range(200):  # 200 one-block chains: reserves stay within max(128, blocks / 8)
        many.insert_chain(chain(1, b"m%d" % c))
    assert many.stats()["reserved_ids"] <= 128 and len(many) == 200
    assert all(many.match(chain(1, b"m%d" % c)) == 1 for c in range(200))


def test_lookups_are_exact_over_runs_of_every_length():
    """Chains grown by turns of 1 to 40 blocks, interleaved with 29 other chains, lie in runs
    of every length (long ones in their reserves, short ones scattered), so match() and
    contains() take every path of the walk: ids followed, a jump, the pipelined stretches
    after short runs (64, 128, 256 keys) and back. A wrong key anywhere ends the match there
    and is absent in contains(), whatever path it fell on."""
    rng = np.random.default_rng(11)
    chains = [chain(600, b"r%d" % c) for c in range(30)]
    grown = [0] * len(chains)
    index = PrefixIndex()
    while min(grown) < 600:
        for c in rng.permutation(len(chains)):
            first = grown[c]
            turn = min(int(rng.choice([1, 2, 3, 9, 40])), 600 - first)
            if turn == 0:
                continue
            parent = chains[c][first - 1] if first else None
            index.insert_chain(chains[c][first:first + turn], parent_key=parent)
            grown[c] += turn
    stranger = chain(1, b"not stored")[0]
    for c in chains[:8]:
        assert index.match(c, touch=False) == 600
        for wrong in [1, 7, 63, 64, 65, 190, 191, 300, 450, 599]:
            probe = c.copy()
            probe[wrong] = stranger
            assert index.match(probe, touch=False) == wrong
            expected = np.ones(600, dtype=bool)
            expected[wrong] = False
            assert np.array_equal(index.contains(probe), expected)
        spliced = np.concatenate([c[:250], chains[-1][250:]])  # held keys, wrong parent
        assert index.match(spliced, touch=False) == 250
        assert index.contains(spliced).all()


def test_keys_in_other_forms_and_lengths():
    index = PrefixIndex(key_bytes=16)
    keys = chain(4)[:, :16].copy()
    index.insert_chain([bytes(k) for k in keys], block_bytes=np.arange(4))
    assert index.match([k.hex() for k in map(bytes, keys)]) == 4
    assert index.stats()["bytes"] == 6


@pytest.mark.parametrize("key_bytes", [16, 20, 32, 33, 63, 64])
def test_every_key_length_matches_exactly(key_bytes):
    """Whole-word and tail-byte keys take different hash and compare paths: keys that differ
    only in their last byte, or only in one middle word, must stay distinct blocks."""
    rng = np.random.default_rng(key_bytes)
    base = rng.integers(0, 256, (300, key_bytes), dtype=np.uint8)
    last_byte = base.copy()
    last_byte[:, -1] ^= 1
    middle = base.copy()
    middle[:, key_bytes // 2] ^= 0x80
    index = PrefixIndex(key_bytes=key_bytes)
    index.insert_chain(base, block_bytes=1)
    assert index.match(base) == 300
    assert index.match(last_byte) == 0 and index.match(middle) == 0
    index.insert_chain(last_byte, block_bytes=1)
    assert index.stats()["num_blocks"] == 600
    assert index.contains(middle).sum() == 0
    assert index.match(np.concatenate([last_byte[:100], base[100:]])) == 100


@pytest.mark.parametrize("call", [
    lambda ix: ix.match(np.zeros((2, 31), np.uint8)),
    lambda ix: ix.match(np.zeros((2, 32), np.int64)),
    lambda ix: ix.match([b"short"]),
    lambda ix: ix.insert_chain(chain(2), block_bytes=-1),
    lambda ix: ix.insert_chain(chain(2), block_bytes=np.array([1, -1])),
    lambda ix: ix.insert_chain(chain(2), block_bytes=np.array([1, 2, 3])),
    lambda ix: ix.insert_chain(chain(2), block_bytes=np.array([1.5, 2.0])),
    lambda ix: ix.insert_chain(chain(2), parent_key=b"x" * 31),
    lambda ix: ix.insert_edges(chain(2), chain(3), np.ones(2, bool)),
    lambda ix: ix.insert_edges(chain(2), chain(2), np.ones(3, bool)),
    lambda ix: ix.evict(-1),
])
def test_bad_input_raises_invalid_argument(call):
    index = PrefixIndex()
    with pytest.raises(InvalidArgument):
        call(index)
    assert index.stats()["num_blocks"] == 0


@pytest.mark.parametrize("kwargs", [dict(key_bytes=15), dict(key_bytes=65),
                                    dict(capacity_bytes=-1)])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(InvalidArgument):
        PrefixIndex(**kwargs)


def test_threads_share_one_index():
    index = PrefixIndex(capacity_bytes=2000)
    chains = [chain(50, bytes([t])) for t in range(4)]

    def work(keys):
        for _ in range(200):
            index.insert_chain(keys, block_bytes=10)
            matched = index.match(keys, pin=True)  # others' inserts may have evicted some
            index.unpin(keys[:matched])

    threads = [threading.Thread(target=work, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    s = index.stats()
    assert s["num_blocks"] * 10 == s["bytes"] <= 2000
    assert s["orphans"] == 0 and s["pinned"] == 0


def test_one_million_blocks():
    index = PrefixIndex()
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (1_000_000, 32), dtype=np.uint8)
    for start in range(0, len(keys), 1000):  # 1,000 chains of 1,000 blocks
        index.insert_chain(keys[start:start + 1000], block_bytes=4096)
    s = index.stats()
    assert s["num_blocks"] == 1_000_000 and s["bytes"] == 4096 * 1_000_000
    assert s["memory_bytes"] / s["num_blocks"] <= 128
    assert index.match(keys[500_000:501_000]) == 1000
    assert index.match(keys[500_500:501_500]) == 500
    assert len(index.evict(4096 * 10_000)) == 10_000
    assert not index.contains(keys[:10_000]).any()  # the ten oldest chains, whole
    assert index.contains(keys[10_000:]).all()
