"""Bearer API keys: hashed in memory, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from service.errors import ErrorKind, JudgeError

logger = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The accepted keys, kept only as SHA-256 digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in dict.fromkeys(keys) if k]

    @classmethod
    def from_settings(cls, inline: str | None, path: Path | None) -> ApiKeys:
        keys = [k.strip() for k in (inline or "").split(",")]
        if path is not None:
            keys += [
                line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
            ]
        return cls([k for k in keys if k])

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise 401 unless ``authorization`` is ``Bearer <a configured key>``."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise JudgeError(ErrorKind.UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'")
        presented = _digest(token.strip())
        # Compare against every key, without stopping early, so timing reveals nothing.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise JudgeError(ErrorKind.UNAUTHORIZED, "invalid API key")
