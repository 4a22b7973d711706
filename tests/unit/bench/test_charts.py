"""Every chart renders from the reports already in bench/results, intervals or not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import charts, figures

REPORTS = sorted(charts.RESULTS.glob("*.json"))


@pytest.mark.parametrize(
    "report", [p for p in REPORTS if {p.stem, p.stem.split("-")[0]} & set(charts.CHARTS)], ids=lambda p: p.stem
)
def test_existing_report_renders(report: Path, tmp_path: Path) -> None:
    copy = tmp_path / report.name
    shutil.copy(report, copy)
    charts.draw(copy)
    assert copy.with_suffix(".png").stat().st_size > 0


def test_report_with_intervals_renders(tmp_path: Path) -> None:
    batches = {str(i): 0.5 * (i // 4) for i in range(12)}
    a = figures.run(batches, {i: t + 0.5 for i, t in batches.items()}, [0.5, 0.5, 0.5])
    sent = {str(i): 0.1 * i for i in range(12)}
    b = figures.run(sent, {i: t + 0.9 for i, t in sent.items()}, [0.9] * 12)
    ratio, bounds = figures.rate_ratio(figures.item_shares(b), figures.item_shares(a))
    report = {"engine": "transformers", "items": 12, "concurrency": 4, "ratio_b_over_a": ratio}
    report |= {"ratio_b_over_a_ci": bounds, "rows": [{"path": "a", **a}, {"path": "b", **b}]}
    path = tmp_path / "overhead-transformers.json"
    figures.write(path, report)
    charts.draw(path)
    assert path.with_suffix(".png").stat().st_size > 0
