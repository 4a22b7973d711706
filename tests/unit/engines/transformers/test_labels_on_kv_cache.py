"""The transformers engine reads labels of several tokens on top of each prompt's KV cache:
equal to direct forward passes over the prompt plus each label prefix, on every batch path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from service.core.labels import LabelTrie
from service.core.tasks import ScoringTask
from service.engines.transformers.engine import TransformersEngine
from tests.conftest import tiny_llama, trie_rule_logprobs

VOCAB = 64
# "10" = (1, 0), "1" = (1,), "2" = (2,), "123" = (1, 2, 3): prefixes of each other.
LABELS = [(1,), (2,), (1, 0), (1, 2, 3), (5, 6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A sharpened head: far from uniform, so errors would show.
    return tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB, head_scale=20)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> TransformersEngine:
    engine = TransformersEngine(model_dir, "tiny", pad_token_id=0, device="cpu")
    asyncio.run(engine.start())
    return engine


@torch.inference_mode()
def direct(model_dir: Path, prompt: tuple[int, ...]) -> list[float]:
    """log P(l) by the label-trie rule, one full forward pass per label prefix."""
    model = LlamaForCausalLM.from_pretrained(str(model_dir)).eval()

    def next_logprobs(prefix: tuple[int, ...]) -> torch.Tensor:
        logits = model(input_ids=torch.tensor([prompt + prefix])).logits[0, -1]
        return torch.log_softmax(logits.double(), dim=-1)

    return trie_rule_logprobs(LABELS, next_logprobs)


def task(prompt: tuple[int, ...]) -> ScoringTask:
    return ScoringTask.reading(prompt, LabelTrie.build(LABELS))


PROMPTS = [
    tuple(range(3, 20)),  # 17 tokens
    tuple(range(7, 12)),  # 5 tokens: left padding in a batch
    tuple((i * 7) % 60 + 3 for i in range(40)),
]


def test_labels_of_several_tokens_equal_direct_forward_passes(engine: TransformersEngine, model_dir: Path) -> None:
    want = [direct(model_dir, p) for p in PROMPTS]
    spread = max(want[0]) - min(want[0])
    assert spread > 2, "distributions too close to uniform to show errors"
    batched = asyncio.run(engine.score([task(p) for p in PROMPTS]))
    for result, expected in zip(batched, want, strict=True):
        assert result.logprobs == pytest.approx(expected, abs=1e-5)
    for prompt, expected in zip(PROMPTS, want, strict=True):
        (alone,) = asyncio.run(engine.score([task(prompt)]))
        assert alone.logprobs == pytest.approx(expected, abs=1e-5)


def test_continuations_on_a_shared_prefix_batch(engine: TransformersEngine, model_dir: Path) -> None:
    shared = tuple((i * 5) % 60 + 3 for i in range(36))  # over the 32-token reuse threshold
    prompts = [shared + tail for tail in ((9,), (10, 11, 12), (13, 14))]
    before = engine.prefix_tokens_reused
    results = asyncio.run(engine.score([task(p) for p in prompts]))
    assert engine.prefix_tokens_reused > before  # the shared-prefix path ran
    for prompt, result in zip(prompts, results, strict=True):
        assert result.logprobs == pytest.approx(direct(model_dir, prompt), abs=1e-5)


def test_single_and_multi_token_tasks_in_one_batch(engine: TransformersEngine, model_dir: Path) -> None:
    single = ScoringTask(token_ids=PROMPTS[0], label_ids=(1, 2, 5))
    mixed = asyncio.run(engine.score([single, task(PROMPTS[1])]))
    (alone,) = asyncio.run(engine.score([single]))
    assert mixed[0].logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    assert mixed[1].logprobs == pytest.approx(direct(model_dir, PROMPTS[1]), abs=1e-5)
