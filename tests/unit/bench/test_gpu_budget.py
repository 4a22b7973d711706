"""bench/gpu.py's stage budgets skip and record what does not fit."""

from __future__ import annotations

from pathlib import Path

from bench.gpu_budget import Budget


def test_budget_skips_and_records(tmp_path: Path) -> None:
    saved = []
    budget = Budget(600, grace_s=60, save=lambda: saved.append(1), on_timeout=lambda: None)
    try:
        ran = []

        def work(stage) -> None:  # type: ignore[no-untyped-def]
            if stage.allows("fits", 1):
                ran.append("fits")
            if stage.allows("too long", 10**6):
                ran.append("too long")

        def broken(stage) -> None:  # type: ignore[no-untyped-def]
            raise ValueError("no device")

        budget.run("partial", 100, work)
        budget.run("broken", 100, broken)
        budget.run("none left", 0, work)
    finally:
        budget.close()
    assert ran == ["fits"]
    assert budget.stages["partial"]["status"] == "partial"
    (skipped,) = budget.stages["partial"]["skipped"]
    assert skipped.startswith("too long: needs ~1000000 s, ")
    assert budget.stages["broken"] == budget.stages["broken"] | {"status": "failed", "error": "ValueError: no device"}
    assert budget.stages["none left"]["status"] == "skipped"
    assert len(saved) == 3
