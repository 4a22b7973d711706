"""The batch lane on a real transformers engine with a tiny seeded model: it yields the
engine to online work, and its passes shrink while online work is recent."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.core.tasks import ScoringTask
from service.engines.transformers.engine import TransformersEngine
from service.jobs.lane import LANE_STARVE_S, BatchLane
from service.observability.metrics import Metrics
from service.scheduling.queue import BatchQueue
from tests.conftest import tiny_llama

VOCAB = 64
ONLINE_TOKEN = 63  # the first token of online tasks, so the log tells them apart


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    engine = TransformersEngine(
        tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB), "tiny", pad_token_id=0, device="cpu"
    )
    asyncio.run(engine.start())
    return engine


class Logged:
    """The real engine, with every pass it ran logged: (online?, items), in start order."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.passes: list[tuple[bool, int]] = []

    def __getattr__(self, name: str):
        # Everything else (batch cost, memory, budgets) is the real engine's.
        return getattr(self.engine, name)

    async def score(self, batch, **kwargs):
        self.passes.append((batch[0].token_ids[0] == ONLINE_TOKEN, len(batch)))
        return await self.engine.score(batch, **kwargs)

    async def critique(self, batch, rows, **kwargs):
        return await self.engine.critique(batch, rows, **kwargs)


def task(n: int, first: int = 1) -> ScoringTask:
    return ScoringTask(token_ids=(first, *((n + i) % 60 + 1 for i in range(24))), label_ids=(1, 2, 3))


async def lane_under_way(
    engine: TransformersEngine, lines: int
) -> tuple[Logged, BatchQueue, BatchLane, asyncio.Future[list]]:
    """A queue and a lane on the logged engine, the lane given ``lines`` tasks and its first
    pass started."""
    logged = Logged(engine)
    queue = BatchQueue(logged, Metrics(), max_queue=64, max_batch_size=8, max_wait_s=0.0)
    queue.start()
    lane = BatchLane(logged, lambda: queue.depth, max_batch_size=8, busy_items=2)
    lane.start()
    batch_work = asyncio.ensure_future(lane.run([task(n) for n in range(lines)]))
    while not logged.passes:
        await asyncio.sleep(0.001)
    return logged, queue, lane, batch_work


def test_online_work_waits_behind_at_most_one_lane_pass_and_lane_passes_shrink(engine: TransformersEngine) -> None:
    async def scenario() -> Logged:
        logged, queue, lane, batch_work = await lane_under_way(engine, lines=64)
        lane_passes_before = len(logged.passes)
        online = await queue.run([task(n, ONLINE_TOKEN) for n in range(3)], time.monotonic() + 60)
        assert len(online) == 3
        # Online arrived while a lane pass may have been running: at most that one ran first.
        first_online = next(i for i, (is_online, _) in enumerate(logged.passes) if is_online)
        assert first_online - lane_passes_before <= 1
        results = await batch_work
        assert len(results) == 64
        await lane.close()
        await queue.close(0)
        return logged

    logged = asyncio.run(scenario())
    first_online = next(i for i, (is_online, _) in enumerate(logged.passes) if is_online)
    before = [n for is_online, n in logged.passes[:first_online] if not is_online]
    after = [n for is_online, n in logged.passes[first_online + 1 :] if not is_online]
    assert before and max(before) > 2  # an idle engine: full lane passes
    assert after and max(after) <= 2  # online work recent: small lane passes


def test_lane_results_equal_the_queue_results(engine: TransformersEngine) -> None:
    async def scenario() -> tuple[list, list]:
        queue = BatchQueue(engine, Metrics(), max_queue=64, max_batch_size=8, max_wait_s=0.0)
        queue.start()
        lane = BatchLane(engine, lambda: queue.depth, max_batch_size=8, busy_items=2)
        lane.start()
        tasks = [task(n) for n in range(12)]
        from_lane = await lane.run(tasks)
        from_queue = [(await queue.run([t], time.monotonic() + 60))[0] for t in tasks]
        await lane.close()
        await queue.close(0)
        return from_lane, from_queue

    from_lane, from_queue = asyncio.run(scenario())
    for a, b in zip(from_lane, from_queue, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_back_to_back_online_requests_go_first_and_the_lane_still_progresses(engine: TransformersEngine) -> None:
    """A client that sends its next request as soon as it has an answer: between its requests
    the lane runs at most one pass (it yields to work that came within the gap), and the lane
    is not starved: it runs about one pass per LANE_STARVE_S."""

    async def scenario() -> tuple[Logged, float, int]:
        logged, queue, lane, batch_work = await lane_under_way(engine, lines=400)
        started = time.monotonic()
        first = len(logged.passes)
        while time.monotonic() - started < 3 * LANE_STARVE_S:
            await queue.run([task(0, ONLINE_TOKEN)], time.monotonic() + 60)
        took = time.monotonic() - started
        batch_work.cancel()
        await lane.close()
        await queue.close(0)
        return logged, took, first

    logged, took, first = asyncio.run(scenario())
    during = logged.passes[first:]
    online_at = [i for i, (is_online, _) in enumerate(during) if is_online]
    window = during[online_at[0] : online_at[-1] + 1]
    lane_runs = [n for is_online, n in window if not is_online]
    # Never two lane passes between online requests, and those few are small ones.
    assert all(window[i][0] or window[i + 1][0] for i in range(len(window) - 1))
    assert lane_runs and max(lane_runs) <= 2
    # The lane defers, but not forever: one pass per LANE_STARVE_S, give or take one.
    assert 1 <= len(lane_runs) <= took / LANE_STARVE_S + 1
