"""Greedy generation for critique mode on the transformers engine.

A batch of prompts runs left-padded (positions counted from each row's first real token,
as the engine's scoring pass does), then one token per step on the KV cache. Each step
takes the engine's model lock on its own, so plain scoring batches run between the steps
of a long generation; the lock hands the model over in arrival order (``FairLock``), so a
waiting scoring batch goes next rather than racing the generation for the lock. A stop
flag, checked before every step, ends a generation whose requests were given up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from service import critique
from service.engines.base import EngineError, ScoringTask

if TYPE_CHECKING:
    from service.engines.transformers import TransformersEngine

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
    """Every request of the generation was given up; it stopped between two steps."""


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

    def generate(self, batch: Sequence[ScoringTask], stop: threading.Event) -> list[tuple[list[int], bool]]:
        """Each task's generated tokens (the rule in ``service.critique``) and whether its
        marker came."""
        if self.batched:
            return self._generate(batch, stop)
        return [self._generate([task], stop)[0] for task in batch]

    def _generate(self, batch: Sequence[ScoringTask], stop: threading.Event) -> list[tuple[list[int], bool]]:
        from transformers import DynamicCache

        generated: list[list[int]] = [[] for _ in batch]
        found = [False] * len(batch)
        rows = list(range(len(batch)))  # the rows still generating
        cache = DynamicCache(config=self.config) if self.cached else None
        input_ids, mask = self._padded([task.token_ids for task in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        while rows:
            if stop.is_set():
                raise GenerationStopped("the critique was given up")
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
            for slot, (row, token) in enumerate(zip(rows, chosen, strict=True)):
                task = batch[row]
                assert task.critique is not None
                ended = critique.extend(generated[row], int(token), task.critique, self.stop_ids, self.decode)
                if ended is None:
                    going.append(slot)
                else:
                    found[row] = ended
            rows = [rows[slot] for slot in going]
            if not rows:
                break
            if cache is None:
                input_ids, mask = self._padded([batch[row].token_ids + tuple(generated[row]) for row in rows])
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                continue
            if len(going) < len(chosen):
                cache.batch_select_indices(torch.tensor(going, device=self.device))
                mask = mask[going]
            input_ids = torch.tensor([[generated[row][-1]] for row in rows])
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = torch.tensor([[batch[row].length + len(generated[row]) - 1] for row in rows])
        return list(zip(generated, found, strict=True))

    def _padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(seq) for seq in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        return input_ids, mask


def greedy_decoder(engine: TransformersEngine) -> GreedyDecoder | None:
    """The loaded engine's generator, on its proven decoder, head and paths; None (critique
    mode off, with a warning) when the model directory has no tokenizer."""
    if engine.tokenizer is None:
        from transformers import AutoTokenizer

        try:
            engine.tokenizer = AutoTokenizer.from_pretrained(str(engine.model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:  # a bare model directory (tests build such models)
            logger.warning("critique mode is off: the model directory has no tokenizer (%s)", exc)
            return None
    assert engine.layout is not None and engine.head is not None
    layout = engine.layout
    return GreedyDecoder(
        decoder=layout.decoder,
        head=engine.head,
        config=engine.model.config,
        lock=engine._lock,
        device=engine.device,
        pad_token_id=engine.pad_token_id,
        stop_ids=critique.stop_token_ids(engine.tokenizer, engine.model_dir),
        decode=critique.decoder(engine.tokenizer),
        batched=engine.batches_exact and layout.accepts_position_ids,
        cached=engine.continue_in_cache,
        accepts_position_ids=layout.accepts_position_ids,
    )
