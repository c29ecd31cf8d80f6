import json
import shutil

import pytest

from dualkv.bench import storage
from dualkv.errors import InvalidArgument


def test_storage_bench_prints_one_json_document(tmp_path, capsys):
    storage.main(["--dir", str(tmp_path), "--sizes-kib", "256", "--depths", "2",
                  "--total-mib", "1", "--repeat", "1", "--no-fio", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "bench storage"
    huge, small = doc["results"]  # one row per pool page kind
    assert small["pages"] == "4KiB"
    for row in (huge, small):
        assert row["queue_depth"] == 2 and row["block_bytes"] == 256 * 1024 + 4096
        assert row["read_gbps"] > 0
    assert list(tmp_path.iterdir()) == []  # the bench cleans up its files


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_storage_bench_against_fio_pairs_rounds_on_the_same_page_kind(tmp_path, capsys):
    storage.main(["--dir", str(tmp_path), "--sizes-kib", "256", "--depths", "4",
                  "--total-mib", "2", "--repeat", "3", "--json"])
    huge, small = json.loads(capsys.readouterr().out)["results"]
    assert small["pages"] == "4KiB" and small["ref_pages"] == "4KiB"
    # fio's buffers on the pool's kind of pages; without root (no tmpfs mount) no ratio
    expected = {"4KiB+THP": "shmem+THP", "hugetlb-2MiB": "hugetlb-2MiB", "4KiB": "4KiB"}
    if "ref_unavailable" in huge:
        assert huge["ratio"] is None and huge["pages"] == "4KiB+THP"
        rows = [small]
    else:
        assert huge["ref_pages"] == expected[huge["pages"]]
        rows = [huge, small]
        assert huge["first_of_rounds"] != small["first_of_rounds"]
    for row in rows:
        assert row["reference"] == "fio" and row["num_rounds"] == 3
        assert len(row["runs_read_gbps"]) == len(row["ref_runs_read_gbps"]) == 3
        pairs = zip(row["runs_read_gbps"], row["ref_runs_read_gbps"])
        assert row["ratios_of_rounds"] == pytest.approx([a / b for a, b in pairs], rel=1e-2)
        # the order alternates from round to round, and between the two page kinds
        assert row["first_of_rounds"] in (["dualkv", "fio", "dualkv"], ["fio", "dualkv", "fio"])
        assert row["ref_read_gbps"] > 0 and row["higher_is_better"] is True
        assert row["ratio"] == pytest.approx(row["read_gbps"] / row["ref_read_gbps"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_storage_bench_refuses_fewer_than_three_rounds_against_fio(tmp_path):
    with pytest.raises(InvalidArgument, match="at least 3 rounds"):
        storage.main(["--dir", str(tmp_path), "--repeat", "2", "--json"])
