"""StoreConfig -> the native BlockIO's options: one function builds them, and the native side
refuses bad options by name."""
import dataclasses

import pytest

from dualkv._native import C
from dualkv.errors import InvalidArgument
from dualkv.layout import KVLayout
from dualkv.store import StoreConfig
from dualkv.store.config import block_io_options, open_namespace
from dualkv.store.pool import HostPool


def test_options_carry_the_config(block_root):
    cfg = StoreConfig(block_root, KVLayout(3, 128, 16), model_id="m", queue_depth=64,
                      io_backend="posix", direct_io=False, fsync=True, num_write_threads=3,
                      key_bytes=20)
    options = block_io_options(cfg)
    assert (options.num_layers, options.bytes_per_token_layer, options.block_tokens) == (3, 128, 16)
    assert options.key_bytes == 20 and options.fingerprint == cfg.namespace_bytes
    assert options.dir == cfg.directory and options.backend == "posix"
    assert (options.queue_depth, options.num_read_threads, options.num_write_threads) == (64, 16, 3)
    assert options.direct_io is False and options.fsync is True
    assert "num_layers=3" in repr(options)


def test_bad_options_are_refused_by_name(block_root):
    with pytest.raises(InvalidArgument, match="fingerprint must be 16 bytes"):
        C.BlockIOOptions(fingerprint=b"short")
    with pytest.raises(InvalidArgument, match="no field 'queue'"):
        C.BlockIOOptions(queue=4)
    with pytest.raises(InvalidArgument, match="queue_depth cannot be 'deep'"):
        C.BlockIOOptions(queue_depth="deep")
    with pytest.raises(TypeError):
        C.BlockIOOptions(1, 2)  # fields are named, never positional


@pytest.mark.parametrize("change, message", [
    (dict(backend="spdk"), "backend must be 'auto', 'io_uring' or 'posix'"),
    (dict(queue_depth=0), "queue_depth must be in 1..4096"),
    (dict(num_layers=0), "num_layers, bytes_per_token_layer and block_tokens must be > 0"),
    (dict(dir=""), "dir is empty"),
])
def test_native_side_checks_what_the_config_did_not(block_root, change, message):
    cfg = StoreConfig(block_root, KVLayout(2, 64, 16), pool_slots=1, cuda="off")
    options = block_io_options(cfg)
    for name, value in change.items():
        setattr(options, name, value)
    pool = HostPool(cfg.layout, 1, huge_pages=False, cuda="off")
    with pytest.raises(InvalidArgument, match=message):
        C.BlockIO(options, pool.native)


def test_a_scan_opens_through_the_same_options(block_root):
    cfg = StoreConfig(block_root, KVLayout(2, 64, 16), pool_slots=1, cuda="off")
    open_namespace(cfg)
    scan_cfg = dataclasses.replace(cfg, io_backend="posix", queue_depth=1)
    pool = HostPool(cfg.layout, 1, huge_pages=False, cuda="off")
    io = C.BlockIO(block_io_options(scan_cfg), pool.native)
    assert io.backend == "posix" and len(io.scan()["keys"]) == 0
