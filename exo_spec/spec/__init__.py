from .cached_model import CachedModel
from .draft_length import AdaptiveDraftLength, FixedDraftLength
from .draft_model import DraftModel
from .engine import SpecDecoder
from .mtp import Mtp
from .sampling import Sampling

__all__ = [
    "AdaptiveDraftLength",
    "CachedModel",
    "DraftModel",
    "FixedDraftLength",
    "Mtp",
    "Sampling",
    "SpecDecoder",
]
