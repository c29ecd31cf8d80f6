"""Importing SGLang on a machine without a GPU stack (tests and `dualkv bench sglang`).

SGLang's package `__init__` imports triton, and its host-pool modules import every model
config, which imports torchvision. Both wheels are GPU builds that fail (or replace torch)
beside the CPU torch, and neither is used by the HiCache storage path. This module serves
placeholder modules for exactly those two packages, and only when they are not installed, so
the real SGLang classes (HiCacheStorage, host pools, HiCacheController) import unchanged.
Nothing here is used by the backend itself: a GPU server has the real packages.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
import types

STUBBED_PACKAGES = ("torchvision", "triton")


def _placeholder_attr(owner: str, attr: str):
    """CamelCase names become real (empty) classes, since callers use them in isinstance()
    and as base classes; anything else becomes a `_Placeholder`."""
    if attr.startswith("__") and attr.endswith("__"):
        raise AttributeError(attr)
    if attr[:1].isupper():
        return _placeholder_class(f"{owner}.{attr}")
    return _Placeholder(f"{owner}.{attr}")


_CLASSES: dict[str, type] = {}


def _placeholder_class(name: str) -> type:
    if name not in _CLASSES:
        _CLASSES[name] = type(name.rsplit(".", 1)[-1], (_PlaceholderBase,), {"__module__": name})
    return _CLASSES[name]


class _PlaceholderMeta(type):
    def __getattr__(cls, attr):  # class attributes such as `InterpolationMode.NEAREST`
        return _placeholder_attr(cls.__name__, attr)


class _PlaceholderBase(metaclass=_PlaceholderMeta):
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, attr):
        return _placeholder_attr(type(self).__name__, attr)


class _Placeholder:
    """Stands for any other attribute of a missing package: callable, subscriptable, a
    decorator, and falsy, so module-level uses such as `@triton.jit` or `tl.constexpr`
    annotations evaluate."""

    def __init__(self, name: str = "placeholder"):
        self._name = name

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # used as a bare decorator: keep the function
        return _Placeholder(f"{self._name}()")

    def __getattr__(self, attr):
        return _placeholder_attr(self._name, attr)

    def __getitem__(self, item):
        return _Placeholder(f"{self._name}[]")

    def __mro_entries__(self, bases):
        return (object,)

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __repr__(self):
        return f"<dualkv placeholder {self._name}>"


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, attr):
        return _placeholder_attr(self.__name__, attr)


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in STUBBED_PACKAGES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+dualkv.placeholder"
        return module

    def exec_module(self, module):
        pass


def install_import_placeholders() -> list[str]:
    """Serves placeholders for the GPU-only packages that are not installed; returns them."""
    missing = [name for name in STUBBED_PACKAGES
               if name not in sys.modules and importlib.util.find_spec(name) is None]
    if missing and not any(isinstance(f, _PlaceholderFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PlaceholderFinder())
    return missing


def prepare_environment(cache_dir: str | None = None) -> None:
    """SGLang JIT-compiles its page-hash extension on first use: keep that out of $HOME."""
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "dualkv-sglang-cache")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache_dir, "torch_extensions"))
    os.environ.setdefault("SGLANG_CACHE_DIR", cache_dir)


def import_sglang_storage():
    """Imports SGLang's HiCache storage module on a CPU machine and returns it."""
    prepare_environment()
    install_import_placeholders()
    import sglang.srt.mem_cache.hicache_storage as hicache_storage

    return hicache_storage


def make_host_pool(kind: str, layout: str, *, num_layers: int, page_size: int, num_pages: int,
                   num_kv_heads: int = 8, head_dim: int = 128, kv_lora_rank: int = 512,
                   rope_dim: int = 64, dtype: str = "bfloat16"):
    """A real SGLang MHA or MLA host pool on CPU, as the server builds it from its device pool's
    buffer description (here small CPU tensors stand in for the device buffers, which the
    storage path never touches). Holds `num_pages` pages plus SGLang's padding page."""
    import torch
    from sglang.srt.mem_cache.device_pool_info import (KVBufferLayout, KVBuffers,
                                                       MHABufferInfo, MLABufferInfo)

    torch_dtype = getattr(torch, dtype)
    device_tokens = page_size  # the device side is never read here; keep it one page
    common = dict(host_to_device_ratio=1.0, host_size=0, page_size=page_size, layout=layout,
                  pin_memory=False, device="cpu", device_capacity_tokens=device_tokens,
                  start_layer=0, end_layer=num_layers,
                  host_token_capacity=(num_pages + 1) * page_size)
    if kind == "mha":
        from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

        k = tuple(torch.zeros(device_tokens, num_kv_heads, head_dim, dtype=torch_dtype)
                  for _ in range(num_layers))
        v = tuple(torch.zeros_like(t) for t in k)
        info = MHABufferInfo(
            buffers=KVBuffers(k=k, v=v, k_data_ptrs=_ptr_table(k), v_data_ptrs=_ptr_table(v),
                              layout=KVBufferLayout.NHD),
            page_size=page_size, head_num=num_kv_heads, head_dim=head_dim,
            v_head_dim=head_dim, dtype=torch_dtype, device=torch.device("cpu"))
        return MHATokenToKVPoolHost(info, **common)
    if kind == "mla":
        from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

        width = kv_lora_rank + rope_dim
        rows = tuple(torch.zeros(device_tokens, 1, width, dtype=torch_dtype)
                     for _ in range(num_layers))
        info = MLABufferInfo(
            buffers=rows, data_ptrs=_ptr_table(rows), layer_indices=tuple(range(num_layers)),
            device_layer_num=num_layers, page_size=page_size, kv_lora_rank=kv_lora_rank,
            qk_rope_head_dim=rope_dim, kv_cache_dim=width, dtype=torch_dtype,
            device=torch.device("cpu"))
        return MLATokenToKVPoolHost(info, target_layer_num=num_layers, **common)
    raise ValueError(f"kind must be 'mha' or 'mla', not {kind!r}")


def _ptr_table(tensors):
    import torch

    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.uint64)
