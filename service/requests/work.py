"""Whether, and by when, a request's work can run: its deadline (its own timeout, else the
default, within the cap), its prompts against the queue, and each prompt against what one
batch may hold. Each check raises a ``JudgeError`` with both numbers, before any work."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.config import Settings
from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import ScoringTask
from service.engines.base import Engine


@dataclass(frozen=True)
class WorkLimits:
    """The deadline cap, the queue's size and the engine whose batches a prompt must fit."""

    request_timeout_s: float
    max_request_timeout_s: float
    max_queue: int | None = None
    # The engine that prices a prompt, and what one pass may hold (the memory plan's).
    engine: Engine | None = None
    memory_budget: int = 1 << 62

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine | None = None, memory_budget: int = 1 << 62
    ) -> WorkLimits:
        return cls(
            settings.request_timeout_s, settings.max_request_timeout_s, settings.max_queue, engine, memory_budget
        )

    def deadline(self, timeout_s: float | None, arrived: float | None = None) -> float:
        """The ``time.monotonic()`` instant by which a request that reached the server at
        ``arrived`` (default: now) must be answered."""
        timeout = min(timeout_s or self.request_timeout_s, self.max_request_timeout_s)
        return (time.monotonic() if arrived is None else arrived) + timeout

    def check_prompts(self, count: int) -> None:
        """A request's prompts must fit the queue at all, or it could never be admitted."""
        if self.max_queue is not None and count > self.max_queue:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"the request needs {count} prompts; the queue holds at most {self.max_queue}",
                {"prompts": count, "max_queue": self.max_queue},
            )

    def check_memory(self, tasks: Sequence[ScoringTask]) -> None:
        """Every prompt must fit one batch's memory alone (its cache, its activations and its
        label-trie nodes' smallest pass), or it could never run: 422 before any work."""
        if self.engine is None:
            return
        budget = self.memory_budget
        for index, task in enumerate(tasks):
            need = self.engine.batch_memory([task], self.engine.batch_cost([task]))
            if need > budget:
                nodes = len(task.trie.continuations()) if task.trie is not None else 0
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST,
                    f"prompt {index} of the request ({task.cost} tokens, {nodes} multi-token label prefixes) needs "
                    f"{need / 2**20:.0f} MiB to score; one batch may hold at most {budget / 2**20:.0f} MiB on this "
                    "server (JUDGE_MAX_BATCH_MEMORY_MB)",
                    {
                        "prompt": index,
                        "prompt_tokens": task.cost,
                        "label_prefixes": nodes,
                        "memory_mb": round(need / 2**20, 1),
                        "max_batch_memory_mb": round(budget / 2**20, 1),
                    },
                )
