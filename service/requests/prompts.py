"""Judge prompts: the text of every template, and its rendering in the model's chat template.

User text (instruction, response, rubric, criteria) is inserted as data with plain string
concatenation; it is never evaluated as a template. The model's own chat template then
receives it as message content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from service.requests.presets import PRESETS
from service.requests.rubrics import DEFAULT_CRITERIA, DEFAULT_RUBRIC, DEFAULT_SCORE_DESCRIPTIONS, Rubric

__all__ = ["DEFAULT_CRITERIA", "DEFAULT_RUBRIC", "DEFAULT_SCORE_DESCRIPTIONS", "Rubric"]

SYSTEM_PROMPT = (
    "You are an impartial judge. Read the task, the response and the scoring rubric, "
    "then grade the response. Answer with the score label only."
)

PAIR_SYSTEM_PROMPT = (
    "You are an impartial judge. Compare two responses to the same task and decide which "
    "is better. Answer with the verdict number only."
)
# Critique mode: the judge explains first, then writes the marker and its verdict.
PAIR_CRITIQUE_SYSTEM_PROMPT = (
    "You are an impartial judge. Compare two responses to the same task and decide which "
    "is better. Explain your reasoning briefly first, then give the verdict number."
)
DEFAULT_PAIR_CRITERIA = "Which response is more helpful, correct, relevant and clear?"
# The pairwise judge's labels: Response 1 much better, slightly better, tie, Response 2
# slightly better, much better.
VERDICT_LABELS = ("1", "2", "3", "4", "5")

# The orders of the judge's user turn. "default" puts the response last, so the items of a
# batch that share an instruction and a rubric share everything before their response.
# "rubric_last" puts the rubric last, so the criteria of one item (``rubrics``) share
# everything before their rubric: the instruction and the response.
# The presets (``service.requests.presets``) are published judge formats.
TEMPLATES = ("default", "rubric_last", *PRESETS)
# Raw prompts are used verbatim: nothing but the item's own text shapes them.
RAW_TEMPLATE = "raw"
# Stand-ins for an item's text when a template is rendered for its version.
_SLOTS = ("\x00instruction\x00", "\x00response\x00", "\x00reference\x00")
# A reasoning block a chat template may leave open where the answer goes.
REASONING_OPEN, REASONING_CLOSE = "<think>", "</think>"


def system_text(template: str) -> str:
    """The system turn of ``template``."""
    return PRESETS[template].system if template in PRESETS else SYSTEM_PROMPT


def pair_system_text(marker: str | None = None) -> str:
    """The pairwise judge's system turn: with a critique ``marker``, the judge explains first."""
    return PAIR_SYSTEM_PROMPT if marker is None else PAIR_CRITIQUE_SYSTEM_PROMPT


def reasoning_left_open(prompt: str) -> bool:
    """Whether ``prompt`` ends inside a reasoning block: its last ``<think>`` is not closed."""
    opened = prompt.rfind(REASONING_OPEN)
    return opened >= 0 and prompt.rfind(REASONING_CLOSE) < opened


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
    if template in PRESETS:
        return PRESETS[template].render(instruction, response, reference, rubric)
    scale = "\n".join(f"Score {label}: {text}" for label, text in rubric.score_descriptions)
    task = "### Task\n" + instruction
    rubric_part = "### Rubric\n" + rubric.criteria + "\n" + scale
    graded = ["### Reference answer\n" + reference] if reference is not None else []
    graded.append("### Response to grade\n" + response)
    reply = "Reply with one score from: " + ", ".join(rubric.labels) + "."
    if template == "rubric_last":
        return "\n\n".join([task, *graded, rubric_part, reply])
    return "\n\n".join([task, rubric_part, *graded, reply])


def render_pair_message(instruction: str, first: str, second: str, criteria: str, marker: str | None = None) -> str:
    """The pairwise judge's user turn for one order. Plain concatenation: user text stays literal.

    With a critique ``marker`` the judge is asked to explain first, then to write the marker
    with the verdict number right after it: the verdict is read right after the marker."""
    reply = "Reply with one verdict number: 1, 2, 3, 4 or 5."
    if marker is not None:
        reply = (
            "First explain briefly which response is better and why. Then write "
            + marker
            + " followed at once by one verdict number: 1, 2, 3, 4 or 5 (for example "
            + marker
            + "3)."
        )
    return "\n\n".join(
        [
            "### Task\n" + instruction,
            "### Response 1\n" + first,
            "### Response 2\n" + second,
            "### Criteria\n" + criteria,
            "Verdicts:\n1: Response 1 is much better.\n2: Response 1 is slightly better.\n"
            "3: They are about equally good.\n4: Response 2 is slightly better.\n5: Response 2 is much better.",
            reply,
        ]
    )


class Prompts:
    """Renders judge prompts in one tokenizer's chat template, ending where the label goes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._versions: dict[tuple[Any, ...], str] = {}

    def chat(
        self, system: str, user: str, chat_kwargs: Mapping[str, Any] | None = None, writes_first: bool = False
    ) -> str:
        """A system and a user turn in the model's chat template (given ``chat_kwargs``),
        ending where the answer goes. A reasoning block the template leaves open there is
        closed, so the score is never read inside it, unless the judge ``writes_first``
        (critique mode), whose reasoning is then its critique."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prompt = str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **dict(chat_kwargs or {})
            )
        )
        if not writes_first and reasoning_left_open(prompt):
            prompt += REASONING_CLOSE + "\n\n"
        return prompt

    def score(
        self,
        instruction: str,
        response: str,
        reference: str | None,
        rubric: Rubric,
        template: str = "default",
        chat_kwargs: Mapping[str, Any] | None = None,
        writes_first: bool = False,
    ) -> str:
        """The full prompt of a structured item."""
        user = render_user_message(instruction, response, reference, rubric, template)
        return self.chat(system_text(template), user, chat_kwargs, writes_first)

    def pair(
        self,
        instruction: str,
        first: str,
        second: str,
        criteria: str | None,
        chat_kwargs: Mapping[str, Any] | None = None,
        marker: str | None = None,
    ) -> str:
        """The full prompt of one order of a pair; with a critique ``marker`` the judge
        writes first (an open reasoning block stays open)."""
        user = render_pair_message(instruction, first, second, criteria or DEFAULT_PAIR_CRITERIA, marker)
        return self.chat(pair_system_text(marker), user, chat_kwargs, writes_first=marker is not None)

    # -- prompt versions -----------------------------------------------------------------
    # A prompt version names everything that shapes a read apart from the item's own text:
    # the template, the system text, the rubric (or criteria) as rendered, the chat-template
    # arguments, the model's chat template, and where the labels are read: right after the
    # prompt, or after a critique the judge writes first, and its marker. Calibrations and
    # probes record the version they were fitted for and are applied to that version only.
    # It is the one definition; every response carries it. A critique's max_tokens is not
    # part of it.

    def score_version(
        self,
        rubric: Rubric,
        template: str = "default",
        chat_kwargs: Mapping[str, Any] | None = None,
        marker: str | None = None,
    ) -> str:
        """The version of structured prompts under ``rubric``, ``template`` and the chat
        template's ``chat_kwargs``, read after a critique ending at ``marker`` if given."""
        kwargs = json.dumps(dict(chat_kwargs or {}), sort_keys=True)
        key = ("score", rubric, template, kwargs, marker)
        if key not in self._versions:
            instruction, response, reference = _SLOTS
            writes_first = marker is not None
            self._versions[key] = self._digest(
                "score",
                template,
                system_text(template),
                kwargs,
                *_read_after(marker),
                self.score(instruction, response, reference, rubric, template, chat_kwargs, writes_first),
                self.score(instruction, response, None, rubric, template, chat_kwargs, writes_first),
            )
        return self._versions[key]

    def pair_version(
        self, criteria: str | None, chat_kwargs: Mapping[str, Any] | None = None, marker: str | None = None
    ) -> str:
        """The version of pairwise prompts under ``criteria`` and ``chat_kwargs``, read
        after a critique ending at ``marker`` if given."""
        kwargs = json.dumps(dict(chat_kwargs or {}), sort_keys=True)
        key = ("pair", criteria, kwargs, marker)
        if key not in self._versions:
            instruction, first, second = _SLOTS
            self._versions[key] = self._digest(
                "pair",
                "default",
                pair_system_text(marker),
                # The arguments, like the marker, are hashed only when given.
                *((kwargs,) if chat_kwargs else ()),
                *_read_after(marker),
                self.pair(instruction, first, second, criteria, chat_kwargs, marker),
            )
        return self._versions[key]

    def raw_version(self, marker: str | None = None) -> str:
        """Raw prompts are used verbatim: one version for all (read right after the prompt,
        or after a critique ending at ``marker``)."""
        return self._digest(RAW_TEMPLATE, *_read_after(marker))

    def _digest(self, *parts: str) -> str:
        digest = hashlib.sha256()
        for part in (*parts, str(getattr(self.tokenizer, "chat_template", None) or "")):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1f")
        return digest.hexdigest()[:12]


def _read_after(marker: str | None) -> tuple[str, ...]:
    """A version's part for where the labels are read: nothing for a read right after the
    prompt, else that the judge writes first and the marker it writes (a read after a
    critique is not comparable with one right after the prompt)."""
    return () if marker is None else ("writes first", marker)


def combined_version(versions: dict[str, str]) -> str:
    """One version for a request that renders several prompts per item (``rubrics``): it
    changes when any criterion's does."""
    digest = hashlib.sha256("\x1f".join(f"{name}={v}" for name, v in sorted(versions.items())).encode())
    return digest.hexdigest()[:12]
