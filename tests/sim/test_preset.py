"""Model presets: Qwen 32B's decode time from its weights and KV bytes over HBM bandwidth."""
import pytest

from dualkv.sim.config import (HOPPER_HBM_BYTES_PER_S, QWEN32B_KV_BYTES, QWEN32B_WEIGHT_BYTES,
                               get_preset)


def test_qwen_tpot_follows_weights_and_resident_kv():
    q = get_preset("qwen32b")
    assert q.tpot_light_s == pytest.approx(QWEN32B_WEIGHT_BYTES / HOPPER_HBM_BYTES_PER_S)
    full = (QWEN32B_WEIGHT_BYTES + q.de_hbm_tokens * QWEN32B_KV_BYTES) / HOPPER_HBM_BYTES_PER_S
    assert q.tpot_full_s == pytest.approx(full)
    smaller = get_preset("qwen32b", de_hbm_tokens=100_000)  # a refit of the HBM moves it
    assert smaller.tpot_full_s == pytest.approx(q.tpot_light_s + 100_000 * QWEN32B_KV_BYTES / HOPPER_HBM_BYTES_PER_S)


def test_deepseek_tpot_stays_as_given():
    assert (get_preset("ds660b").tpot_light_s, get_preset("ds660b").tpot_full_s) == (0.030, 0.049)
    assert get_preset("ds27b", de_hbm_tokens=1).tpot_full_s == 0.025
