"""Benchmark figures from raw samples: shares of the wall time, rates, latency tails, paired ratios."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import figures


def test_shares_split_every_moment_among_the_requests_in_flight() -> None:
    # A batch of two from 0 to 1 s; then c alone from 1 to 2 s, d joining at 2 s; c done at
    # 3 s, d alone until 4 s.
    share = figures.shares([0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 3.0, 4.0])
    assert share.tolist() == pytest.approx([0.5, 0.5, 1.0 + 0.5, 0.5 + 1.0])
    assert share.sum() == pytest.approx(4.0)
    rate, bounds = figures.rate(share)
    assert rate == pytest.approx(4 / 4.0)
    assert bounds[0] <= rate <= bounds[1]


def test_closed_loop_shares_are_latency_over_concurrency() -> None:
    # Two clients, each sending its next request as its last is answered, in step.
    starts, ends = [0.0, 0.0, 2.0, 2.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0, 6.0, 6.0]
    assert figures.shares(starts, ends).tolist() == pytest.approx([1.0] * 6)


def test_a_lone_clients_gaps_are_not_shared() -> None:
    assert figures.shares([0.0, 1.5], [1.0, 2.0]).tolist() == pytest.approx([1.0, 0.5])


def test_rate_of_work_per_item() -> None:
    rate, _ = figures.rate([1.0, 1.0, 2.0], work=[10, 20, 30])
    assert rate == pytest.approx(60 / 4.0)


@pytest.mark.parametrize(("count", "tail"), [(16, "max_ms"), (99, "max_ms"), (100, "p99_ms"), (256, "p99_ms")])
def test_latency_tail_is_named_for_what_it_is(count: int, tail: str) -> None:
    latencies = np.random.default_rng(1).uniform(0.1, 2.0, count)
    out = figures.latency(latencies.tolist())
    ordered = np.sort(1000 * latencies)
    assert out["requests"] == count
    assert out["p50_ms"] == pytest.approx(float(np.median(ordered)))
    # Nearest rank: the ceil(0.99 n)-th smallest.
    assert out[tail] == pytest.approx(float(ordered[int(np.ceil(0.99 * count - 1e-9)) - 1]))
    assert (tail == "max_ms") == (out[tail] == pytest.approx(float(ordered[-1])))
    low, high = out[tail + "_ci"]
    assert low <= out[tail] <= high


def test_rate_ratio_is_paired_by_item() -> None:
    slow = {str(i): 0.1 * (i + 1) for i in range(30)}
    fast = {key: value / 2 for key, value in slow.items()}
    ratio, bounds = figures.rate_ratio(fast, slow)
    assert ratio == pytest.approx(2.0)
    # Paired, every resample gives the same ratio: the interval is the ratio itself.
    assert bounds == pytest.approx([2.0, 2.0])


def test_run_keeps_its_samples_and_ratios_come_from_them() -> None:
    sent, done = {"a": 0.0, "b": 0.0, "c": 1.0}, {"a": 1.0, "b": 1.0, "c": 2.5}
    row = figures.run(sent, done, [1.0, 1.5])
    assert row["items_per_s"] == pytest.approx(3 / 2.5)
    assert row["item_ids"] == ["a", "b", "c"] and row["done_s"] == [1.0, 1.0, 2.5]
    assert row["start_s"] == [0.0, 0.0, 1.0]
    assert row["latencies_ms"] == pytest.approx([1000.0, 1500.0])
    assert figures.item_shares(row, 7) == pytest.approx({(7, "a"): 0.5, (7, "b"): 0.5, (7, "c"): 1.5})


def test_write_round_trips_with_samples_on_one_line(tmp_path: Path) -> None:
    report = {"rows": [{"x": 1.5, "x_ci": [1.0, 2.0], "samples": [1, 2, 3]}], "name": "n", "empty": {}}
    path = tmp_path / "r.json"
    figures.write(path, report)
    assert json.loads(path.read_text()) == report
    assert '"samples": [1, 2, 3]' in path.read_text()
