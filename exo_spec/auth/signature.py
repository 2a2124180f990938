"""Per-call proof of the cluster key, for gRPC: an HMAC-SHA256 of the method, the
time and a random nonce, sent in the call's metadata under ``METADATA`` as
``v1.<unix ms>.<nonce hex>.<mac hex>``.

A server takes a signature only within ``WINDOW_S`` of its own clock, and only once:
it remembers each nonce for as long as its signature could still be taken. So a
signature read off the wire is no use later than that, nor a second time on the same
server. It does not cover the request's body (a server interceptor sees only the
metadata), nor which server it is meant for: docs/DESIGN.md says what that leaves.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import time

from .key_file import ClusterKey

METADATA = "x-exo-spec-signature"
VERSION = "v1"
WINDOW_S = 30.0  # the clock difference between two machines a signature survives
NONCE_BYTES = 16
MAX_NONCES = 1 << 17  # signed calls a server takes per 2 * WINDOW_S, at most


def _mac(key: ClusterKey, method: str, millis: str, nonce: str) -> str:
    message = f"{VERSION}\n{method}\n{millis}\n{nonce}".encode()
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def sign(key: ClusterKey, method: str, now: float | None = None) -> str:
    """The signature of one call of ``method`` ("/package.Service/Method")."""
    millis = str(int((time.time() if now is None else now) * 1000))
    nonce = secrets.token_hex(NONCE_BYTES)
    return f"{VERSION}.{millis}.{nonce}.{_mac(key, method, millis, nonce)}"


class Verifier:
    """One server's check of the signatures it is sent."""

    def __init__(self, key: ClusterKey, window_s: float = WINDOW_S,
                 max_nonces: int = MAX_NONCES):
        self.key = key
        self.window_s = window_s
        self.max_nonces = max_nonces
        # Nonces in arrival order: one that arrived 2 * window_s ago belonged to a
        # signature at most window_s old, now past the window, so it can be forgotten.
        self._seen: collections.deque[tuple[float, str]] = collections.deque()
        self._nonces: set[str] = set()

    def check(self, method: str, signature: str | None, now: float | None = None) -> str | None:
        """Why ``signature`` does not let this call of ``method`` through; None if it
        does (its nonce is then used up)."""
        if not signature:
            return "no cluster key signature (the caller has no cluster key)"
        version, millis, nonce, mac = (signature.split(".") + ["", "", ""])[:4]
        if version != VERSION or not millis.isdigit() or len(nonce) != 2 * NONCE_BYTES:
            return "a malformed cluster key signature"
        if not hmac.compare_digest(mac, _mac(self.key, method, millis, nonce)):
            return "a wrong cluster key signature (the caller has another cluster key)"
        now = time.time() if now is None else now
        skew = int(millis) / 1000 - now
        if abs(skew) > self.window_s:
            return (f"an expired cluster key signature: made {abs(skew):.0f} s "
                    f"{'ahead of' if skew > 0 else 'before'} this server's clock (at most "
                    f"{self.window_s:g} s: are the machines' clocks set?)")
        while self._seen and self._seen[0][0] < now - 2 * self.window_s:
            self._nonces.discard(self._seen.popleft()[1])
        if nonce in self._nonces:
            return "a replayed cluster key signature (each one is taken once)"
        if len(self._nonces) >= self.max_nonces:
            return "more signed calls than this server takes in a minute; try again"
        self._nonces.add(nonce)
        self._seen.append((now, nonce))
        return None
