"""The reference model: config validation, attention against torch's SDPA, batch invariance,
and real-weight loading from a local safetensors checkpoint."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from dualkv.engine import Model, ModelConfig
from dualkv.errors import InvalidArgument, NotFound


@pytest.mark.parametrize("field,value", [("hidden", 0), ("num_kv_heads", 3), ("head_dim", 15),
                                         ("dtype", "int4"), ("rope_theta", -1.0)])
def test_config_rejects_bad_shapes(field, value):
    with pytest.raises(InvalidArgument):
        dataclasses.replace(TINY, **{field: value})


def test_layout_is_k_then_v_of_all_kv_heads():
    layout = TINY.layout(block_tokens=64)
    assert layout.bytes_per_token_layer == 2 * TINY.num_kv_heads * TINY.head_dim * 4
    assert layout.num_layers == TINY.num_layers and layout.block_tokens == 64


def sdpa_reference(model, q, kv):
    """Causal GQA with torch SDPA and explicit head repetition (HF repeat_kv semantics)."""
    group = model.cfg.num_heads // model.cfg.num_kv_heads
    k = kv[:, 0].repeat_interleave(group, dim=1).transpose(0, 1)
    v = kv[:, 1].repeat_interleave(group, dim=1).transpose(0, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, is_causal=True)
    return out.transpose(0, 1).reshape(q.shape[0], -1)


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_attention_matches_sdpa(batch_invariant):
    model = Model.from_seed(TINY, seed=3, batch_invariant=batch_invariant)
    x = model.embed(torch.arange(150) % TINY.vocab_size)
    q, kv = model.attention_inputs(0, x, torch.arange(150))
    torch.testing.assert_close(model.attend(q, kv, 0), sdpa_reference(model, q, kv),
                               rtol=1e-5, atol=1e-5)


def test_suffix_queries_match_full_causal_attention(model):
    x = model.embed(torch.arange(130) % TINY.vocab_size)
    q, kv = model.attention_inputs(1, x, torch.arange(130))
    full = model.attend(q, kv, 0)
    assert torch.equal(model.attend(q[70:], kv, 70), full[70:])  # batch-invariant: exact
    assert torch.equal(model.attend(q[99:100], kv[:100], 99), full[99:100])


def test_plain_mode_differs_only_in_rounding():
    """Without batch_invariant a 1-row decode GEMM rounds differently from the prefill's
    (MKL picks another kernel), but only in the last bits: relative error ~1e-6."""
    model = Model.from_seed(TINY, seed=3)
    x = model.embed(torch.arange(60) % TINY.vocab_size)
    _, kv = model.attention_inputs(0, x, torch.arange(60))
    _, kv_one = model.attention_inputs(0, x[59:], torch.tensor([59]))
    torch.testing.assert_close(kv_one[0], kv[59], rtol=1e-5, atol=1e-5)


def test_rope_keeps_relative_positions(model):
    """Scores depend on position differences only: shifting every position changes nothing
    beyond rounding — the property that lets cached K be reused at a later position."""
    x = model.embed(torch.arange(8) + 5)
    q0, kv0 = model.attention_inputs(0, x, torch.arange(8))
    q1, kv1 = model.attention_inputs(0, x, torch.arange(8) + 1000)
    s0 = torch.einsum("hd,hd->h", q0[7], kv0[3, 0].repeat_interleave(2, 0))
    s1 = torch.einsum("hd,hd->h", q1[7], kv1[3, 0].repeat_interleave(2, 0))
    torch.testing.assert_close(s0, s1, rtol=1e-4, atol=1e-4)
    assert torch.equal(kv0[:, 1], kv1[:, 1])  # V carries no position


def test_bad_tokens_raise(model):
    with pytest.raises(InvalidArgument):
        model.forward(torch.tensor([0, TINY.vocab_size]))
    with pytest.raises(InvalidArgument):
        model.forward(torch.tensor([], dtype=torch.int64))


def test_checkpoint_round_trip(tmp_path, model):
    pytest.importorskip("safetensors", reason="pip install safetensors (dualkv[engine])")
    from dualkv.engine.checkpoint import load_model, save_model

    save_model(model, str(tmp_path))
    loaded = load_model(str(tmp_path))
    assert loaded.cfg == TINY
    tokens = torch.arange(40) * 3 % TINY.vocab_size
    assert torch.equal(loaded.forward(tokens)[0], Model.from_seed(TINY, seed=7).forward(tokens)[0])


def test_checkpoint_errors(tmp_path):
    from dualkv.engine.checkpoint import load_model, read_config

    with pytest.raises(NotFound):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"vocab_size": 10, "hidden_size": 8, '
                                          '"num_hidden_layers": 1, "num_attention_heads": 2, '
                                          '"intermediate_size": 16, "rope_scaling": {"type": "llama3"}}')
    with pytest.raises(InvalidArgument, match="rope_scaling"):
        read_config(str(tmp_path))


def test_missing_weight_is_named():
    weights = {}
    with pytest.raises(InvalidArgument, match="lacks"):
        Model(ModelConfig(num_layers=1), weights)


def test_engine_config_devices():
    from dualkv.engine import EngineConfig

    assert EngineConfig("cpu").torch_device == torch.device("cpu")
    assert EngineConfig("auto").torch_device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidArgument):
        EngineConfig("tpu9").torch_device
    with pytest.raises(InvalidArgument):
        EngineConfig(timeout_s=0)
