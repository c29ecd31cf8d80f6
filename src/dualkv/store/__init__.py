"""The KV block store: block keys, the prefix index, the host pool and the BlockStore batch API.

    keys.py         chained block keys (SHA-256, SGLang's page keys), key array conversion
    index.py        PrefixIndex: the C++ trie over chained keys (match, pin, LRU eviction)
    pool.py         HostPool: page-aligned slots of one Full Block each, zero-copy views
    config.py       StoreConfig, and the namespace directory with its meta file
    args.py         checks of the batch arguments before any I/O starts
    block_store.py  BlockStore: index + block files + pool behind one batch API

`from dualkv.store import BlockStore, StoreConfig` is the usual entry; see docs/store-api.md.
"""
from dualkv.store.block_store import BlockStore, Handle
from dualkv.store.config import StoreConfig

__all__ = ["BlockStore", "Handle", "StoreConfig"]
