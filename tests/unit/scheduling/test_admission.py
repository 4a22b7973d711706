"""The throughput measurement behind deadline-aware admission."""

from __future__ import annotations

import time

import pytest

from service.scheduling.admission import LONE_MISS_FACTOR, LONE_MISS_S, Throughput, overloaded


def test_rate_is_tokens_over_busy_time_without_idle_gaps() -> None:
    meter = Throughput(window_s=100)
    assert meter.tokens_per_s is None and meter.seconds_for(10) is None
    meter.batch_started(0.0)
    meter.batch_finished(200, 0.0, 1.0)
    # Idle from 1.0 to 5.0: not counted.
    meter.batch_started(5.0)
    meter.batch_finished(100, 5.0, 6.0)
    assert meter.tokens_per_s == pytest.approx(150.0)
    assert meter.seconds_for(300) == pytest.approx(2.0)


def test_concurrent_batches_share_one_clock() -> None:
    meter = Throughput(window_s=100)
    meter.batch_started(0.0)
    meter.batch_started(0.0)
    meter.batch_finished(100, 0.0, 1.0)
    meter.batch_finished(100, 0.0, 1.0)
    # 200 tokens in 1 s of busy time, not in 2.
    assert meter.tokens_per_s == pytest.approx(200.0)


def test_window_forgets_old_batches() -> None:
    meter = Throughput(window_s=10)
    meter.add(10.0, 10)  # 1 token/s, long ago
    for _ in range(10):
        meter.add(1.0, 100)  # 100 tokens/s since
    assert meter.tokens_per_s == pytest.approx(100.0)


def test_a_seed_stands_in_only_until_real_batches_are_measured() -> None:
    meter = Throughput(window_s=100)
    meter.seed(2.0, 100)
    assert meter.tokens_per_s == pytest.approx(50.0)
    meter.add(1.0, 400)
    assert meter.tokens_per_s == pytest.approx(400.0)


def test_failed_batches_feed_neither_time_nor_tokens() -> None:
    """Only completed work feeds the estimate: failed or cancelled batches (0 tokens) do not
    drag the rate down."""
    meter = Throughput(window_s=100)
    meter.add(1.0, 100)
    for start in range(1, 50):
        meter.batch_started(float(start))
        meter.batch_finished(0, float(start), start + 1.0)
    assert meter.tokens_per_s == pytest.approx(100.0)
    assert meter.batch_latency_s is None  # nor is a failure a batch latency
    # The next completed batch starts its own clock: the failures' time is not in it.
    meter.batch_started(60.0)
    meter.batch_finished(300, 60.0, 61.0)
    assert meter.tokens_per_s == pytest.approx(400 / 2.0)


def test_a_failure_among_concurrent_batches_leaves_its_shared_time_to_them() -> None:
    meter = Throughput(window_s=100)
    meter.batch_started(0.0)
    meter.batch_started(0.0)
    meter.batch_finished(0, 0.0, 1.0)  # cancelled after 1 s; the other batch ran all along
    meter.batch_finished(200, 0.0, 2.0)
    assert meter.tokens_per_s == pytest.approx(100.0)  # 200 tokens in 2 s of busy time, not 1


def test_completion_adds_one_batch_latency_to_the_stretched_drain_time() -> None:
    meter = Throughput(window_s=100)
    assert meter.completion_s(100, 1.25) is None
    meter.seed(2.0, 100)  # before any batch: the seed's rate and latency
    assert meter.batch_latency_s == pytest.approx(2.0)
    assert meter.completion_s(100, 1.25) == pytest.approx(2.0 * 1.25 + 2.0)
    meter.batch_started(10.0)
    meter.batch_finished(300, 10.0, 11.0)
    meter.batch_started(11.0)
    meter.batch_finished(100, 11.0, 14.0)
    meter.batch_started(14.0)
    meter.batch_finished(0, 14.0, 20.0)  # failed: neither busy time nor a batch latency
    # Rate: 400 tokens in 4 s of busy time; latency: the mean of 1 s and 3 s.
    assert meter.batch_latency_s == pytest.approx(2.0)
    assert meter.completion_s(400, 1.0) == pytest.approx(4.0 + 2.0)


def test_a_lone_request_is_refused_only_on_a_measured_rate_and_a_miss_by_far() -> None:
    """1,000 tokens at 10 tokens/s: 100 s, against a 1 s deadline."""
    deadline = time.monotonic() + 1.0
    seeded = Throughput(window_s=100)
    seeded.seed(1.0, 10)
    assert not seeded.measured
    # The startup seed alone is one rough measurement: a lone request gets its chance.
    assert overloaded(seeded, work=0, tokens=1000, deadline=deadline, max_retry_after_s=None) is None
    # Behind admitted work the seed still counts: the queue's own rule.
    assert overloaded(seeded, work=10, tokens=1000, deadline=deadline, max_retry_after_s=None) is not None
    measured = Throughput(window_s=100)
    measured.seed(1.0, 10)
    measured.add(1.0, 10)
    assert measured.measured
    refused = overloaded(measured, work=0, tokens=1000, deadline=deadline, max_retry_after_s=None)
    assert refused is not None and refused.details["predicted_s"] > LONE_MISS_FACTOR * 1.0 + LONE_MISS_S
    # A miss that is not by far: admitted, to get its 504 if it does miss.
    assert overloaded(measured, work=0, tokens=30, deadline=deadline, max_retry_after_s=None) is None
