"""The Python client's wait before a retry: a Retry-After honoured up to its cap, and a
backoff capped too when there is no usable one."""

from __future__ import annotations

import httpx
import pytest
from judge_client import JudgeClient


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0", 0.0), ("-3", 0.0), ("86400", 60.0), ("1e308", 60.0), ("inf", 60.0)],
)
def test_retry_after_is_honoured_up_to_the_cap(header: str, expected: float) -> None:
    judge = JudgeClient("http://127.0.0.1:9", retries=3)
    response = httpx.Response(429, headers={"Retry-After": header})
    assert judge._retry_delay(0, response) == expected
    judge.close()


@pytest.mark.parametrize("header", ["nan", "soon", None])
def test_backoff_without_a_usable_retry_after_is_capped_too(header: str | None) -> None:
    judge = JudgeClient("http://127.0.0.1:9", retries=10_000, backoff=0.5, max_retry_delay=5.0)
    response = httpx.Response(503, headers={"Retry-After": header} if header else {})
    delays = [judge._retry_delay(attempt, response) for attempt in (0, 1, 30, 5000)]
    assert all(d is not None and 0 < d <= 5.0 for d in delays), delays
    assert delays[0] <= 0.75  # the first backoff is still short: 0.5 s with jitter
    judge.close()
