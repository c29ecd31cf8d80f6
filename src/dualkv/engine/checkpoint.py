"""Real weights from a local Hugging Face checkpoint directory: config.json plus one or more
*.safetensors files (Llama / Qwen2 / Mistral-style dense decoders). Nothing is downloaded."""
from __future__ import annotations

import glob
import json
import os

from dualkv.engine.config import ModelConfig
from dualkv.engine.model import Model
from dualkv.errors import InvalidArgument, NotFound, Unavailable


def read_config(path: str, dtype: str | None = None) -> ModelConfig:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise NotFound(f"no config.json in {path!r}")
    with open(config_path) as f:
        hf = json.load(f)
    try:
        return ModelConfig.from_hf(hf, dtype)
    except KeyError as exc:
        raise InvalidArgument(f"{config_path} lacks {exc.args[0]!r}") from None


def read_weights(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise Unavailable("loading a checkpoint needs the 'safetensors' package: "
                          "pip install safetensors (or pip install 'dualkv[engine]')") from None
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise NotFound(f"no *.safetensors file in {path!r}")
    weights = {}
    for file in files:
        weights.update(load_file(file))
    return weights


def load_model(path: str, device="cpu", dtype: str | None = None) -> Model:
    """The model of a local checkpoint directory; `dtype` overrides the checkpoint's."""
    cfg = read_config(path, dtype)
    return Model(cfg, read_weights(path), device)


def save_model(model: Model, path: str) -> None:
    """Writes config.json + model.safetensors in the Hugging Face layout (for tests and demos)."""
    from safetensors.torch import save_file

    cfg = model.cfg
    os.makedirs(path, exist_ok=True)
    hf = {"architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.hidden, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
          "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn, "rope_theta": cfg.rope_theta,
          "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": cfg.tie_embeddings,
          "torch_dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(
              cfg.dtype, cfg.dtype)}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=1)
    tensors = {name: t.contiguous().cpu() for name, t in model.w.items()
               if not (cfg.tie_embeddings and name == "lm_head.weight")}
    save_file(tensors, os.path.join(path, "model.safetensors"))
