"""Judge prompts: the text of every template, and its rendering in the model's chat template.

User text (instruction, response, rubric, criteria) is inserted as data with plain string
concatenation; it is never evaluated as a template. The model's own chat template then
receives it as message content.
"""

from __future__ import annotations

import hashlib
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

# The orders of the judge's user turn. "default" puts the response last, so the items of a
# batch that share an instruction and a rubric share everything before their response.
# "rubric_last" puts the rubric last, so the criteria of one item (``rubrics``) share
# everything before their rubric: the instruction and the response.
TEMPLATES = ("default", "rubric_last")
# Raw prompts are used verbatim: nothing but the item's own text shapes them.
RAW_TEMPLATE = "raw"
# Stand-ins for an item's text when a template is rendered for its version.
_SLOTS = ("\x00instruction\x00", "\x00response\x00", "\x00reference\x00")


@dataclass(frozen=True, slots=True)
class Rubric:
    criteria: str
    score_descriptions: tuple[tuple[str, str], ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.score_descriptions)


DEFAULT_RUBRIC = Rubric(DEFAULT_CRITERIA, tuple(DEFAULT_SCORE_DESCRIPTIONS.items()))


def render_user_message(
    instruction: str, response: str, reference: str | None, rubric: Rubric, template: str = "default"
) -> str:
    """The judge's user turn. Plain concatenation: user text stays literal.

    ``default``: the response comes last, so items that share an instruction and a rubric
    share the whole prompt up to their response. ``rubric_last``: the rubric comes last, so
    the criteria of one item share the prompt up to their rubric. Either way the engines
    reuse the shared prefix's KV cache.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}")
    scale = "\n".join(f"Score {label}: {text}" for label, text in rubric.score_descriptions)
    task = "### Task\n" + instruction
    rubric_part = "### Rubric\n" + rubric.criteria + "\n" + scale
    graded = ["### Reference answer\n" + reference] if reference is not None else []
    graded.append("### Response to grade\n" + response)
    reply = "Reply with one score from: " + ", ".join(rubric.labels) + "."
    if template == "rubric_last":
        return "\n\n".join([task, *graded, rubric_part, reply])
    return "\n\n".join([task, rubric_part, *graded, reply])


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
        self._versions: dict[tuple[Any, ...], str] = {}

    def chat(self, system: str, user: str) -> str:
        """A system and a user turn in the model's chat template, ending where the answer goes."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def score(
        self, instruction: str, response: str, reference: str | None, rubric: Rubric, template: str = "default"
    ) -> str:
        """The full prompt of a structured item."""
        return self.chat(SYSTEM_PROMPT, render_user_message(instruction, response, reference, rubric, template))

    def pair(self, instruction: str, first: str, second: str, criteria: str | None) -> str:
        """The full prompt of one order of a pair."""
        return self.chat(
            PAIR_SYSTEM_PROMPT, render_pair_message(instruction, first, second, criteria or DEFAULT_PAIR_CRITERIA)
        )

    # -- prompt versions -----------------------------------------------------------------
    # A prompt version names everything that shapes a prompt apart from the item's own
    # text: the template, the system text, the rubric (or criteria) as rendered, and the
    # model's chat template. Calibrations and probes record the version they were fitted
    # for and are applied to that version only. It is the one definition; every response
    # carries it.

    def score_version(self, rubric: Rubric, template: str = "default") -> str:
        """The version of structured prompts under ``rubric`` and ``template``."""
        key = ("score", rubric, template)
        if key not in self._versions:
            instruction, response, reference = _SLOTS
            self._versions[key] = self._digest(
                "score",
                template,
                SYSTEM_PROMPT,
                self.score(instruction, response, reference, rubric, template),
                self.score(instruction, response, None, rubric, template),
            )
        return self._versions[key]

    def pair_version(self, criteria: str | None) -> str:
        """The version of pairwise prompts under ``criteria``."""
        key = ("pair", criteria)
        if key not in self._versions:
            instruction, first, second = _SLOTS
            self._versions[key] = self._digest(
                "pair", "default", PAIR_SYSTEM_PROMPT, self.pair(instruction, first, second, criteria)
            )
        return self._versions[key]

    def raw_version(self) -> str:
        """Raw prompts are used verbatim: one version for all."""
        return self._digest(RAW_TEMPLATE)

    def _digest(self, *parts: str) -> str:
        digest = hashlib.sha256()
        for part in (*parts, str(getattr(self.tokenizer, "chat_template", None) or "")):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1f")
        return digest.hexdigest()[:12]


def combined_version(versions: dict[str, str]) -> str:
    """One version for a request that renders several prompts per item (``rubrics``): it
    changes when any criterion's does."""
    digest = hashlib.sha256("\x1f".join(f"{name}={v}" for name, v in sorted(versions.items())).encode())
    return digest.hexdigest()[:12]
