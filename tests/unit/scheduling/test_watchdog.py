"""The watchdog's stall limit: a lane is stalled past a multiple of its predicted pass time
plus a floor (for critiques, not before their deadline), and progress restarts its clock."""

from __future__ import annotations

import time

import pytest

from service.scheduling.watchdog import Watchdog, _Pass

# Stall limits small enough for a test: floor + multiple x predicted.
FLOOR_S = 3.0
MULTIPLE = 2.0


def test_a_lane_is_stalled_only_past_multiple_times_its_prediction_plus_the_floor() -> None:
    watchdog = Watchdog(multiple=MULTIPLE, floor_s=FLOOR_S)
    watchdog.plain.throughput.seed(1.0, 1000)  # 1000 tokens/s, 1 s per batch
    watchdog.plain.began(_Pass(started=100.0, tokens=2000, deadline=None))
    # predicted = 2000 / 1000 + 1 = 3 s; limit = 2 x 3 + 3 = 9 s.
    assert watchdog.check(now=108.9) is None
    stall = watchdog.check(now=109.1)
    assert stall is not None and stall.lane == "scores"
    assert stall.predicted_s == pytest.approx(3.0) and stall.limit_s == pytest.approx(9.0)
    # The first stall is kept for good.
    assert watchdog.check(now=200.0) is stall


def test_progress_restarts_the_clock_and_critiques_wait_for_their_deadline() -> None:
    watchdog = Watchdog(multiple=MULTIPLE, floor_s=FLOOR_S)
    lane = watchdog.critiques
    assert lane.throughput.tokens_per_s is None
    lane.began(_Pass(started=0.0, tokens=600, deadline=50.0))
    # No rate yet: the limit is the rows' latest deadline plus the floor.
    assert watchdog.check(now=52.9) is None
    assert watchdog.check(now=53.1) is not None
    # With a rate that predicts far less, still not before the deadline plus the floor.
    watchdog = Watchdog(multiple=MULTIPLE, floor_s=FLOOR_S)
    watchdog.critiques.throughput.seed(1.0, 100_000)
    watchdog.critiques.began(_Pass(started=0.0, tokens=600, deadline=50.0))
    assert watchdog.check(now=52.9) is None

    watchdog = Watchdog(multiple=MULTIPLE, floor_s=FLOOR_S)
    start = time.monotonic()
    first, second = _Pass(start, 1000, None), _Pass(start, 1000, None)
    watchdog.plain.began(first)
    watchdog.plain.began(second)
    watchdog.plain.ended(first, 1000)
    # Progress: the clock starts again from the end of the first pass, and the rate it
    # measured (a near-instant pass) predicts ~0 s, leaving the floor.
    assert watchdog.plain.last_end is not None
    assert watchdog.check(now=watchdog.plain.last_end + FLOOR_S - 0.1) is None
    assert watchdog.check(now=watchdog.plain.last_end + FLOOR_S + 0.5) is not None
