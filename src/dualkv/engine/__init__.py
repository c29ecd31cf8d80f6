"""Reference prefill/decode engines on a small Llama-style model (needs torch).

`Model` + `ModelConfig` (model.py, config.py), the Layer Block codec (kv.py), layerwise and
Basic prefill over the `KVSource` / `KVSink` seams (prefill.py, interfaces.py), decode with
Full Block write-back (decode.py), in-process buffers and sources (buffer.py, sources.py), and
one whole turn wired in one process (local.py).
"""
from dualkv.engine.buffer import BlockBuffer
from dualkv.engine.config import EngineConfig, ModelConfig
from dualkv.engine.decode import Decoder, StoreWriteBack, decode
from dualkv.engine.interfaces import KVSink, KVSource
from dualkv.engine.kv import LayerBlockCodec
from dualkv.engine.local import TurnResult, run_turn
from dualkv.engine.model import Model
from dualkv.engine.prefill import (PrefillItem, prefill, prefill_basic, prefill_basic_batch,
                                   prefill_batch, prefill_layerwise)
from dualkv.engine.sources import BufferSink, BufferSource, SlotSource

__all__ = ["BlockBuffer", "BufferSink", "BufferSource", "Decoder", "EngineConfig", "KVSink", "KVSource",
           "LayerBlockCodec", "Model", "ModelConfig", "SlotSource",
           "PrefillItem", "StoreWriteBack", "TurnResult", "decode", "prefill", "prefill_basic",
           "prefill_basic_batch", "prefill_batch", "prefill_layerwise", "run_turn"]
