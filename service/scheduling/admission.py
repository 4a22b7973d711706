"""Admission, the one place a request gets a 429: the queue has no room for its items
(``queue_full``), or the work already admitted would take it past its deadline
(``overloaded``); the queue asks both before it admits anything.

A request is admitted only if its predicted completion fits its deadline. The
prediction has two parts. The work: the tokens admitted and not yet computed (the
request's own included; label-trie nodes count, see ``ScoringTask.work``) over the
recently measured throughput, tokens the engine completed per second of busy time over a
window of recent batches. And one batch latency: results come when a whole batch ends, not
token by token, so the request's last item finishes at the end of a batch, up to one batch
after its share of the work is done. Busy time runs from the moment a batch starts while
none was running to the end of the last batch, so the gaps between back-to-back batches
count, idle stretches do not, and batches that run at once (vLLM) share one clock.
"""

from __future__ import annotations

import time
from collections import deque

from service.core.errors import ErrorKind, JudgeError

# Batches whose wall time makes up the batch latency.
LATENCY_SAMPLES = 16

# The predicted time to drain the work ahead of a request is stretched by this: batches
# form by length within the oldest items, so a request may wait a little longer than the
# work ahead of it alone would take.
ADMISSION_SAFETY = 1.25
# With nothing ahead of it, a request gets its chance unless it alone is predicted, at a
# rate measured on real batches, to miss its deadline by far (both factors): admitted, it
# would hold the engine past its deadline for everyone else (a transformers pass cannot be
# interrupted), with no chance to finish.
LONE_MISS_FACTOR = 2.0
LONE_MISS_S = 5.0


class Throughput:
    """Prompt tokens completed per second of busy time, over the last ``window_s`` of it."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()  # (busy seconds, tokens completed)
        self._busy_s = 0.0
        self._tokens = 0
        self._running = 0
        # Start of the busy time not yet attributed to a finished batch.
        self._since: float | None = None
        # A measurement taken before serving (the runtime's calibration): the rate until
        # real batches have been measured.
        self._prior: tuple[float, int] | None = None
        # Wall time of the most recent successful batches.
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def seed(self, busy_s: float, tokens: int) -> None:
        """A first measurement, used only until real batches replace it."""
        self._prior = (busy_s, tokens)

    @property
    def batch_latency_s(self) -> float | None:
        """Mean wall time of recent successful batches (the seed's before any)."""
        if self._latencies:
            return sum(self._latencies) / len(self._latencies)
        return self._prior[0] if self._prior is not None else None

    def batch_started(self, now: float) -> None:
        if self._running == 0:
            self._since = now
        self._running += 1

    def batch_finished(self, tokens: int, started: float, now: float) -> None:
        """A batch that began at ``started`` ended; ``tokens``: prompt tokens it completed
        (0 when it failed or was cancelled).

        Only completed work feeds the estimate: a batch that completed nothing adds no
        sample, so failures and disconnect-heavy traffic cannot drag the measured rate
        down and turn into 429s. Its busy time is dropped when nothing else runs; while
        other batches run it stays with them, as the time they shared with it."""
        self._running -= 1
        if not tokens:
            if not self._running:
                self._since = None
            return
        self._latencies.append(now - started)
        if self._since is not None:
            self.add(now - self._since, tokens)
        self._since = now if self._running else None

    def add(self, busy_s: float, tokens: int) -> None:
        self._samples.append((busy_s, tokens))
        self._busy_s += busy_s
        self._tokens += tokens
        while len(self._samples) > 1 and self._busy_s - self._samples[0][0] >= self.window_s:
            old_s, old_tokens = self._samples.popleft()
            self._busy_s -= old_s
            self._tokens -= old_tokens

    @property
    def measured(self) -> bool:
        """Whether the rate comes from real batches, not only the startup seed (one rough
        measurement, taken while the process may still share the machine with its load)."""
        return bool(self._samples)

    @property
    def tokens_per_s(self) -> float | None:
        """The measured rate; None before anything was measured."""
        if self._busy_s > 0 and self._tokens > 0:
            return self._tokens / self._busy_s
        if self._prior is not None and self._prior[0] > 0:
            return self._prior[1] / self._prior[0]
        return None

    def seconds_for(self, tokens: int) -> float | None:
        """Predicted seconds to complete ``tokens`` prompt tokens; None when unknown."""
        rate = self.tokens_per_s
        return None if rate is None else tokens / rate

    def completion_s(self, tokens: int, safety: float) -> float | None:
        """Predicted seconds until a request finishes with ``tokens`` admitted ahead of it
        and its own: the work at the measured rate, times ``safety``, plus one batch
        latency. None when nothing was measured."""
        drain, latency = self.seconds_for(tokens), self.batch_latency_s
        return None if drain is None or latency is None else drain * safety + latency


def queue_full(depth: int, requested: int, max_queue: int) -> JudgeError | None:
    """The 429 for a request whose items do not fit in the queue (``depth`` items admitted)."""
    if depth + requested <= max_queue:
        return None
    return JudgeError(
        ErrorKind.QUEUE_FULL,
        "the queue is full; retry later",
        {"queued": depth, "max_queue": max_queue, "requested": requested},
    )


def overloaded(
    throughput: Throughput, work: int, tokens: int, deadline: float, max_retry_after_s: float | None
) -> JudgeError | None:
    """The 429 for a request of ``tokens`` whose predicted completion, behind the ``work``
    its lane has admitted, misses its ``deadline``. With nothing admitted ahead of it in
    its lane, a request always gets its chance. ``max_retry_after_s``: the longest wait
    a Retry-After may ask for."""
    predicted = throughput.completion_s(work + tokens, ADMISSION_SAFETY)
    if predicted is None:
        return None
    budget = deadline - time.monotonic()
    if predicted <= budget:
        return None
    if work == 0 and (
        not throughput.measured or predicted < LONE_MISS_FACTOR * budget or predicted - budget < LONE_MISS_S
    ):
        return None
    # Work drains at the measured rate, so the request would fit after this long (capped).
    wait = min(predicted - budget, max_retry_after_s or predicted)
    return JudgeError(
        ErrorKind.OVERLOADED,
        "the request cannot finish within its deadline at the current load; retry later",
        {"predicted_s": round(predicted, 3), "deadline_s": round(max(0.0, budget), 3)},
        retry_after_s=wait,
    )
