"""The Layer Block byte layout: K then V of all KV heads per token, zero-copy views."""
import numpy as np
import pytest
import torch

from conftest import TINY
from dualkv.engine import LayerBlockCodec
from dualkv.testing.memory_pool import MemoryPool
from dualkv.errors import InvalidArgument


def test_byte_offsets_follow_the_documented_layout():
    codec = LayerBlockCodec(TINY, block_tokens=16)
    raw = np.zeros(codec.layer_block_bytes, np.uint8)
    kv = torch.randn(16, 2, TINY.num_kv_heads, TINY.head_dim)
    codec.scatter(kv, [raw])
    floats = raw.view(np.float32)
    heads, dim = TINY.num_kv_heads, TINY.head_dim
    for token, kind, head, d in [(0, 0, 0, 0), (5, 1, 1, 7), (15, 0, 1, 15), (9, 1, 0, 3)]:
        assert floats[((token * 2 + kind) * heads + head) * dim + d] == kv[token, kind, head, d]


def test_tensor_view_is_zero_copy():
    codec = LayerBlockCodec(TINY, block_tokens=16)
    raw = np.zeros(codec.layer_block_bytes, np.uint8)
    codec.tensor(raw)[3, 1, 0, 2] = 7.5
    assert raw.view(np.float32)[((3 * 2 + 1) * 2 + 0) * 16 + 2] == 7.5


@pytest.mark.parametrize("first,count", [(0, 40), (16, 30), (5, 3), (20, 12)])
def test_scatter_then_gather_round_trips_across_blocks(first, count):
    codec = LayerBlockCodec(TINY, block_tokens=16)
    pool = MemoryPool(TINY.layout(16), 8)
    slots = pool.alloc(4)[::-1]  # non-contiguous, reversed slots
    views = [pool.layer_view(int(s), 2) for s in slots]
    kv = torch.randn(count, 2, TINY.num_kv_heads, TINY.head_dim)
    codec.scatter(kv, views, first)
    out = torch.empty(first + count, 2, TINY.num_kv_heads, TINY.head_dim)
    codec.gather(views, out, first + count)
    assert torch.equal(out[first:], kv)
    assert not pool.view(int(slots[0]))[:pool.layout.layer_offset(2)].any()  # other layers untouched


def test_bf16_layer_blocks():
    cfg = TINY.__class__(**{**TINY.__dict__, "dtype": "bf16"})
    codec = LayerBlockCodec(cfg, block_tokens=16)
    assert codec.layer_block_bytes == 16 * 2 * cfg.num_kv_heads * cfg.head_dim * 2
    kv = torch.randn(16, 2, cfg.num_kv_heads, cfg.head_dim).to(torch.bfloat16)
    raw = np.zeros(codec.layer_block_bytes, np.uint8)
    codec.scatter(kv, [raw])
    assert torch.equal(codec.tensor(raw), kv)


def test_wrong_shapes_raise():
    codec = LayerBlockCodec(TINY, block_tokens=16)
    with pytest.raises(InvalidArgument):
        codec.tensor(np.zeros(10, np.uint8))
    with pytest.raises(InvalidArgument):
        codec.scatter(torch.zeros(4, 2, 3, 16), [np.zeros(codec.layer_block_bytes, np.uint8)])
    with pytest.raises(InvalidArgument):  # 20 tokens do not fit one block
        codec.scatter(torch.zeros(20, 2, 2, 16), [np.zeros(codec.layer_block_bytes, np.uint8)])
