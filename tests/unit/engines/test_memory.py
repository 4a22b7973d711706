"""Memory is bounded by what a batch holds: the cost model against real caches, label-trie
nodes run within the budget, batches split by memory, the 422 for a prompt that cannot fit
alone, and given-up items leaving their lane at once. On a real transformers engine with a
tiny seeded model."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from service.core.errors import ErrorKind, JudgeError
from service.core.labels import LabelTrie
from service.core.tasks import ScoringTask
from service.engines.memory import PassMemory, batch_memory_budget
from service.engines.transformers.engine import TransformersEngine
from service.observability.metrics import Metrics
from service.requests.work import WorkLimits
from service.scheduling.submission import Priority
from tests.conftest import scheduler_for, tiny_llama

VOCAB = 64


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    engine = TransformersEngine(tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB), "tiny", 0, device="cpu")
    asyncio.run(engine.start())
    return engine


def prompt(length: int, first: int = 1, step: int = 1) -> tuple[int, ...]:
    return tuple((first + i * step) % (VOCAB - 1) + 1 for i in range(length))


def with_budget(engine: TransformersEngine, budget: int) -> TransformersEngine:
    """A second handle on the same loaded model with its own memory budget and no prefix cache."""
    other = TransformersEngine.__new__(TransformersEngine)
    other.__dict__.update(engine.__dict__)
    other.prefix_cache = None
    other.prefix_reuse = False
    other.limit_pass_memory(budget)
    return other


def test_kv_bytes_per_token_are_those_a_real_cache_holds(engine: TransformersEngine) -> None:
    from transformers import DynamicCache

    memory = PassMemory.of(engine.model.config, 4)
    cache = DynamicCache(config=engine.model.config)
    with torch.inference_mode():
        engine.model(input_ids=torch.tensor([prompt(10), prompt(10, 5)]), past_key_values=cache, use_cache=True)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    # 2 layers x (keys, values) x 2 kv heads x head dim 8 x fp32, per token, 2 rows of 10.
    assert memory.kv_token == 2 * 2 * 2 * 8 * 4
    assert held == 2 * 10 * memory.kv_token


def test_batch_memory_counts_every_row_over_the_full_width_and_the_trie_nodes(engine: TransformersEngine) -> None:
    plain = with_budget(engine, 1 << 40)
    memory = plain.pass_memory
    assert memory is not None
    short, long = ScoringTask(prompt(4), (1, 2)), ScoringTask(prompt(40), (1, 2))
    cost = plain.batch_cost([short, long])
    assert plain.batch_memory([short, long], cost) >= 2 * 40 * memory.kv_token
    trie = LabelTrie.build([(3, 4, 5, 6), (3, 4, 7), (8,)])
    labelled = ScoringTask.reading(prompt(40), trie)
    alone = plain.batch_memory([long], plain.batch_cost([long]))
    # The prompt's cache and one node row beside it: a copy of the row plus 2 label tokens.
    assert plain.batch_memory([labelled], plain.batch_cost([labelled])) >= alone + 42 * memory.kv_token


def test_trie_nodes_run_within_the_budget_and_score_the_same(engine: TransformersEngine) -> None:
    labels = [tuple(prompt(6, first=k, step=3)) for k in range(1, 9)]
    tasks = [ScoringTask.reading(prompt(60, first=k), LabelTrie.build(labels)) for k in (1, 2)]
    free = with_budget(engine, 1 << 40)
    tight_budget = free.batch_memory(tasks, free.batch_cost(tasks))
    tight = with_budget(engine, tight_budget)
    nodes = sum(len(task.trie.continuations()) for task in tasks if task.trie is not None)
    assert tight._nodes_per_pass(2, 60, 5) < nodes  # the nodes take several passes
    expected = [asyncio.run(free.score([task]))[0].logprobs for task in tasks]
    for got, want in zip(asyncio.run(tight.score(tasks)), expected, strict=True):
        assert got.logprobs == pytest.approx(want, abs=1e-5)


def test_batches_split_by_memory_and_score_as_one_by_one(engine: TransformersEngine) -> None:
    shared = prompt(120)
    tasks = [ScoringTask(shared + prompt(3, first=k), (1, 2, 3)) for k in range(12)]
    free = with_budget(engine, 1 << 40)
    # A compute budget that takes all 12 in one batch, a memory budget that holds 4 rows.
    four = free.batch_memory(tasks[:4], free.batch_cost(tasks[:4]))
    tight = with_budget(engine, four)
    seen: list[int] = []

    async def run() -> list:
        scored = tight.score

        async def recording(batch, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(len(batch))
            return await scored(batch, **kwargs)

        tight.score = recording  # type: ignore[method-assign]
        queue = scheduler_for(tight, budget=free.batch_cost(tasks), memory_budget=four, max_batch_size=32)
        queue.start()
        results = await queue.run(tasks, asyncio.get_running_loop().time() + 600)
        await queue.close(1)
        return results

    results = asyncio.run(run())
    assert max(seen) <= 4 and sum(seen) == 12
    for task, got in zip(tasks, results, strict=True):
        want = asyncio.run(free.score([task]))[0]
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)


def test_a_prompt_that_cannot_fit_alone_is_refused_before_any_work(engine: TransformersEngine) -> None:
    small = with_budget(engine, 1)
    limits = WorkLimits(request_timeout_s=10, max_request_timeout_s=10, engine=small, memory_budget=1)
    task = ScoringTask(prompt(50), (1, 2))
    with pytest.raises(JudgeError) as refused:
        limits.check_memory([task])
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert "JUDGE_MAX_BATCH_MEMORY_MB" in refused.value.message
    assert refused.value.details["prompt_tokens"] == 50
    limits = replace(limits, memory_budget=small.batch_memory([task], small.batch_cost([task])))
    limits.check_memory([task])  # exactly its own size fits


def test_given_up_items_leave_their_lane_while_a_pass_runs(engine: TransformersEngine) -> None:
    gate = asyncio.Event

    class Held:
        """The real engine, whose passes wait for a gate: a long pass holding the slot."""

        def __init__(self) -> None:
            self.open = gate()
            self.pass_budget = engine.pass_budget
            self.batch_cost, self.batch_memory = engine.batch_cost, engine.batch_memory

        async def score(self, batch, **kwargs):  # type: ignore[no-untyped-def]
            await self.open.wait()
            return await engine.score(batch, **kwargs)

    async def run() -> tuple[int, Metrics]:
        held, metrics = Held(), Metrics()
        queue = scheduler_for(held, metrics, max_batch_size=1)
        queue.start()
        far = asyncio.get_running_loop().time() + 600
        running = queue.submit([ScoringTask(prompt(5), (1, 2))], far)
        while not running.started:
            await asyncio.sleep(0.01)
        for _ in range(200):  # submit and leave, again and again, while the pass runs
            queue.submit([ScoringTask(prompt(5, 2), (1, 2))] * 4, far).abandon("cancelled")
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        waiting = queue.batch_waiting + len(queue._plain.pending[Priority.ONLINE])
        held.open.set()
        await running.wait(far)
        await queue.close(1)
        return waiting, metrics

    waiting, metrics = asyncio.run(run())
    assert waiting == 0
    assert metrics.items_skipped.labels(reason="cancelled")._value.get() == 800


def test_the_default_budget_is_the_limit_less_the_model_and_the_prefix_cache() -> None:
    mib = 1 << 20
    assert batch_memory_budget(512, 4096, 1000 * mib, 0) == 512 * mib  # the setting wins
    budget = batch_memory_budget(None, 4096, 1500 * mib, 1024 * mib)
    assert budget == int(4096 * mib * 0.9) - 1500 * mib - 1024 * mib
