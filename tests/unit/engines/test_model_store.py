"""The converted model cache is readable by every user: an image converts it as root at
build time and runs the service as an unprivileged user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from service.engines.model_store import DEFAULT_MODEL, convert_gguf, embedded_gguf_path


def test_a_converted_model_is_readable_by_other_users(tmp_path: Path) -> None:
    os.umask(previous := os.umask(0o022))
    target = convert_gguf(embedded_gguf_path(), tmp_path / "cache", name=DEFAULT_MODEL)
    assert (target / "config.json").is_file()
    for path in [target, *target.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o005 if path.is_dir() else 0o004
        assert mode & wanted == wanted, f"{path.name}: {oct(mode)} (umask {oct(previous)})"
    assert not list((tmp_path / "cache").glob(".*")), "the work directory was left behind"
