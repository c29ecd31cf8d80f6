"""SGLang's real HiCacheController backup and prefetch threads over dualkv, on real MHA and
MLA host pools in every layout, with interface_v1 on (zero copy) and off (generic pages), and
the HybridCacheController that SGLang's server builds for a plain KV-only model."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sglang")

import torch  # noqa: E402

import dualkv  # noqa: E402

from dualkv.testing.sglang_cpu import make_host_pool  # noqa: E402
from sglang_harness import (ControllerHarness, fill_random, one_rank, page_keys_of,  # noqa: E402
                            read_pages)

PAGE = 16
SRC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(dualkv.__file__)))
LAYOUTS = [("mha", "layer_first"), ("mha", "page_first"), ("mha", "page_first_direct"),
           ("mha", "page_head"), ("mla", "layer_first"), ("mla", "page_first"),
           ("mla", "page_first_direct")]


def extra_config(root, interface_v1=1):
    return {"backend_name": "dualkv", "module_path": "dualkv.integrations.sglang",
            "class_name": "DualKVHiCacheStorage", "interface_v1": interface_v1, "root": root}


def small_pool(kind, layout, num_pages=24):
    # MLA rows of 576 bf16 make 18 KiB Layer Blocks: not 4 KiB multiples, so the bounce path
    # runs there, while the MHA shapes here take O_DIRECT straight into the pool.
    return make_host_pool(kind, layout, num_layers=3, page_size=PAGE, num_pages=num_pages,
                          num_kv_heads=2, head_dim=64)


@pytest.fixture
def harness(block_root, request):
    kind, layout, interface_v1, *hybrid = request.param
    with one_rank():
        h = ControllerHarness(small_pool(kind, layout), kind, "dynamic",
                              extra_config(block_root, interface_v1), hybrid=bool(hybrid))
        yield h
        h.close()


def tokens_of(num_pages, start=1):
    return list(range(start, start + num_pages * PAGE))


def case_id(p):
    return f"{p[0]}-{p[1]}-v1={p[2]}" + ("-hybrid" if len(p) > 3 else "")


@pytest.mark.parametrize("harness", [(k, lay, v1) for k, lay in LAYOUTS for v1 in (1, 0)]
                         + [(k, lay, 1, "hybrid") for k, lay in LAYOUTS],
                         indirect=True, ids=case_id)
def test_backup_then_prefetch_is_bit_exact(harness):
    pool, tokens = harness.pool, tokens_of(5)
    src = pool.alloc(len(tokens))
    expected = fill_random(pool, src, seed=11)
    assert harness.backup(src, tokens) == len(tokens)
    pool.free(src)
    hit, done, dst = harness.prefetch(tokens)
    assert hit == done == len(tokens)
    assert all(torch.equal(a, b) for a, b in zip(read_pages(pool, dst), expected))


@pytest.mark.parametrize("harness", [("mha", "page_first", 1), ("mla", "layer_first", 0),
                                     ("mha", "layer_first", 1, "hybrid")],
                         indirect=True, ids=case_id)
def test_a_partly_stored_prefix_gives_exactly_its_length(harness):
    pool, tokens = harness.pool, tokens_of(6, start=500)
    src = pool.alloc(len(tokens))
    expected = fill_random(pool, src, seed=12)
    stored = 4 * PAGE
    assert harness.backup(src[:stored], tokens[:stored]) == stored
    hit, done, dst = harness.prefetch(tokens)
    assert hit == done == stored
    assert all(torch.equal(a, b) for a, b in zip(read_pages(pool, dst), expected[:4]))


@pytest.mark.parametrize("harness", [("mha", "page_first_direct", 1), ("mla", "page_first", 0)],
                         indirect=True, ids=case_id)
def test_a_flipped_byte_ends_the_prefix_at_that_page(harness):
    pool, tokens = harness.pool, tokens_of(5, start=900)
    src = pool.alloc(len(tokens))
    expected = fill_random(pool, src, seed=13)
    assert harness.backup(src, tokens) == len(tokens)
    backend = harness.backend
    keys = [bytes.fromhex(k) for k in page_keys_of(tokens, PAGE)]
    path = backend.store.io.path_of(keys[2])
    with open(path, "r+b") as f:  # one byte inside the page's first Layer Block
        f.seek(backend.store.layout.layer_offset(0) + 123)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    hit, done, dst = harness.prefetch(tokens)
    assert hit == len(tokens)  # the index still lists it: only the read can tell
    assert done == 2 * PAGE
    assert all(torch.equal(a, b) for a, b in zip(read_pages(pool, dst)[:2], expected[:2]))
    assert backend.get_stats().as_dict()["pages_corrupt"] == 1
    hit, done, _ = harness.prefetch(tokens, rid="again")
    assert hit == done == 2 * PAGE  # dropped from the index, never served


CHILD = r"""
import json, sys
import numpy as np
import torch
from dualkv.testing.sglang_cpu import import_sglang_storage, make_host_pool
import_sglang_storage()
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
args = json.load(open(sys.argv[1]))
pool = make_host_pool(args["kind"], args["layout"], num_layers=3, page_size=args["page"],
                      num_pages=24, num_kv_heads=2, head_dim=64)
cfg = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0,
                           attn_cp_size=1, is_mla_model=args["kind"] == "mla",
                           enable_storage_metrics=False, is_page_first_layout=False,
                           model_name=args["model"], extra_config=args["extra"])
backend = StorageBackendFactory.create_backend("dynamic", cfg, pool)
backend.register_mem_pool_host(pool)
keys = args["keys"]
hit = backend.batch_exists(keys)
dst = pool.alloc(hit * args["page"])
ok = backend.batch_get_v1(keys[:hit], dst)
pages = [pool.get_data_page(i, flat=True).contiguous().view(torch.uint8).numpy()
         for i in dst[::args["page"]].tolist()]
np.save(sys.argv[2], np.stack(pages))
print(json.dumps({"hit": hit, "ok": ok}))
"""


@pytest.mark.parametrize("harness", [("mha", "layer_first", 1)], indirect=True,
                         ids=case_id)
def test_another_process_finds_the_pages(harness, tmp_path):
    pool, tokens = harness.pool, tokens_of(4, start=77)
    src = pool.alloc(len(tokens))
    expected = fill_random(pool, src, seed=14)
    assert harness.backup(src, tokens) == len(tokens)
    args = dict(kind="mha", layout="layer_first", page=PAGE, model="test-model",
                extra=harness.controller.storage_config.extra_config,
                keys=page_keys_of(tokens, PAGE))
    (tmp_path / "args.json").write_text(json.dumps(args))
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "args.json"),
                          str(tmp_path / "pages.npy")], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=SRC_DIR))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"hit": 4, "ok": [True] * 4}
    got = np.load(tmp_path / "pages.npy")
    assert all(np.array_equal(g, e.numpy()) for g, e in zip(got, expected))
