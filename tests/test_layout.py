import pytest

from dualkv.layout import PAGE_BYTES, KVLayout


def test_gqa_bytes_per_token_layer():
    layout = KVLayout.gqa(num_layers=32, num_kv_heads=8, head_dim=128, dtype="bf16")
    assert layout.bytes_per_token_layer == 8 * 128 * 2 * 2
    assert layout.layer_block_bytes == 64 * 4096
    assert layout.payload_bytes == 32 * 64 * 4096


def test_mla_bytes_per_token_layer():
    layout = KVLayout.mla(num_layers=61, kv_lora_rank=512, rope_dim=64, dtype="bf16")
    assert layout.bytes_per_token_layer == 576 * 2


@pytest.mark.parametrize("bptl", [1, 100, 4096, 5000, 1152])
def test_every_layer_block_starts_on_a_page(bptl):
    layout = KVLayout(num_layers=7, bytes_per_token_layer=bptl, block_tokens=16)
    for layer in range(layout.num_layers + 1):
        assert layout.layer_offset(layer) % PAGE_BYTES == 0
    assert layout.layer_stride >= layout.layer_block_bytes
    assert layout.layer_stride - layout.layer_block_bytes < PAGE_BYTES
    assert layout.full_block_bytes == layout.layer_offset(layout.num_layers)


def test_header_holds_every_layer_checksum():
    small, big = KVLayout(4, 64), KVLayout(2000, 64)
    assert small.header_bytes == PAGE_BYTES
    assert big.header_bytes >= 192 + 4 * 2000


def test_only_full_blocks_count():
    layout = KVLayout(2, 8, block_tokens=64)
    assert layout.num_blocks(63) == 0
    assert layout.num_blocks(64) == 1
    assert layout.num_blocks(64 * 10 + 5) == 10


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_bad_fields_are_rejected(bad):
    with pytest.raises(ValueError):
        KVLayout(num_layers=bad, bytes_per_token_layer=8)


def test_fingerprint_separates_layouts_and_models():
    a, b = KVLayout(4, 64), KVLayout(4, 128)
    assert len(a.fingerprint()) == 16
    assert a.fingerprint("m") != b.fingerprint("m")
    assert a.fingerprint("m1") != a.fingerprint("m2")
    assert a.fingerprint("m") == KVLayout(4, 64).fingerprint("m")


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dtype"):
        KVLayout.gqa(2, 1, 8, dtype="fp12")
