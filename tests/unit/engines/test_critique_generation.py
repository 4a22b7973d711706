"""Critique mode on a tiny seeded model: the stopping rule, greedy generation against a
plain loop written here, batched against one-by-one, rows given up mid-generation, and
the scheduler's own passes for critiques."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from service.core.errors import ErrorKind, JudgeError
from service.core.labels import LabelTrie
from service.core.tasks import Critique, CritiqueRow, LabelScores, ScoringTask
from service.engines import critique
from service.engines.transformers.engine import TransformersEngine
from service.engines.transformers.generation import GenerationStopped
from service.observability.metrics import Metrics
from tests.conftest import scheduler_for, tiny_llama, trie_rule_logprobs

VOCAB = 64
EOS = 63


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One word per token id: token ``i`` is ``w<i>``, decoded with spaces between."""
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0", eos_token=f"w{EOS}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A sharp head, so greedy choices are far from ties.
    return tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB, head_scale=20.0)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> TransformersEngine:
    engine = TransformersEngine(model_dir, "tiny", pad_token_id=0, device="cpu", tokenizer=word_tokenizer())
    asyncio.run(engine.start())
    return engine


def spec(max_tokens: int, marker: str) -> Critique:
    return Critique(max_tokens, marker, tuple(word_tokenizer().encode(marker, add_special_tokens=False)))


LABELS = [(1,), (2,), (2, 3)]


def task(prompt: tuple[int, ...], critique_spec: Critique) -> ScoringTask:
    return ScoringTask.reading(prompt, LabelTrie.build(LABELS), critique=critique_spec)


def wanted(count: int) -> list[CritiqueRow]:
    return [CritiqueRow(time.monotonic() + 600) for _ in range(count)]


class GivenUpAfter(CritiqueRow):
    """A row its request gives up once ``steps`` generation steps have run (the engine
    reads a row's signal once before each step)."""

    def __init__(self, steps: int) -> None:
        super().__init__(time.monotonic() + 600)
        self.steps = steps
        self.reads = 0

    def wanted(self) -> bool:
        self.reads += 1
        if self.reads > self.steps:
            self.drop()
        return super().wanted()


@torch.inference_mode()
def greedy(model_dir: Path, prompt: tuple[int, ...], critique_spec: Critique) -> tuple[list[int], bool]:
    """The rule written out with full forward passes of the model loaded here."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    decode = critique.decoder(word_tokenizer())
    generated: list[int] = []
    while len(generated) < critique_spec.max_tokens:
        token = int(model(input_ids=torch.tensor([list(prompt) + generated])).logits[0, -1].argmax())
        if token == EOS:
            return generated, False
        generated.append(token)
        if critique_spec.marker in decode(generated):
            return generated, True
    return generated, False


@torch.inference_mode()
def read_after(model_dir: Path, token_ids: list[int]) -> list[float]:
    """log P(label) after ``token_ids`` by the label-trie rule, from direct forward passes
    (the LM head in float64, as the engine's on CPU)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    head = model.lm_head.weight.double()

    def next_logprobs(prefix: tuple[int, ...]) -> torch.Tensor:
        out = model(input_ids=torch.tensor([token_ids + list(prefix)]), output_hidden_states=True)
        return torch.log_softmax(out.hidden_states[-1][0, -1].double() @ head.T, dim=-1)

    return trie_rule_logprobs(LABELS, next_logprobs)


def assert_exact(model_dir: Path, t: ScoringTask, result: LabelScores | None) -> None:
    """``result`` is greedy generation done here for ``t`` alone, and the labels read after it
    (and after the marker, when it never came) by direct forward passes."""
    assert result is not None and t.critique is not None
    generated, found = greedy(model_dir, t.token_ids, t.critique)
    assert result.critique == critique.outcome(generated, found, critique.decoder(word_tokenizer()))
    read = list(t.token_ids) + generated + ([] if found else list(t.critique.marker_ids))
    assert list(result.logprobs) == pytest.approx(read_after(model_dir, read), abs=1e-5)


def test_the_rule_stops_at_the_marker_the_length_or_the_end() -> None:
    decode = critique.decoder(word_tokenizer())
    rule = spec(4, "w7 w8")
    assert critique.truncate([5, 7, 8, 9], rule, {EOS}, decode) == ([5, 7, 8], True)
    assert critique.truncate([5, 6, 9, 9, 7, 8], rule, {EOS}, decode) == ([5, 6, 9, 9], False)
    assert critique.truncate([5, EOS, 7, 8], rule, {EOS}, decode) == ([5], False)


def test_generation_is_greedy_and_batched_equals_one_by_one(engine: TransformersEngine, model_dir: Path) -> None:
    prompts = [(4, 5, 6), tuple(range(10, 30)), (9,)]
    tasks = [task(p, spec(12, "w17")) for p in prompts]
    together = asyncio.run(engine.critique(tasks, wanted(3)))
    for prompt, t, batched in zip(prompts, tasks, together, strict=True):
        assert batched is not None and t.critique is not None
        generated, found = greedy(model_dir, prompt, t.critique)
        assert batched.critique == critique.outcome(generated, found, critique.decoder(word_tokenizer()))
        (alone,) = asyncio.run(engine.critique([t], wanted(1)))
        assert alone is not None
        assert alone.critique == batched.critique
        (read,) = asyncio.run(engine.score([t.after(generated, found)]))
        assert batched.logprobs == pytest.approx(read.logprobs, abs=1e-5)
        assert alone.logprobs == pytest.approx(read.logprobs, abs=1e-5)


def test_a_generation_whose_rows_are_all_given_up_stops(engine: TransformersEngine) -> None:
    assert engine.generator is not None
    dropped, late = CritiqueRow(time.monotonic() + 60), CritiqueRow(time.monotonic() - 1)
    dropped.drop()
    tasks = [task((4, 5), spec(50, "never")), task((6, 7, 8), spec(50, "never"))]
    with pytest.raises(GenerationStopped):
        engine.generator.generate(tasks, [dropped, late])
    assert dropped.tokens == late.tokens == 0


def dropping_batch() -> list[ScoringTask]:
    """Three critiques; the middle one, the longest (a marker it never writes), is the one
    given up."""
    return [task((4, 5, 6), spec(8, "w17")), task(tuple(range(10, 30)), spec(60, "never")), task((9,), spec(8, "w17"))]


def passes(engine: TransformersEngine) -> int:
    """Model passes so far: every generation step and every read takes the model lock once."""
    return engine._lock._next


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_a_given_up_row_leaves_the_generation_and_the_others_stay_exact(
    engine: TransformersEngine, model_dir: Path, steps: int
) -> None:
    tasks = dropping_batch()
    before = passes(engine)
    full = asyncio.run(engine.critique(tasks, wanted(3)))
    full_passes = passes(engine) - before
    assert full[1] is not None and full[1].critique is not None
    assert full[1].critique.tokens > 8  # left alone, it outlasts the others
    rows = [*wanted(1), GivenUpAfter(steps), *wanted(1)]
    before = passes(engine)
    results = asyncio.run(engine.critique(tasks, rows))
    assert results[1] is None
    assert rows[1].tokens == steps
    assert passes(engine) - before < full_passes
    for row in (0, 2):
        assert_exact(model_dir, tasks[row], results[row])
        result = results[row]
        assert result is not None and result.critique is not None and rows[row].tokens == result.critique.tokens


@pytest.mark.parametrize("path", ["cached", "uncached", "one by one"])
def test_each_generation_path_drops_a_row_after_its_first_step(
    engine: TransformersEngine, model_dir: Path, path: str
) -> None:
    assert engine.generator is not None
    generator = replace(engine.generator, cached=path != "uncached", batched=path != "one by one")
    tasks = dropping_batch()
    rows = [*wanted(1), GivenUpAfter(1), *wanted(1)]
    generated = generator.generate(tasks, rows)
    assert generated[1] is None and rows[1].tokens == 1
    for row in (0, 2):
        spec_ = tasks[row].critique
        assert spec_ is not None
        assert generated[row] == greedy(model_dir, tasks[row].token_ids, spec_)


@pytest.mark.parametrize("how", ["cancelled", "deadline", "deadline seen by the engine"])
def test_a_request_given_up_leaves_the_generation_it_shares(
    engine: TransformersEngine, model_dir: Path, how: str
) -> None:
    """Two requests batched in the critique lane; one is given up after the generation
    started (cancelled, its wait timed out, or nobody waits and the engine finds its
    deadline passed): it alone leaves, after one step, and is counted as skipped."""
    kept_task = task((4, 5, 6), spec(8, "w17"))
    left_task = task(tuple(range(10, 30)), spec(200, "never"))

    async def run() -> tuple[Metrics, LabelScores, asyncio.Future[LabelScores]]:
        metrics = Metrics()
        queue = scheduler_for(engine, metrics)
        far = time.monotonic() + 120
        # Long enough for a slow machine's first step, short enough to wait out.
        left_deadline = far if how == "cancelled" else time.monotonic() + 6
        kept = queue.submit([kept_task], far)
        left = queue.submit([left_task], left_deadline)
        tickets = passes(engine)
        # Hold the model: the generation (both requests, one batch) waits at its first step.
        with engine._lock:
            queue.start()
            while passes(engine) < tickets + 2:
                await asyncio.sleep(0.01)
            assert time.monotonic() < left_deadline  # both rows took their first step
            if how == "cancelled":
                left.abandon("cancelled")
            elif how == "deadline":
                with pytest.raises(JudgeError) as late:
                    await left.wait(left_deadline)
                assert late.value.kind is ErrorKind.DEADLINE_EXCEEDED
            else:
                await asyncio.sleep(left_deadline - time.monotonic())
            await asyncio.sleep(0)  # the futures' callbacks (they drop the row) run first
        (result,) = await kept.wait(far)
        while queue.depth or queue._passes:
            await asyncio.sleep(0.01)
        await queue.close(0)
        return metrics, result, left.futures[0]

    metrics, result, left = asyncio.run(run())
    assert_exact(model_dir, kept_task, result)
    assert metrics.registry.get_sample_value("judge_batch_size_count") == 1
    assert metrics.registry.get_sample_value("judge_batch_size_sum") == 2
    reason = "cancelled" if how == "cancelled" else "deadline"
    assert metrics.items_skipped.labels(reason=reason)._value.get() == 1
    assert metrics.items_skipped.labels(reason="deadline" if how == "cancelled" else "cancelled")._value.get() == 0
    if how == "cancelled" or how == "deadline":
        assert left.cancelled()
    else:
        error = left.exception()
        assert isinstance(error, JudgeError) and error.kind is ErrorKind.DEADLINE_EXCEEDED
    # The given-up row generated its first token only, and that token is counted.
    assert result.critique is not None
    assert metrics.generated_tokens._value.get() == result.critique.tokens + 1


def test_plain_items_overtake_a_running_critique(engine: TransformersEngine) -> None:
    async def run() -> list[str]:
        queue = scheduler_for(engine)
        queue.start()
        done: list[str] = []
        far = time.monotonic() + 120
        long = queue.submit([task((4, 5, 6), spec(200, "never"))], far)
        long.futures[0].add_done_callback(lambda _: done.append("critique"))
        await asyncio.sleep(0.05)  # the generation is under way
        plain = queue.submit([ScoringTask((4, 5, 6), (1, 2))], far)
        await plain.wait(far)
        done.append("plain")
        (result,) = await long.wait(far)
        await queue.close(0)
        assert result.critique is not None and result.critique.tokens > 0
        return done

    assert asyncio.run(run()) == ["plain", "critique"]


def test_a_given_up_critique_stops_its_generation(engine: TransformersEngine) -> None:
    metrics = Metrics()

    async def run() -> None:
        queue = scheduler_for(engine, metrics)
        queue.start()
        submission = queue.submit([task((4, 5, 6), spec(200, "never"))], time.monotonic() + 120)
        await asyncio.sleep(0.05)
        submission.abandon("cancelled")
        started = time.monotonic()
        while queue.depth or queue._passes:  # the generation's batch ends at its next step
            await asyncio.sleep(0.01)
            assert time.monotonic() - started < 5
        await queue.close(0)

    asyncio.run(run())
    assert metrics.items_skipped.labels(reason="cancelled")._value.get() == 1
    assert metrics.generated_tokens._value.get() < 200  # what it generated before it stopped
