"""Judge prompts: the text of every template, and its rendering in the model's chat template.

User text (instruction, response, rubric, criteria) is inserted as data with plain string
concatenation; it is never evaluated as a template. The model's own chat template then
receives it as message content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

PAIR_SYSTEM_PROMPT = (
    "You are an impartial judge. Compare two responses to the same task and decide which "
    "is better. Answer with the verdict number only."
)
DEFAULT_PAIR_CRITERIA = "Which response is more helpful, correct, relevant and clear?"
# The pairwise judge's labels: Response 1 much better, slightly better, tie, Response 2
# slightly better, much better.
VERDICT_LABELS = ("1", "2", "3", "4", "5")


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


def render_pair_message(instruction: str, first: str, second: str, criteria: str) -> str:
    """The pairwise judge's user turn for one order. Plain concatenation: user text stays literal."""
    return "\n\n".join(
        [
            "### Task\n" + instruction,
            "### Response 1\n" + first,
            "### Response 2\n" + second,
            "### Criteria\n" + criteria,
            "Verdicts:\n1: Response 1 is much better.\n2: Response 1 is slightly better.\n"
            "3: They are about equally good.\n4: Response 2 is slightly better.\n5: Response 2 is much better.",
            "Reply with one verdict number: 1, 2, 3, 4 or 5.",
        ]
    )


class Prompts:
    """Renders judge prompts in one tokenizer's chat template, ending where the label goes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def chat(self, system: str, user: str) -> str:
        """A system and a user turn in the model's chat template, ending where the answer goes."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def score(self, instruction: str, response: str, reference: str | None, rubric: Rubric) -> str:
        """The full prompt of a structured item."""
        return self.chat(SYSTEM_PROMPT, render_user_message(instruction, response, reference, rubric))

    def pair(self, instruction: str, first: str, second: str, criteria: str | None) -> str:
        """The full prompt of one order of a pair."""
        return self.chat(
            PAIR_SYSTEM_PROMPT, render_pair_message(instruction, first, second, criteria or DEFAULT_PAIR_CRITERIA)
        )
