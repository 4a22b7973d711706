"""API keys: the comparison itself, and what a key file holds."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from service.core.errors import JudgeError
from service.http.auth import ApiKeys, KeysFileError


def test_keys_are_hashed_and_compared_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys(["alpha", "beta", "gamma"])
    assert "alpha" not in repr(vars(keys))
    calls = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys.check("Bearer alpha")  # matches the first key, yet every key is compared
    assert len(calls) == 3
    with pytest.raises(JudgeError):
        keys.check("Bearer delta")
    assert len(calls) == 6


def test_indented_comments_in_the_key_file_are_not_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("  # old-key\nreal-key\n\t# tabbed\n")
    keys = ApiKeys.from_settings(None, keys_file)
    keys.check("Bearer real-key")
    for comment in ("# old-key", "#", "# tabbed"):
        with pytest.raises(JudgeError):
            keys.check(f"Bearer {comment}")


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n   # and another\n"])
def test_a_key_file_without_keys_fails_closed(tmp_path: Path, content: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(content)
    with pytest.raises(KeysFileError, match="holds no key"):
        ApiKeys.from_settings(None, keys_file)
    # Inline keys do not make an empty file acceptable: the file is broken either way.
    with pytest.raises(KeysFileError):
        ApiKeys.from_settings("inline-key", keys_file)


def test_an_unreadable_key_file_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="cannot be read"):
        ApiKeys.from_settings(None, tmp_path / "missing")
    with pytest.raises(KeysFileError, match="cannot be read"):
        ApiKeys.from_settings(None, tmp_path)  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(KeysFileError, match="cannot be read"):
        ApiKeys.from_settings(None, binary)
