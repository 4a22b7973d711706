"""Judge prompts and rubrics: request items -> token ids, plus the deployment limits.

User text (instruction, response, rubric) is inserted as data with plain string
concatenation; it is never evaluated as a template. The model's own chat template then
receives it as message content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.engines.base import ScoringTask
from service.errors import ErrorKind, JudgeError
from service.pairwise import (
    DEFAULT_PAIR_CRITERIA,
    PAIR_SYSTEM_PROMPT,
    VERDICT_LABELS,
    render_pair_message,
)
from service.schemas import CompareRequest, ScoreItem, ScoreRequest

SYSTEM_PROMPT = (
    "You are an impartial judge. Read the task, the response and the scoring rubric, "
    "then grade the response. Answer with the score label only."
)

DEFAULT_CRITERIA = "Overall quality: is the response helpful, correct, relevant to the task, clear and complete?"

DEFAULT_SCORE_DESCRIPTIONS = {
    "1": "Very poor: wrong, irrelevant or unhelpful.",
    "2": "Poor: mostly unhelpful or with major errors.",
    "3": "Fair: partly helpful, with noticeable errors or omissions.",
    "4": "Good: helpful and correct, with minor issues.",
    "5": "Excellent: fully helpful, correct, clear and complete.",
}


@dataclass(frozen=True, slots=True)
class Rubric:
    criteria: str
    score_descriptions: tuple[tuple[str, str], ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.score_descriptions)


DEFAULT_RUBRIC = Rubric(DEFAULT_CRITERIA, tuple(DEFAULT_SCORE_DESCRIPTIONS.items()))


def render_user_message(instruction: str, response: str, reference: str | None, rubric: Rubric) -> str:
    """The judge's user turn. Plain concatenation: user text stays literal.

    The response comes last, so items that share an instruction and a rubric share the
    whole prompt up to their response: the engines reuse that prefix's KV cache.
    """
    scale = "\n".join(f"Score {label}: {text}" for label, text in rubric.score_descriptions)
    parts = ["### Task\n" + instruction, "### Rubric\n" + rubric.criteria + "\n" + scale]
    if reference is not None:
        parts.append("### Reference answer\n" + reference)
    parts.append("### Response to grade\n" + response)
    parts.append("Reply with one score from: " + ", ".join(rubric.labels) + ".")
    return "\n\n".join(parts)


class PromptBuilder:
    """Turns validated requests into scoring tasks for one tokenizer and model length."""

    def __init__(self, tokenizer: Any, max_model_len: int, max_items: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_items = max_items

    def chat(self, system: str, user: str) -> str:
        """A system and a user turn in the model's chat template, ending where the answer goes."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def render(self, item: ScoreItem, rubric: Rubric) -> str:
        """The full prompt text of a structured item, ending where the score token goes."""
        user = render_user_message(item.instruction or "", item.response or "", item.reference_answer, rubric)
        return self.chat(SYSTEM_PROMPT, user)

    def render_pair(self, instruction: str, first: str, second: str, criteria: str | None) -> str:
        user = render_pair_message(instruction, first, second, criteria or DEFAULT_PAIR_CRITERIA)
        return self.chat(PAIR_SYSTEM_PROMPT, user)

    def label_ids(self, labels: Sequence[str]) -> tuple[int, ...]:
        ids = []
        for label in labels:
            tokens = self.tokenizer.encode(label, add_special_tokens=False)
            if len(tokens) != 1:
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST,
                    f"label {label!r} is {len(tokens)} tokens for this model's tokenizer; "
                    "labels must be exactly one token",
                    {"label": label, "tokens": len(tokens)},
                )
            ids.append(tokens[0])
        return tuple(ids)

    def _check_count(self, count: int, what: str) -> None:
        if count > self.max_items:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"{count} {what} exceed the limit of {self.max_items} per request",
                {what: count, "max_items": self.max_items},
            )

    def _encode(self, text: str, index: int, name: str) -> tuple[int, ...]:
        token_ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        if not token_ids:
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"items[{index}] encodes to no tokens")
        if len(token_ids) > self.max_model_len:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"items[{index}] ({name!r}) is {len(token_ids)} tokens; the model accepts at most {self.max_model_len}",
                {"item": index, "prompt_tokens": len(token_ids), "max_model_len": self.max_model_len},
            )
        return token_ids

    def build_pairs(self, request: CompareRequest) -> list[ScoringTask]:
        """Two tasks per pair (A first, then B first) or one without swapping."""
        self._check_count(len(request.pairs), "pairs")
        label_ids = self.label_ids(VERDICT_LABELS)
        tasks = []
        for index, pair in enumerate(request.pairs):
            orders = [(pair.response_a, pair.response_b)]
            if request.swap:
                orders.append((pair.response_b, pair.response_a))
            for first, second in orders:
                text = self.render_pair(pair.instruction, first, second, request.criteria)
                tasks.append(ScoringTask(token_ids=self._encode(text, index, pair.id), label_ids=label_ids))
        return tasks

    def build(self, request: ScoreRequest, want_layers: bool) -> tuple[tuple[str, ...], list[ScoringTask]]:
        """Validate deployment limits and tokenise every item; raise before any work is queued."""
        self._check_count(len(request.items), "items")
        rubric = DEFAULT_RUBRIC
        if request.rubric is not None:
            rubric = Rubric(request.rubric.criteria, tuple(request.rubric.score_descriptions.items()))
        labels = request.label_set
        label_ids = self.label_ids(labels)
        tasks = []
        for index, item in enumerate(request.items):
            text = item.prompt if item.prompt is not None else self.render(item, rubric)
            token_ids = self._encode(text, index, item.id)
            tasks.append(ScoringTask(token_ids=token_ids, label_ids=label_ids, want_layers=want_layers))
        return labels, tasks
