"""PrefixIndex against a plain Python model under hypothesis: chains, match, pins, removal,
eviction with a capacity. Pinned blocks are never evicted and no block is ever orphaned."""
import hashlib

import numpy as np
from hypothesis import settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from dualkv.store.index import PrefixIndex


class Model:
    """The index's contract in dictionaries: a block is (parent, bytes, pins, last_used)."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.blocks = {}
        self.clock = 0

    def touch(self, chain_keys):
        # Deepest first, then up to the root, so ancestors are more recent than descendants.
        path = list(reversed(chain_keys))
        parent = self.blocks[chain_keys[0]]["parent"] if chain_keys else None
        while parent is not None:
            path.append(parent)
            parent = self.blocks[parent]["parent"]
        for key in path:
            self.clock += 1
            self.blocks[key]["used"] = self.clock

    def insert(self, keys, parent, sizes):
        for key, size in zip(keys, sizes):
            if key not in self.blocks:
                self.blocks[key] = dict(parent=parent, bytes=size, pins=0, used=0)
            parent = key
        self.touch(keys)
        return self.evict(self.total_bytes() - self.capacity) if self.capacity else []

    def match(self, keys, touch, pin):
        matched = []
        for key in keys:
            block = self.blocks.get(key)
            if block is None or (matched and block["parent"] != matched[-1]):
                break
            matched.append(key)
        if pin:
            for key in matched:
                self.blocks[key]["pins"] += 1
        if touch:
            self.touch(matched)
        return len(matched)

    def children(self, key):
        return [k for k, b in self.blocks.items() if b["parent"] == key]

    def evict(self, num_bytes):
        evicted, freed = [], 0
        while freed < num_bytes:
            leaves = [k for k, b in self.blocks.items() if b["pins"] == 0 and not self.children(k)]
            if not leaves:
                break
            victim = min(leaves, key=lambda k: self.blocks[k]["used"])
            freed += self.blocks.pop(victim)["bytes"]
            evicted.append(victim)
        return evicted

    def remove(self, key):
        if key not in self.blocks:
            return set()
        gone = {key}
        for child in self.children(key):
            gone |= self.remove(child)
        self.blocks.pop(key, None)
        return gone

    def total_bytes(self):
        return sum(b["bytes"] for b in self.blocks.values())


def as_array(keys):
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)


def as_list(array):
    return [bytes(k) for k in array]


class IndexMachine(RuleBasedStateMachine):
    @initialize(capacity=st.sampled_from([0, 0, 200, 600]))
    def start(self, capacity):
        self.index = PrefixIndex(capacity_bytes=capacity)
        self.model = Model(capacity)
        self.counter = 0
        self.seen = []  # every key ever made, present or not

    def fresh_chain(self, parent, n):
        keys, previous = [], parent or b""
        for _ in range(n):
            self.counter += 1
            previous = hashlib.sha256(previous + self.counter.to_bytes(8, "little")).digest()
            keys.append(previous)
        self.seen += keys
        return keys

    def path_to(self, key):
        path = []
        while key is not None:
            path.append(key)
            key = self.model.blocks[key]["parent"]
        return path[::-1]

    def pick_present(self, data):
        return data.draw(st.sampled_from(sorted(self.model.blocks))) if self.model.blocks else None

    @rule(data=st.data(), n=st.integers(1, 6), under_present=st.booleans())
    def insert_chain(self, data, n, under_present):
        parent = self.pick_present(data) if under_present else None
        keys = self.fresh_chain(parent, n)
        # Sometimes re-insert part of a held path in front (touch, no change).
        if parent is not None and data.draw(st.booleans()):
            path = self.path_to(parent)
            start = data.draw(st.integers(0, len(path) - 1))
            keys = path[start:] + keys
            parent = path[start - 1] if start else None
        sizes = data.draw(st.lists(st.integers(1, 100), min_size=len(keys), max_size=len(keys)))
        expected = self.model.insert(keys, parent, sizes)
        got = self.index.insert_chain(as_array(keys), parent_key=parent,
                                      block_bytes=np.array(sizes, dtype=np.int64))
        assert as_list(got) == expected

    @precondition(lambda self: self.seen)
    @rule(data=st.data(), touch=st.booleans(), pin=st.booleans())
    def match(self, data, touch, pin):
        present = self.pick_present(data)
        keys = self.path_to(present) if present is not None else []
        if data.draw(st.booleans()):
            keys = keys + data.draw(st.lists(st.sampled_from(self.seen), max_size=3))
        expected = self.model.match(keys, touch, pin)
        assert self.index.match(as_array(keys), touch=touch, pin=pin) == expected

    @rule(data=st.data())
    def pin_or_unpin(self, data):
        key = self.pick_present(data)
        if key is None:
            return
        if self.model.blocks[key]["pins"] and data.draw(st.booleans()):
            self.model.blocks[key]["pins"] -= 1
            self.index.unpin(as_array([key]))
        else:
            self.model.blocks[key]["pins"] += 1
            assert self.index.pin(as_array([key])).tolist() == [True]

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def remove(self, data):
        key = data.draw(st.sampled_from(self.seen))
        expected = self.model.remove(key)
        got = as_list(self.index.remove(as_array([key])))
        assert set(got) == expected and len(got) == len(expected)
        assert not got or got[0] == key

    @rule(num_bytes=st.integers(0, 400))
    def evict(self, num_bytes):
        assert as_list(self.index.evict(num_bytes)) == self.model.evict(num_bytes)

    @rule()
    def compact(self):
        """Moving every node must change nothing the model can see (content, pins, recency:
        later evictions return keys in exactly the model's order)."""
        self.index.compact()

    @invariant()
    def agrees_with_model(self):
        blocks = self.model.blocks
        s = self.index.stats()
        assert s["num_blocks"] == len(blocks)
        assert s["bytes"] == self.model.total_bytes()
        assert s["pinned"] == sum(1 for b in blocks.values() if b["pins"])
        assert s["orphans"] == 0
        assert all(b["parent"] is None or b["parent"] in blocks for b in blocks.values())
        if self.seen:
            expected = [k in blocks for k in self.seen]
            assert self.index.contains(as_array(self.seen)).tolist() == expected


TestIndexAgainstModel = IndexMachine.TestCase
TestIndexAgainstModel.settings = settings(max_examples=150, stateful_step_count=40,
                                          deadline=None)
