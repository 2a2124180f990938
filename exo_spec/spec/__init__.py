from .cuda import configure as _configure_cuda

_configure_cuda()  # before any model runs attention: see cuda.py

from .cached_model import CachedModel  # noqa: E402
from .draft_length import AdaptiveDraftLength, FixedDraftLength  # noqa: E402
from .draft_model import DraftModel  # noqa: E402
from .engine import SpecDecoder  # noqa: E402
from .mtp import Mtp  # noqa: E402
from .sampling import Sampling  # noqa: E402

__all__ = [
    "AdaptiveDraftLength",
    "CachedModel",
    "DraftModel",
    "FixedDraftLength",
    "Mtp",
    "Sampling",
    "SpecDecoder",
]
