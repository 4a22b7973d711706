"""Critique mode on a tiny seeded model: the stopping rule, greedy generation against a
plain loop written here, batched against one-by-one, a stop between steps, and the
queue's own lane for critiques."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from service import critique
from service.batching import BatchQueue
from service.engines.base import Critique, ScoringTask
from service.engines.generation import GenerationStopped
from service.engines.transformers import TransformersEngine
from service.labels import LabelTrie
from service.metrics import Metrics
from tests.conftest import tiny_llama

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


def task(prompt: tuple[int, ...], critique_spec: Critique) -> ScoringTask:
    return ScoringTask.reading(prompt, LabelTrie.build([(1,), (2,), (2, 3)]), critique=critique_spec)


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


def test_the_rule_stops_at_the_marker_the_length_or_the_end() -> None:
    decode = critique.decoder(word_tokenizer())
    rule = spec(4, "w7 w8")
    assert critique.truncate([5, 7, 8, 9], rule, {EOS}, decode) == ([5, 7, 8], True)
    assert critique.truncate([5, 6, 9, 9, 7, 8], rule, {EOS}, decode) == ([5, 6, 9, 9], False)
    assert critique.truncate([5, EOS, 7, 8], rule, {EOS}, decode) == ([5], False)


def test_generation_is_greedy_and_batched_equals_one_by_one(engine: TransformersEngine, model_dir: Path) -> None:
    prompts = [(4, 5, 6), tuple(range(10, 30)), (9,)]
    tasks = [task(p, spec(12, "w17")) for p in prompts]
    together = asyncio.run(engine.critique(tasks))
    for prompt, t, batched in zip(prompts, tasks, together, strict=True):
        generated, found = greedy(model_dir, prompt, t.critique)
        assert batched.critique == critique.outcome(generated, found, critique.decoder(word_tokenizer()))
        (alone,) = asyncio.run(engine.critique([t]))
        assert alone.critique == batched.critique
        (read,) = asyncio.run(engine.score([t.after(generated, found)]))
        assert batched.logprobs == pytest.approx(read.logprobs, abs=1e-5)
        assert alone.logprobs == pytest.approx(read.logprobs, abs=1e-5)


def test_a_stopped_generation_ends_between_steps(engine: TransformersEngine) -> None:
    assert engine.generator is not None
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationStopped):
        engine.generator.generate([task((4, 5), spec(50, "never"))], stop)


def test_plain_items_overtake_a_running_critique(engine: TransformersEngine) -> None:
    async def run() -> list[str]:
        queue = BatchQueue(engine, Metrics(), max_queue=64, max_batch_size=8, max_wait_s=0.0)
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
    async def run() -> None:
        queue = BatchQueue(engine, Metrics(), max_queue=64, max_batch_size=8, max_wait_s=0.0)
        queue.start()
        submission = queue.submit([task((4, 5, 6), spec(200, "never"))], time.monotonic() + 120)
        await asyncio.sleep(0.05)
        submission.abandon("cancelled")
        started = time.monotonic()
        while queue.depth or queue._batches:  # the generation's batch ends at its next step
            await asyncio.sleep(0.01)
            assert time.monotonic() - started < 5
        await queue.close(0)

    asyncio.run(run())
