"""glibc's thresholds raised for the transformers engine on CPU: a block of a few MiB comes
from the heap (kept for reuse when freed) instead of a fresh mapping.

Each check runs in a new interpreter, since glibc's thresholds rise with use and are
process-wide: there, a 20 MiB ``malloc`` is a mapping of its own with glibc's defaults, and
is not one after ``keep_freed_memory``; a 40 MiB one (over glibc's ceiling) still is.
``mallinfo2`` (glibc 2.33+) reports the bytes held in mappings.
"""

from __future__ import annotations

import asyncio
import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from service.engines.base import ScoringTask
from service.engines.transformers import TransformersEngine
from tests.conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL(None)
        return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33+ (mallinfo2)")

PROBE = """
import ctypes, sys
from service.engines import allocator

libc = ctypes.CDLL(None)
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)

def mapped(size):
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    during = libc.mallinfo2().hblkhd
    libc.free(block)
    return during - before

kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
print(kept, mapped(20 << 20), mapped(40 << 20))
"""


def _probe(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.split()


def test_glibc_defaults_map_a_20_mib_block() -> None:
    kept, mapped_20, mapped_40 = _probe("defaults")
    assert kept == "None"
    assert int(mapped_20) >= 20 << 20 and int(mapped_40) >= 40 << 20


def test_kept_freed_memory_serves_a_20_mib_block_from_the_heap() -> None:
    kept, mapped_20, mapped_40 = _probe("keep")
    assert kept == "True"
    assert int(mapped_20) == 0  # from the heap: freed, it stays there for the next pass
    assert int(mapped_40) >= 40 << 20  # over glibc's ceiling for the threshold


def test_engine_on_cpu_keeps_freed_memory_unless_told_not_to(tmp_path: Path) -> None:
    model_dir = tiny_llama(tmp_path / "llama")

    async def kept(keep: bool) -> bool:
        engine = TransformersEngine(model_dir, "tiny", pad_token_id=0, device="cpu", keep_freed_memory=keep)
        await engine.start()
        try:
            await engine.score([ScoringTask(tuple(range(5, 20)), (10, 11))])
            return engine.freed_memory_kept
        finally:
            await engine.close()

    assert asyncio.run(kept(False)) is False
    assert asyncio.run(kept(True)) is True
