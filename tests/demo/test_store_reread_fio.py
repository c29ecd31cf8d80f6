"""`dualkv demo store`'s cold re-read beside fio: fio runs (it was never run by a test) and
its buffers sit on the same kind of pages as the store's pool."""
import os
import shutil

import pytest

from dualkv.bench.fio import REF_PAGES
from dualkv.bench.storage import layout_for, write_blocks
from dualkv.demo.store_replay import cold_reread


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_cold_reread_runs_fio_on_the_pools_page_kind(tmp_path):
    layout = layout_for(256)
    root = os.path.join(tmp_path, "blocks")
    keys, _ = write_blocks(root, layout, 8, "auto")
    result = cold_reread(root, layout, keys, 4, str(tmp_path), with_fio=True)
    assert result["reread_gbps"] > 0
    if os.geteuid() == 0:  # mounting the huge-page tmpfs for fio's buffers needs root
        assert result["fio_gbps"] > 0 and result["ref_pages"] == REF_PAGES[result["pages"]]
    assert not os.path.exists(os.path.join(tmp_path, "fio-files"))
