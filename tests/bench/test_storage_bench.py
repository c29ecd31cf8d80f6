import json

from dualkv.bench import storage


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
