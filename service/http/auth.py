"""Bearer API keys: hashed in memory, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from service.core.errors import ErrorKind, JudgeError

logger = logging.getLogger(__name__)


class KeysFileError(Exception):
    """``JUDGE_API_KEYS_FILE`` is set but yields no key: the service must not start open."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The accepted keys, kept only as SHA-256 digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in dict.fromkeys(keys) if k]

    @classmethod
    def from_settings(cls, inline: str | None, path: Path | None) -> ApiKeys:
        """The keys of ``JUDGE_API_KEYS`` and ``JUDGE_API_KEYS_FILE``. A key file that is set
        but unreadable or holds no key raises ``KeysFileError``: it fails closed, since
        serving without auth is what a broken Secret mount must never cause."""
        keys = [k.strip() for k in (inline or "").split(",")]
        if path is not None:
            keys += _read_keys_file(path)
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


def _read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines whose first non-blank character is ``#``
    are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise KeysFileError(f"JUDGE_API_KEYS_FILE {path} cannot be read: {reason}") from None
    keys = [stripped for line in text.splitlines() if (stripped := line.strip()) and not stripped.startswith("#")]
    if not keys:
        raise KeysFileError(f"JUDGE_API_KEYS_FILE {path} holds no key; refusing to serve without auth")
    return keys
