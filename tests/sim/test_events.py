"""The event queue pops in (time, push order) order, and its compiled twin (events.pyx, when
built) pops exactly what the pure-Python events.py pops."""
import importlib.util
import pathlib
import random

import pytest

import dualkv.sim.events as events

PY_SOURCE = pathlib.Path(events.__file__).with_name("events.py")


def pure_python_module():
    spec = importlib.util.spec_from_file_location("dualkv_sim_events_py", PY_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("impl", ["imported", "pure"])
def test_time_order_then_fifo(impl):
    q = (events if impl == "imported" else pure_python_module()).EventQueue()
    for t, kind, obj in [(2.0, 1, "c"), (1.0, 5, "a"), (2.0, 0, "d"), (1.0, 3, "b"), (0.5, 2, None)]:
        q.push(t, kind, obj)
    assert len(q) == 5
    assert [q.pop() for _ in range(5)] == [(0.5, 2, None), (1.0, 5, "a"), (1.0, 3, "b"),
                                           (2.0, 1, "c"), (2.0, 0, "d")]
    assert len(q) == 0
    with pytest.raises(IndexError):
        q.pop()


def test_compiled_twin_matches_pure_python():
    if events.__file__.endswith(".py"):
        pytest.skip("events.pyx is not built here")
    rng = random.Random(3)
    a, b = events.EventQueue(), pure_python_module().EventQueue()
    got_a, got_b = [], []
    for step in range(20000):
        if rng.random() < 0.55 or not len(a):
            t, kind = float(rng.randrange(40)), rng.randrange(7)
            a.push(t, kind, step)
            b.push(t, kind, step)
        else:
            got_a.append(a.pop())
            got_b.append(b.pop())
    while len(a):
        got_a.append(a.pop())
        got_b.append(b.pop())
    assert got_a == got_b and len(b) == 0
