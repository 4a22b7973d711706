"""Greedy generation for critique mode on the transformers engine.

A batch of prompts runs left-padded (positions counted from each row's first real token,
as the engine's scoring pass does), then one token per step on the KV cache. Each step
takes the engine's model lock on its own, so plain scoring batches run between the steps
of a long generation; the lock hands the model over in arrival order (``FairLock``), so a
waiting scoring batch goes next rather than racing the generation for the lock. Before
every step (the prefill's included) each row's ``CritiqueRow`` is read: a row whose
request was given up or whose deadline passed leaves the batch (its KV cache rows with
it), as a finished row does; the generation ends when no row is left.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.core.errors import EngineError
from service.core.tasks import CritiqueRow, ScoringTask
from service.engines import critique

logger = logging.getLogger(__name__)


class FairLock:
    """A lock granted in the order it was asked for (a ticket lock)."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._turn:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._turn.wait()

    def __exit__(self, *_: object) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()


class GenerationStopped(EngineError):
    """Every row of the generation was given up; it stopped before its next step."""


@dataclass(frozen=True)
class GreedyDecoder:
    """What greedy generation needs of a loaded model, all proven at load."""

    decoder: Any
    head: Any
    config: Any
    lock: FairLock
    device: torch.device
    pad_token_id: int
    stop_ids: Collection[int]
    decode: critique.Decode
    # Whether a left-padded batch runs exactly (else one prompt at a time) and whether the
    # KV cache can be continued exactly (else every step runs the whole sequence).
    batched: bool
    cached: bool
    accepts_position_ids: bool

    def generate(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow]
    ) -> list[tuple[list[int], bool] | None]:
        """Each task's generated tokens (the rule in ``service.engines.critique``) and whether its
        marker came; None for a row that ``rows`` gave up before its generation ended.
        Raises ``GenerationStopped`` when every row was given up."""
        if self.batched:
            results = self._generate(batch, rows)
        else:
            results = [self._generate([task], [row])[0] for task, row in zip(batch, rows, strict=True)]
        if all(result is None for result in results):
            raise GenerationStopped("the critique was given up")
        return results

    def _generate(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow]
    ) -> list[tuple[list[int], bool] | None]:
        from transformers import DynamicCache

        generated: list[list[int]] = [[] for _ in batch]
        found = [False] * len(batch)
        dropped = [False] * len(batch)
        going = list(range(len(batch)))  # the rows whose generation goes on
        live: list[int] = []  # the rows the model's inputs and KV cache hold, in order
        cache = DynamicCache(config=self.config) if self.cached else None
        mask = torch.zeros((0, 0), dtype=torch.long)
        while True:
            # One kept list before every step, the prefill's included: rows that finished
            # and rows given up (dropped, or past their deadline) leave the batch together.
            kept = []
            for row in going:
                if rows[row].wanted():
                    kept.append(row)
                else:
                    dropped[row] = True
            if not kept:
                break
            input_ids, mask, positions = self._inputs(batch, generated, live, kept, mask, cache)
            live = kept
            # Without explicit positions (a family whose decoder takes none), rows hold no
            # padding: ``batched`` is off for such a family.
            extra = {"position_ids": positions.to(self.device)} if self.accepts_position_ids else {}
            with self.lock, torch.inference_mode():
                out = self.decoder(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    past_key_values=cache,
                    use_cache=self.cached,
                    **extra,
                )
                chosen = self.head.logits(out.last_hidden_state[:, -1, :]).argmax(-1).tolist()
            going = []
            for row, token in zip(live, chosen, strict=True):
                task = batch[row]
                assert task.critique is not None
                ended = critique.extend(generated[row], int(token), task.critique, self.stop_ids, self.decode)
                rows[row].tokens = len(generated[row])
                if ended is None:
                    going.append(row)
                else:
                    found[row] = ended
        return [None if dropped[row] else (generated[row], found[row]) for row in range(len(batch))]

    def _inputs(
        self,
        batch: Sequence[ScoringTask],
        generated: Sequence[Sequence[int]],
        live: Sequence[int],
        kept: Sequence[int],
        mask: torch.Tensor,
        cache: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next step's input ids, attention mask and positions for the ``kept`` rows;
        the KV cache, which holds the ``live`` rows, is cut to them."""
        if not live or cache is None:
            # The prefill, or a model whose cache cannot be continued: whole sequences.
            input_ids, mask = self._padded([batch[row].token_ids + tuple(generated[row]) for row in kept])
            return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)
        if len(kept) < len(live):
            slot = {row: i for i, row in enumerate(live)}
            slots = [slot[row] for row in kept]
            cache.batch_select_indices(torch.tensor(slots, device=self.device))
            mask = mask[slots]
        input_ids = torch.tensor([[generated[row][-1]] for row in kept])
        mask = torch.cat([mask, torch.ones((len(kept), 1), dtype=torch.long)], dim=1)
        positions = torch.tensor([[batch[row].length + len(generated[row]) - 1] for row in kept])
        return input_ids, mask, positions

    def _padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(seq) for seq in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        return input_ids, mask
