"""The SGLang backend's extra-config parsing, namespaces and page keys (no SGLang needed for
these, but they live with the other SGLang tests and run in its venv)."""
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from dualkv.errors import InvalidArgument
from dualkv.integrations.sglang_config import (SGLangBackendConfig, page_keys, rank_namespace)


def test_extra_config_values_are_converted_and_checked():
    cfg = SGLangBackendConfig.from_extra_config(
        {"backend_name": "dualkv", "interface_v1": 1, "root": "/x", "queue_depth": "8",
         "fsync": "true", "direct_io": 0, "timeout_s": "2.5", "capacity_bytes": 1 << 30})
    assert (cfg.queue_depth, cfg.fsync, cfg.direct_io, cfg.timeout_s) == (8, True, False, 2.5)
    assert cfg.capacity_bytes == 1 << 30
    with pytest.raises(InvalidArgument, match="root"):
        SGLangBackendConfig.from_extra_config({})
    with pytest.raises(InvalidArgument, match="queue_depth"):
        SGLangBackendConfig.from_extra_config({"root": "/x", "queue_depth": "many"})
    with pytest.raises(InvalidArgument, match="io_backend"):
        SGLangBackendConfig.from_extra_config({"root": "/x", "io_backend": "aio"})
    with pytest.raises(InvalidArgument, match="unknown dualkv extra config keys"):
        SGLangBackendConfig.from_extra_config({"root": "/x", "queue-depth": 8})


def shard(**kw):
    base = dict(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                is_mla_model=False)
    return SimpleNamespace(**dict(base, **kw))


def test_rank_namespaces_follow_hicachefile():
    assert rank_namespace(shard(tp_rank=1, tp_size=4)) == "tp1of4"
    assert rank_namespace(shard(tp_rank=1, tp_size=4, is_mla_model=True)) == "all"
    assert rank_namespace(shard(pp_rank=1, pp_size=2)) == "tp0of1_pp1of2"
    assert rank_namespace(shard(attn_cp_rank=2, attn_cp_size=4, is_mla_model=True)) == "cp2of4"


def test_page_keys_are_sglang_digests_as_bytes():
    digest = hashlib.sha256(b"page").hexdigest()
    keys = page_keys([digest, digest.upper()])
    assert keys.shape == (2, 32) and keys.dtype == np.uint8
    assert bytes(keys[0]) == bytes.fromhex(digest) == bytes(keys[1])
    other = page_keys(["not-a-digest"])
    assert bytes(other[0]) == hashlib.sha256(b"not-a-digest").digest()
    with pytest.raises(InvalidArgument):
        page_keys([12345])
