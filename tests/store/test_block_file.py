"""Block files on disk: checksums, header fields, damage detection, the directory scan."""
import os

import numpy as np
import pytest

from dualkv._native import C
from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    CRC_TABLE.append(_c)


def crc32c_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("size", [0, 1, 9, 4096, 12287, 12288, 12289, 40001])
def test_crc32c_matches_bitwise_reference(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert C.crc32c(data) == crc32c_reference(data)
    assert C.crc32c(b"123456789") == 0xE3069283  # the published check value


def test_crc32c_continues():
    data = np.random.default_rng(1).integers(0, 256, 50000, dtype=np.uint8).tobytes()
    assert C.crc32c(data[20000:], C.crc32c(data[:20000])) == C.crc32c(data)


LAYOUT = KVLayout(num_layers=3, bytes_per_token_layer=200, block_tokens=8)


def write_block(root, key=b"\x11" * 32, parent=None):
    store = BlockStore(StoreConfig(root, LAYOUT, pool_slots=4, cuda="off"))
    slot = store.pool.alloc(1)
    store.pool.view(slot[0])[:] = np.arange(LAYOUT.full_block_bytes, dtype=np.uint8)
    store.wait(store.store([key], slot, parent=parent))
    return store, slot[0], store.io.path_of(key)


def test_file_layout_and_header_fields(block_root):
    key, parent = bytes(range(32)), b"\x22" * 32
    store, slot, path = write_block(block_root, key, parent)
    data = open(path, "rb").read()
    assert len(data) == LAYOUT.full_block_bytes
    assert path.endswith(f"{key[:1].hex()}/{key[1:2].hex()}/{key.hex()}.blk")
    assert data[:8] == b"DUALKVB1"
    assert data[16:32] == bytes.fromhex(store.namespace)
    assert data[32:64] == key and data[96:128] == parent
    assert int.from_bytes(data[12:16], "little") & 1  # has parent
    for layer in range(LAYOUT.num_layers):
        start = LAYOUT.layer_offset(layer)
        payload = data[start:start + LAYOUT.layer_block_bytes]
        assert payload == store.pool.layer_view(slot, layer).tobytes()
        stored_crc = int.from_bytes(data[192 + 4 * layer:196 + 4 * layer], "little")
        assert stored_crc == crc32c_reference(payload)
    header_crc = int.from_bytes(data[188:192], "little")
    assert header_crc == crc32c_reference(data[:188] + data[192:192 + 4 * LAYOUT.num_layers])


@pytest.mark.parametrize("offset_of", [
    lambda: 3,                                         # magic
    lambda: 40,                                        # key
    lambda: 194,                                       # a layer checksum
    lambda: LAYOUT.layer_offset(1) + 17,               # layer 1 payload
    lambda: LAYOUT.layer_offset(2) + LAYOUT.layer_block_bytes - 1,  # last payload byte
])
def test_flipped_byte_is_a_counted_miss(block_root, offset_of):
    store, slot, path = write_block(block_root)
    with open(path, "r+b") as f:
        f.seek(offset_of())
        byte = f.read(1)
        f.seek(offset_of())
        f.write(bytes([byte[0] ^ 0x40]))
    out = store.pool.alloc(1)
    store.pool.view(out[0])[:] = 0
    ok = store.wait(store.load([b"\x11" * 32], out))
    assert not ok[0]
    assert store.stats()["corrupt"] == 1
    assert store.match([b"\x11" * 32]) == 0  # dropped from the index, never served
    assert not os.path.exists(path)  # and removed, so a later store rewrites it


def test_padding_is_not_checked_but_payload_is(block_root):
    store, slot, path = write_block(block_root)
    pad = LAYOUT.layer_offset(0) + LAYOUT.layer_block_bytes + 5  # inside the 4 KiB padding
    with open(path, "r+b") as f:
        f.seek(pad)
        f.write(b"\xff")
    out = store.pool.alloc(1)
    assert store.wait(store.load([b"\x11" * 32], out))[0]


def test_truncated_file_is_dropped_on_reopen(block_root):
    store, _, path = write_block(block_root)
    store.close()
    os.truncate(path, LAYOUT.full_block_bytes - 4096)
    reopened = BlockStore(StoreConfig(block_root, LAYOUT, pool_slots=4, cuda="off"))
    assert reopened.stats()["dropped_on_open"] == 1
    assert reopened.match([b"\x11" * 32]) == 0
    assert not os.path.exists(path)


def test_file_truncated_under_the_index_is_a_miss(block_root, io_backend):
    store = BlockStore(StoreConfig(block_root, LAYOUT, pool_slots=4, cuda="off",
                                   io_backend=io_backend))
    key = b"\x33" * 32
    slot = store.pool.alloc(1)
    store.wait(store.store([key], slot))
    os.truncate(store.io.path_of(key), LAYOUT.layer_offset(2) + 100)  # ends inside layer 2
    assert store.wait(store.load([key], slot, layers=(0, 2)))[0]  # what is there still reads
    assert not store.wait(store.load([key], slot))[0]  # a read past the end is a miss
    assert store.stats()["corrupt"] == 1 and store.match([key]) == 0
