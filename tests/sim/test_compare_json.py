"""scripts/compare_sim_json.py: a changed figure, a missing key or a missing row is reported."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_sim_json.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_sim_json", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_reports_every_difference():
    diff = _load().differences
    doc = {"results": [{"jct_s": 3864.2219015301876, "policy": "dualpath", "wall_s": 1.0}]}
    same = {"results": [{"jct_s": 3864.2219015301876, "policy": "dualpath", "wall_s": 2.0}]}
    assert diff(doc, same, {"wall_s"}) == []
    assert diff(doc, same) == ["row 0: wall_s 1.0 != 2.0"]
    moved = {"results": [{"jct_s": 3864.2219015301880, "policy": "dualpath"}]}
    assert diff(doc, moved, {"wall_s"}) == ["row 0: jct_s 3864.2219015301876 != 3864.221901530188"]
    assert diff(doc, {"results": []}) == ["row count 1 != 0"]
    assert diff(doc, moved) == ["row 0: jct_s 3864.2219015301876 != 3864.221901530188",
                                "row 0: wall_s only in before"]
