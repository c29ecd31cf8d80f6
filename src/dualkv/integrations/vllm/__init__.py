"""vLLM KV connector on dualkv's block store: `kv_connector_module_path="dualkv.integrations.vllm"`,
`kv_connector="DualKVConnector"` (docs/vllm.md)."""
from dualkv.integrations.vllm.connector import DualKVConnector

__all__ = ["DualKVConnector"]
