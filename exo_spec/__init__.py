"""exo-spec: speculative LLM inference across a handful of Macs, built on MLX."""

__version__ = "0.1.0"
