"""Load-time probes: the transformers engine's own paths against the model's own forward pass.

The engine does not run the model's ``forward`` to score: it runs the decoder on left-padded
batches (or a shared prefix's KV cache with right-padded suffixes), then applies the head
to the scoring position only. Whether padding, positions and caches give exactly what the
model computes for one prompt alone depends on the family (absolute positions, ALiBi,
recurrent or convolutional layers...). These probes score a few prompts of random tokens
each way and compare with ``log_softmax(model(input_ids).logits[0, -1])``; labels of several
tokens, read on top of each prompt's KV cache, are compared with the label-trie rule
applied to the model's own forward passes over the prompt plus each label prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from service.engines.base import LabelScores, ScoringTask
from service.labels import LabelTrie

# Prompt lengths of the padded probe; the prefix probe shares 40 tokens between 3 prompts.
PADDED_LENGTHS = (5, 17, 9, 33)
PREFIX_TOKENS, PREFIX_TAILS = 40, (2, 9, 5)
PROBE_LABELS = 64


def logprob_tolerance(dtype: torch.dtype) -> float:
    """How far a batched result may be from the model's own forward pass, in nats."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 0.1


def probe_prompts(vocab_size: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Prompts of random tokens without a common prefix, and prompts sharing a long one."""
    generator = torch.Generator().manual_seed(1234)

    def tokens(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(3, vocab_size, (n,), generator=generator).tolist())

    padded = [tokens(n) for n in PADDED_LENGTHS]
    shared = tokens(PREFIX_TOKENS)
    return padded, [shared + tokens(n) for n in PREFIX_TAILS]


@torch.inference_mode()
def own_logprobs(model: Any, token_ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The model's own forward pass on one prompt: full-vocabulary log-probabilities, float64."""
    logits = model(input_ids=torch.tensor([token_ids], device=device), use_cache=False).logits
    return torch.log_softmax(logits[0, -1].to(torch.float64), dim=-1).cpu()


def probe_task(token_ids: tuple[int, ...], own: torch.Tensor, want_layers: bool) -> ScoringTask:
    """Score the tokens the model itself finds likeliest, as judge labels are: where a wrong
    computation shows, and where half-precision rounding is smallest in nats."""
    return ScoringTask(token_ids, tuple(own.topk(PROBE_LABELS).indices.tolist()), want_layers)


def continuation_probe(
    model: Any, prompts: Sequence[tuple[int, ...]], own: Sequence[torch.Tensor], device: torch.device
) -> tuple[list[ScoringTask], list[torch.Tensor]]:
    """Tasks reading labels of one to three tokens (one a prefix of another) after
    ``prompts``, and each task's expected label log-probabilities: the label-trie rule
    applied to the model's own forward passes over each prompt plus each label prefix."""
    tasks, expected = [], []
    for prompt, logprobs in zip(prompts, own, strict=True):
        a, b, c = logprobs.topk(3).indices.tolist()
        trie = LabelTrie.build([(a,), (a, b), (b, c, a)])
        task = ScoringTask.reading(prompt, trie)
        rows = [logprobs[list(task.label_ids)].tolist()]
        for node, kids in zip(trie.continuations(), trie.children[1:], strict=True):
            rows.append(own_logprobs(model, prompt + node, device)[list(kids)].tolist())
        tasks.append(task)
        expected.append(torch.tensor(task.label_logprobs(rows), dtype=torch.float64))
    return tasks, expected


def max_error(got: Sequence[LabelScores], tasks: Sequence[ScoringTask], own: Sequence[torch.Tensor]) -> float:
    """The largest label log-probability difference between results and the model's own:
    ``own`` holds full-vocabulary rows (indexed by each task's label ids), or, for tasks
    with a label trie, the expected label log-probabilities themselves."""
    return max(
        float(
            (
                torch.tensor(result.logprobs, dtype=torch.float64)
                - (expected if task.trie is not None else expected[list(task.label_ids)])
            )
            .abs()
            .max()
        )
        for result, task, expected in zip(got, tasks, own, strict=True)
    )
