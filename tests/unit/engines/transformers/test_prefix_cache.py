"""The transformers engine's cross-request prefix cache: prompts that share a prefix with an
earlier request start from its KV cache, and every result equals the model's own forward
pass over the whole prompt, with eviction, with concurrent requests, with labels of several
tokens and per-layer rows (on the real default model behind the HTTP server:
tests/e2e/test_prefix_cache_served.py)."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from service.core.labels import LabelTrie
from service.core.tasks import ScoringTask
from service.engines.transformers.engine import TransformersEngine
from service.engines.transformers.prefix_cache import PASS_OVERHEAD_TOKENS, passes_by_rest
from tests.conftest import scheduler_for, tiny_llama, trie_rule_logprobs

VOCAB = 64
LABELS = tuple(range(3, 40))
# Labels of several tokens, prefixes of each other.
TRIE_LABELS = [(1,), (2,), (1, 0), (1, 2, 3), (5, 6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A sharpened head: far from uniform, so errors would show.
    return tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB, head_scale=20)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(str(model_dir)).eval()


def engine_with(model_dir: Path, cache_bytes: int = 1 << 30) -> TransformersEngine:
    engine = TransformersEngine(model_dir, "tiny", pad_token_id=0, device="cpu", prefix_cache_bytes=cache_bytes)
    asyncio.run(engine.start())
    assert engine.prefix_cache is not None, "the load-time probe turned the cache off"
    return engine


@torch.inference_mode()
def own(model: LlamaForCausalLM, prompt: tuple[int, ...]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1)


def contexts(count: int, length: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    system = tuple(rng.randrange(3, VOCAB) for _ in range(36))  # shared by every context
    return [system + tuple(rng.randrange(3, VOCAB) for _ in range(length)) for _ in range(count)]


def responses(context: tuple[int, ...], count: int, rng: random.Random) -> list[tuple[int, ...]]:
    return [context + tuple(rng.randrange(3, VOCAB) for _ in range(rng.randrange(1, 20))) for _ in range(count)]


def assert_own(model: LlamaForCausalLM, tasks: list[ScoringTask], results) -> float:
    """Every result equals the model's own forward pass over its whole prompt; the spread of
    the first distribution (to show the check can fail)."""
    for task, result in zip(tasks, results, strict=True):
        want = own(model, task.token_ids)[list(task.label_ids)]
        assert result.logprobs == pytest.approx(want.tolist(), abs=1e-4)
    first = own(model, tasks[0].token_ids)[list(tasks[0].label_ids)]
    return float(first.max() - first.min())


def test_requests_sharing_a_context_start_from_its_cached_prefix(model_dir: Path, model: LlamaForCausalLM) -> None:
    engine = engine_with(model_dir)
    rng = random.Random(1)
    prompts = [p for context in contexts(3, 60, seed=1) for p in responses(context, 4, rng)]
    tasks = [ScoringTask(p, LABELS) for p in prompts]
    results = [asyncio.run(engine.score([task]))[0] for task in tasks]  # one request each
    assert assert_own(model, tasks, results) > 2
    cache = engine.prefix_cache
    assert cache is not None
    # Each context's first prompt finds nothing; the second starts from the first, kept whole;
    # the rest start from the context's prefix, kept from then on.
    assert cache.hits >= 3 * 3 and cache.misses <= 3
    assert engine.prefix_tokens_reused >= 3 * 3 * 60


def test_eviction_keeps_the_cache_within_its_budget_and_results_exact(model_dir: Path, model: LlamaForCausalLM) -> None:
    context_bytes = 2 * 2 * 2 * 8 * 4 * 100  # layers x (k, v) x heads x dim x fp32 x ~100 tokens
    engine = engine_with(model_dir, cache_bytes=3 * context_bytes)
    cache = engine.prefix_cache
    assert cache is not None
    rng = random.Random(2)
    pool = contexts(6, 60, seed=2)
    tasks, results = [], []
    for _ in range(3):
        for context in pool:  # six contexts cycling through room for about two
            for _ in range(2):  # the first request keeps the context, the second starts from it
                batch = [ScoringTask(p, LABELS) for p in responses(context, 2, rng)]
                tasks += batch
                results += asyncio.run(engine.score(batch))
                assert cache.bytes <= 3 * context_bytes
    assert_own(model, tasks, results)
    # Each round found its contexts evicted by the others: as many misses as first requests.
    assert cache.entries < len(pool) and cache.misses >= 3 * len(pool) * 2 and cache.hits >= 3 * len(pool) * 2


def test_concurrent_requests_through_the_queue_are_exact(model_dir: Path, model: LlamaForCausalLM) -> None:
    engine = engine_with(model_dir)
    rng = random.Random(3)
    prompts = [p for context in contexts(4, 50, seed=3) for p in responses(context, 5, rng)]
    rng.shuffle(prompts)
    tasks = [ScoringTask(p, LABELS, want_layers=True) for p in prompts]

    async def run() -> list:
        queue = scheduler_for(engine, max_batch_size=4)
        queue.start()
        deadline = asyncio.get_running_loop().time() + 60
        submissions = [queue.submit([task], deadline) for task in tasks]
        answers = await asyncio.gather(*(s.wait(deadline) for s in submissions))
        await queue.close(1)
        return [a[0] for a in answers]

    results = asyncio.run(run())
    assert_own(model, tasks, results)
    assert engine.prefix_cache is not None and engine.prefix_cache.hits > 0
    # Per-layer rows on cached prefixes equal those of the same prompts run afresh.
    engine.prefix_reuse = False
    try:
        fresh = asyncio.run(engine.score(tasks[:6]))
    finally:
        engine.prefix_reuse = True
    for got, want in zip(results[:6], fresh, strict=True):
        for a, b in zip(got.layer_logits, want.layer_logits, strict=True):
            assert a == pytest.approx(b, abs=1e-4)


def test_labels_of_several_tokens_on_cached_prefixes(model_dir: Path, model: LlamaForCausalLM) -> None:
    engine = engine_with(model_dir)
    rng = random.Random(4)
    prompts = [p for context in contexts(2, 40, seed=4) for p in responses(context, 3, rng)]
    trie = LabelTrie.build(TRIE_LABELS)
    results = []
    for start in range(0, len(prompts), 2):
        results += asyncio.run(engine.score([ScoringTask.reading(p, trie) for p in prompts[start : start + 2]]))
    assert engine.prefix_cache is not None and engine.prefix_cache.hits > 0

    def direct(prompt: tuple[int, ...]) -> list[float]:
        return trie_rule_logprobs(TRIE_LABELS, lambda prefix: own(model, prompt + prefix))

    for prompt, result in zip(prompts, results, strict=True):
        assert result.logprobs == pytest.approx(direct(prompt), abs=1e-4)


def test_passes_by_rest_is_the_cheapest_split() -> None:
    def cost(groups, rests) -> int:
        return sum(PASS_OVERHEAD_TOKENS + max(rests[i] for i in g) * len(g) for g in groups)

    rng = random.Random(5)
    for _ in range(50):
        rests = [rng.choice([rng.randrange(1, 40), rng.randrange(300, 900)]) for _ in range(rng.randrange(1, 7))]
        groups = passes_by_rest(rests)
        assert sorted(i for g in groups for i in g) == list(range(len(rests)))
        order = sorted(range(len(rests)), key=lambda i: rests[i])
        # Every split of the sorted rows into contiguous passes.
        best = min(
            cost([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], rests)
            for n in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), n)
        )
        assert cost(groups, rests) == best
    assert len(passes_by_rest([700, 20, 25, 30])) == 2  # one long new context, three short rests


def test_vllm_tasks_sharing_a_prefix_wait_for_one_of_them() -> None:
    """The vLLM engine's counterpart within a batch: requests in one engine step would each
    compute a shared prefix, so all but one wait for the first to finish."""
    from service.engines.vllm.engine import PREFIX_FIRST_TOKENS, prefix_leaders

    rng = random.Random(6)
    shared = tuple(rng.randrange(3, VOCAB) for _ in range(PREFIX_FIRST_TOKENS))
    other = tuple(rng.randrange(3, VOCAB) for _ in range(PREFIX_FIRST_TOKENS))
    prompts = [(*shared, 5), (*other, 7), (*shared, 6, 1), (9, 9), (*other, 8), (*shared[:-1], 4)]
    leaders = prefix_leaders([ScoringTask(p, LABELS) for p in prompts])
    groups = {0: 0, 2: 0, 1: 1, 4: 1}  # prompt -> its group; 3 and 5 share too little
    for i, lead in enumerate(leaders):
        if i in groups:
            assert lead is None or groups.get(lead) == groups[i]
        else:
            assert lead is None
    for group in (0, 1):
        members = [i for i, g in groups.items() if g == group]
        assert sum(leaders[i] is None for i in members) == 1  # one goes first, the others wait for it
