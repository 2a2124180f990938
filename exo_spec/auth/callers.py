"""Who a call comes from, which decides whose jobs it sees.

A caller that proves the cluster key is the admin: it sees and cancels every job. A
caller with an API key (HTTP ``Authorization: Bearer``, or the same in the metadata
of a coordinator's Inference call) is known by a hash of that key, and sees only the
jobs it submitted. The coordinator keeps the keys' hashes only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

ADMIN_ID = "admin"
API_KEY_PREFIX = "exo-"


@dataclass(frozen=True)
class Caller:
    id: str  # ADMIN_ID, or "key-" and 16 hex digits of the SHA-256 of its API key

    @property
    def admin(self) -> bool:
        return self.id == ADMIN_ID

    def sees(self, owner: str) -> bool:
        """Whether this caller may see (and cancel) a job that ``owner`` submitted."""
        return self.admin or owner == self.id


ADMIN = Caller(ADMIN_ID)


def _digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeys:
    """The API keys a coordinator takes, as the callers they stand for."""

    def __init__(self, keys: Iterable[str] = ()):
        self._callers = {_digest(k): Caller("key-" + _digest(k).hex()[:16]) for k in keys}

    def __len__(self) -> int:
        return len(self._callers)

    def caller(self, api_key: str) -> Caller | None:
        """The caller ``api_key`` stands for; None when it is none of these keys."""
        # A lookup by the key's digest: its time tells nothing about the keys held.
        return self._callers.get(_digest(api_key)) if api_key else None


def bearer_token(authorization: str | None) -> str:
    """The key in an ``authorization`` value ("Bearer KEY"); "" when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
