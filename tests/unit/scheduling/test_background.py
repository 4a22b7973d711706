"""The scheduler's batch priority on a real transformers engine with a tiny seeded model:
batch work yields the engine to online work, its passes shrink while online work is
recent, and it rests between them so that it takes at most its share of the engine."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from service.core.tasks import ScoringTask
from service.engines.transformers.engine import TransformersEngine
from service.scheduling.background import BUSY_SHARE, RECENT_ONLINE_S, STARVE_S
from service.scheduling.scheduler import Priority, Scheduler
from tests.conftest import scheduler_for, tiny_llama

VOCAB = 64
ONLINE_TOKEN = 63  # the first token of online tasks, so the log tells them apart


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    engine = TransformersEngine(
        tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB), "tiny", pad_token_id=0, device="cpu"
    )
    asyncio.run(engine.start())
    return engine


@pytest.fixture(scope="module")
def slower_engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    """A wider random model whose passes over a few hundred tokens take tens of ms on CPU."""
    path = tiny_llama(
        tmp_path_factory.mktemp("wider"), VOCAB, hidden_size=384, intermediate_size=1024,
        num_hidden_layers=4, num_attention_heads=6, max_position_embeddings=512,
    )  # fmt: skip
    engine = TransformersEngine(path, "wider", pad_token_id=0, device="cpu")
    asyncio.run(engine.start())
    return engine


class Logged:
    """The real engine, with every pass it ran logged: (online?, items), in start order, and
    each pass's (online?, started, ended) in ``timed``."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.passes: list[tuple[bool, int]] = []
        self.timed: list[tuple[bool, float, float]] = []

    def __getattr__(self, name: str):
        # Everything else (batch cost, memory, budgets) is the real engine's.
        return getattr(self.engine, name)

    async def score(self, batch, **kwargs):
        online = batch[0].token_ids[0] == ONLINE_TOKEN
        self.passes.append((online, len(batch)))
        started = time.monotonic()
        try:
            return await self.engine.score(batch, **kwargs)
        finally:
            self.timed.append((online, started, time.monotonic()))

    async def critique(self, batch, rows, **kwargs):
        return await self.engine.critique(batch, rows, **kwargs)


def task(n: int, first: int = 1, length: int = 24) -> ScoringTask:
    # Tokens that differ from the second on, so that no pass reuses another's prefix.
    return ScoringTask(token_ids=(first, *((n + i * (n % 7 + 1)) % 60 + 1 for i in range(length))), label_ids=(1, 2, 3))


async def lane_under_way(
    engine: TransformersEngine, lines: int, length: int = 24, max_batch_size: int = 8
) -> tuple[Logged, Scheduler, asyncio.Future[list]]:
    """A scheduler on the logged engine, given ``lines`` batch tasks of ``length`` tokens and
    its first batch pass started."""
    logged = Logged(engine)
    # A warm engine: a cold first pass (and the rest after it) would outlast online work's recency.
    await engine.score([task(n, length=length) for n in range(max_batch_size)])
    queue = scheduler_for(logged, max_batch_size=max_batch_size)
    queue.start()
    lines_in = [task(n, length=length) for n in range(lines)]
    batch_work = asyncio.ensure_future(queue.run(lines_in, math.inf, None, Priority.BATCH))
    while not logged.passes:
        await asyncio.sleep(0.001)
    return logged, queue, batch_work


def test_online_work_waits_behind_at_most_one_lane_pass_and_lane_passes_shrink(engine: TransformersEngine) -> None:
    async def scenario() -> Logged:
        logged, queue, batch_work = await lane_under_way(engine, lines=64)
        lane_passes_before = len(logged.passes)
        online = await queue.run([task(n, ONLINE_TOKEN) for n in range(3)], time.monotonic() + 60)
        assert len(online) == 3
        # Online arrived while a lane pass may have been running: at most that one ran first.
        first_online = next(i for i, (is_online, _) in enumerate(logged.passes) if is_online)
        assert first_online - lane_passes_before <= 1
        results = await batch_work
        assert len(results) == 64
        await queue.close(0)
        return logged

    logged = asyncio.run(scenario())
    # Passes run one at a time: their start order is their end order.
    passes = [(online, n, started) for (online, n), (_, started, _) in zip(logged.passes, logged.timed, strict=True)]
    first_online = next(i for i, (is_online, _, _) in enumerate(passes) if is_online)
    online_ended = logged.timed[first_online][2]
    before = [n for is_online, n, _ in passes[:first_online] if not is_online]
    after = [
        n for is_online, n, at in passes[first_online + 1 :] if not is_online and at < online_ended + RECENT_ONLINE_S
    ]
    assert before and max(before) > 2  # an idle engine: full lane passes
    assert after and max(after) <= 1  # online work recent: small lane passes (an eighth of 8 items)


def test_lane_results_equal_the_queue_results(engine: TransformersEngine) -> None:
    async def scenario() -> tuple[list, list]:
        queue = scheduler_for(engine)
        queue.start()
        tasks = [task(n) for n in range(12)]
        from_lane = await queue.run(tasks, math.inf, None, Priority.BATCH)
        from_queue = [(await queue.run([t], time.monotonic() + 60))[0] for t in tasks]
        await queue.close(0)
        return from_lane, from_queue

    from_lane, from_queue = asyncio.run(scenario())
    for a, b in zip(from_lane, from_queue, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_back_to_back_online_requests_go_first_and_the_lane_still_progresses(engine: TransformersEngine) -> None:
    """A client that sends its next request as soon as it has an answer: between its requests
    the lane runs at most one pass (it yields to work that came within the gap), and the lane
    is not starved: it runs about one pass per STARVE_S."""

    async def scenario() -> tuple[Logged, float, int]:
        logged, queue, batch_work = await lane_under_way(engine, lines=400)
        started = time.monotonic()
        first = len(logged.passes)
        while time.monotonic() - started < 3 * STARVE_S:
            await queue.run([task(0, ONLINE_TOKEN)], time.monotonic() + 60)
        took = time.monotonic() - started
        batch_work.cancel()
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
    # The lane defers, but not forever: one pass per STARVE_S, give or take one.
    assert 1 <= len(lane_runs) <= took / STARVE_S + 1


def test_lane_passes_shrink_to_a_part_of_the_budget_and_rest_while_online_work_pauses(
    slower_engine: TransformersEngine,
) -> None:
    """A client that pauses between its requests (longer than the lane's gap): lane passes of
    300-token lines then hold one line (an eighth of the 2,048-token budget, where the item
    cap, an eighth of 64, would allow 8), and the lane rests after each, so it takes at most its share of the
    engine and most online requests meet no lane pass."""

    async def scenario() -> tuple[Logged, float, float]:
        logged, queue, batch_work = await lane_under_way(slower_engine, lines=300, length=300, max_batch_size=64)
        await queue.run([task(0, ONLINE_TOKEN)], time.monotonic() + 60)
        started = time.monotonic()
        for n in range(40):
            await queue.run([task(n, ONLINE_TOKEN)], time.monotonic() + 60)
            await asyncio.sleep(0.08)
        ended = time.monotonic()
        batch_work.cancel()
        await queue.close(0)
        return logged, started, ended

    logged, started, ended = asyncio.run(scenario())
    assert slower_engine.pass_budget == 2048
    during = [(online, a, b) for online, a, b in logged.timed if started <= a and b <= ended]
    first_online = next(i for i, (online, _) in enumerate(logged.passes) if online)
    assert max(n for online, n in logged.passes[:first_online] if not online) > 1  # idle: full passes
    assert all(n == 1 for online, n in logged.passes[first_online + 1 :] if not online)
    lane_passes = [(a, b) for online, a, b in during if not online]
    assert lane_passes  # the lane still progresses
    assert sum(b - a for a, b in lane_passes) / (ended - started) <= BUSY_SHARE + 0.05
    # An online request that came while a lane pass ran waited for it.
    online_calls = [a for online, a, _ in during if online]
    waited = sum(any(la <= a < lb for la, lb in lane_passes) for a in online_calls)
    assert waited <= len(online_calls) / 2
