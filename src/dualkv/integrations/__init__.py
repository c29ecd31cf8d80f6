"""Thin adapters that put dualkv's block store under inference frameworks (vLLM, SGLang)."""
