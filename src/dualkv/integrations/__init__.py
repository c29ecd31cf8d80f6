"""Adapters that plug dualkv's block store into serving frameworks (SGLang HiCache, vLLM)."""
