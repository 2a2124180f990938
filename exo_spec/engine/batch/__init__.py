"""Continuous batching with speculation kept on: ``BatchDecoder`` runs several
sequences in rounds of one batched verify pass over ragged caches
(``ragged_cache.RaggedKVCache``, ``ragged_arrays.RaggedArraysCache``)."""

from .batch_decoder import BatchDecoder, BatchRequest, Emitted
from .ragged_cache import RaggedKVCache

__all__ = ["BatchDecoder", "BatchRequest", "Emitted", "RaggedKVCache"]
