"""Configs of the reference engines: the model's shape, and where and how an engine runs."""
from __future__ import annotations

from dataclasses import dataclass

from dualkv.errors import InvalidArgument
from dualkv.layout import KVLayout

TORCH_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def torch_dtype(name: str):
    import torch

    if name not in TORCH_DTYPES:
        raise InvalidArgument(f"dtype {name!r} is not one of {sorted(TORCH_DTYPES)}")
    return getattr(torch, TORCH_DTYPES[name])


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-style decoder (GQA, RoPE, RMSNorm, SwiGLU)."""
    vocab_size: int = 512
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    ffn: int = 128
    rope_theta: float = 10000.0
    dtype: str = "fp32"
    rms_eps: float = 1e-6
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "ffn"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgument(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise InvalidArgument(f"num_heads {self.num_heads} is not a multiple of "
                                  f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise InvalidArgument(f"RoPE needs an even head_dim, got {self.head_dim}")
        if not self.rope_theta > 0 or not self.rms_eps > 0:
            raise InvalidArgument("rope_theta and rms_eps must be positive")
        if self.dtype not in TORCH_DTYPES:
            raise InvalidArgument(f"dtype {self.dtype!r} is not one of {sorted(TORCH_DTYPES)}")

    def layout(self, block_tokens: int = 64) -> KVLayout:
        """The store layout of this model's KV: per layer per token, K then V of all KV heads."""
        return KVLayout.gqa(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype,
                            block_tokens)

    @classmethod
    def from_hf(cls, hf: dict, dtype: str | None = None) -> ModelConfig:
        """From a Hugging Face Llama/Qwen2-style config.json dictionary."""
        if hf.get("rope_scaling"):
            raise InvalidArgument(f"rope_scaling {hf['rope_scaling']!r} is not supported; "
                                  "the reference model implements plain RoPE only")
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"], hidden=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"], num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads", heads),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            ffn=hf["intermediate_size"], rope_theta=float(hf.get("rope_theta", 10000.0)),
            dtype=dtype or {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
                hf.get("torch_dtype", "float32"), "fp32"),
            rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


@dataclass(frozen=True)
class EngineConfig:
    """Where an engine runs and how long it waits for KV before giving up.

    device: a torch device string, or "auto" for CUDA where present and CPU otherwise.
    """
    device: str = "cpu"
    block_tokens: int = 64
    timeout_s: float = 30.0

    def __post_init__(self):
        if not isinstance(self.block_tokens, int) or self.block_tokens <= 0:
            raise InvalidArgument(f"block_tokens must be a positive int, got {self.block_tokens!r}")
        if not self.timeout_s > 0:
            raise InvalidArgument(f"timeout_s must be positive, got {self.timeout_s!r}")

    @property
    def torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError as exc:
            raise InvalidArgument(f"unknown device {self.device!r}") from exc
