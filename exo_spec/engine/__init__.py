"""The speculative decoding engine. Importing the package configures MLX's CUDA
backend (``cuda``); its classes load on first use, so that ``exo_spec.engine.stats``
does not pull in mlx-lm."""

from importlib import import_module

from .cuda import configure as _configure_cuda

_configure_cuda()  # before any model runs attention: see cuda.py

_MODULES = {
    "AdaptiveDraftLength": "draft_length",
    "CachedModel": "cached_model",
    "DraftModel": "draft_model",
    "FixedDraftLength": "draft_length",
    "Mtp": "mtp",
    "Sampling": "sampling",
    "SpecDecoder": "decoder",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULES[name]}", __name__), name)
