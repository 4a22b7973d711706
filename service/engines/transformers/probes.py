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

import logging
from collections.abc import Sequence
from typing import Any

import torch

from service.core.errors import UnsupportedModel
from service.core.labels import LabelTrie
from service.core.tasks import LabelScores, ScoringTask
from service.engines.heads import architecture

logger = logging.getLogger(__name__)

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


def prove_paths(engine: Any) -> None:
    """Compare a transformers engine's paths with the model's own forward pass (this also
    warms the model up): one prompt alone must match, or the model is refused; if padded
    batches differ, the engine scores one item at a time; if the shared-prefix path
    differs, it is turned off; if labels continued on the KV cache differ, each label
    prefix runs as a prompt of its own."""
    model, name = engine.model, architecture(engine.model)
    padded_ids, prefixed_ids = probe_prompts(int(engine.head.weight.shape[0]))
    own = [own_logprobs(model, ids, engine.device) for ids in padded_ids + prefixed_ids]
    tasks = [
        probe_task(ids, logprobs, engine.supports_layers)
        for ids, logprobs in zip(padded_ids + prefixed_ids, own, strict=True)
    ]
    padded, prefixed = tasks[: len(padded_ids)], tasks[len(padded_ids) :]
    tol = logprob_tolerance(engine.dtype)
    # One prompt alone takes the plain causal path, as single items and unpadded batches do.
    alone = max_error(engine._score_batch(padded[:1]), padded[:1], own[:1])
    if alone > tol:
        raise UnsupportedModel(
            f"{name}: scoring a prompt alone differs from the model's own forward pass "
            f"by {alone:.3g} nats; the judge refuses to serve inexact scores"
        )
    if (error := _error(engine, padded, own[: len(padded)])) > tol:
        engine.batches_exact = False
        logger.warning("%s: padded batches are off by %.3g nats; scoring one item at a time", name, error)
    cache, engine.prefix_cache = engine.prefix_cache, None  # the in-batch path first, alone
    if engine.prefix_reuse and (error := _error(engine, prefixed, own[len(padded) :])) > tol:
        engine.prefix_reuse = False
        logger.warning("%s: shared-prefix batches are off by %.3g nats; no reuse", name, error)
    if engine.prefix_reuse and cache is not None:
        engine.prefix_cache = cache
        if (error := _prove_cache(engine, padded, prefixed, own)) > tol:
            engine.prefix_cache = None
            logger.warning("%s: prefixes cached across requests are off by %.3g nats; not kept", name, error)
    continued, expected = continuation_probe(
        model, padded_ids[:2] + prefixed_ids[:1], own[:2] + own[-3:-2], engine.device
    )
    if (error := _error(engine, continued, expected, forward=True)) > tol:
        engine.continue_in_cache = False
        logger.warning(
            "%s: labels continued on the KV cache are off by %.3g nats; label prefixes run as prompts", name, error
        )
    if engine.prefix_cache is not None:
        engine.prefix_cache.clear()  # serve from an empty cache, with counters at zero


def _prove_cache(engine: Any, padded: list[ScoringTask], prefixed: list[ScoringTask], own: Sequence[Any]) -> float:
    """The cross-request prefix cache's error: the prompts sharing a prefix once with an
    empty cache (the prefix is computed and kept), then again beside prompts of their own
    (rows on the kept prefix and rows on none, in one batch). The cache stays warm after,
    so the continuation probe reads labels on top of a cached prefix too."""
    engine.prefix_cache.clear()
    cold = _error(engine, prefixed, own[len(padded) :])
    if engine.prefix_cache is None or not engine.prefix_cache.entries:
        return float("inf")  # nothing was kept: the path did not run
    mixed = [prefixed[2], padded[1], prefixed[0], padded[2]]
    return max(cold, _error(engine, mixed, [own[-1], own[1], own[-3], own[2]]))


def _error(engine: Any, batch: list[ScoringTask], own: Sequence[Any], forward: bool = False) -> float:
    """The largest error of ``batch`` scored as one batch (through ``_forward``, with its
    fallbacks, when ``forward``) against ``own``; infinite where the path fails."""
    try:
        scored = engine._forward(batch) if forward else engine._score_batch(batch)
        return max_error(scored, batch, own)
    except Exception as exc:  # a path this family cannot run (e.g. a cache without batch repeat)
        logger.warning("%s: batched scoring fails: %r", architecture(engine.model), exc)
        return float("inf")
