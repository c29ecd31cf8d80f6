import json
import os

import numpy as np

from dualkv.cli import main
from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

LAYOUT = KVLayout(2, 128, 16)


def make_store(root, n=4):
    store = BlockStore(StoreConfig(root, LAYOUT, pool_slots=n, cuda="off", model_id="m"))
    keys = np.random.default_rng(0).integers(0, 256, (n, 32), dtype=np.uint8)
    store.wait(store.store(keys, store.pool.alloc(n)))
    paths = [store.io.path_of(k.tobytes()) for k in keys]
    store.close()
    return paths


def run_json(capsys, *argv):
    code = main(["store", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)["results"]


def test_info_verify_gc(block_root, capsys):
    paths = make_store(block_root)
    with open(paths[1], "r+b") as f:  # damage one payload byte: only a full read sees it
        f.seek(LAYOUT.layer_offset(1) + 3)
        f.write(b"\x99")
    temp = os.path.join(os.path.dirname(paths[0]), "." + "ab" * 32 + ".dead.0.tmp")
    open(temp, "wb").close()

    code, rows = run_json(capsys, "info", block_root)
    assert code == 0 and rows[0]["blocks"] == 4 and rows[0]["temp_files"] == 1
    assert rows[0]["model_id"] == "m" and rows[0]["num_layers"] == 2
    assert os.path.exists(paths[1]) and os.path.exists(temp)  # info changes nothing

    code, rows = run_json(capsys, "verify", block_root)
    assert code == 1 and rows[0]["bad"] == 1 and rows[0]["good"] == 3

    code, rows = run_json(capsys, "gc", block_root, "--min-age", "3600")
    assert rows[0]["temp_removed"] == 0 and os.path.exists(temp)  # could be a live writer
    code, rows = run_json(capsys, "gc", block_root, "--min-age", "0")
    assert rows[0]["temp_removed"] == 1 and not os.path.exists(temp)


def test_empty_path_says_so(block_root, capsys):
    assert main(["store", "info", block_root]) == 1
    assert "no store namespace" in capsys.readouterr().out


def test_a_damaged_meta_file_is_one_line_and_exit_2(block_root, capsys):
    """(issue 16, item 12) Every action reads the meta file first: a damaged one is named in
    one line on stderr, with no traceback."""
    make_store(block_root)
    (namespace,) = os.listdir(block_root)
    for text in ("[1, 2]", "{broken"):
        with open(os.path.join(block_root, namespace, "meta.json"), "w") as f:
            f.write(text)
        for action in ("info", "verify", "gc"):
            assert main(["store", action, block_root]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"dualkv store: store meta file") and err.count("\n") == 1
