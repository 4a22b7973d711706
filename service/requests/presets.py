"""Judge presets: published judge formats, for judges trained to write before they score.

Each preset is the system text, the user text around the item and the rubric, the labels
and the default critique settings of one published format:

- ``prometheus``: Prometheus 2's absolute grading ("Direct Assessment" in prometheus-eval's
  ``docs/prompts.md``): the judge writes "Feedback: ... [RESULT] n", n from 1 to 5. The
  request's rubric fills the "###Score Rubrics" slot; the reference answer, when given,
  the "###Reference Answer (Score 5)" one.
- ``mt-bench``: MT-Bench's single-answer grading (FastChat's ``judge_prompts.jsonl``,
  ``single-v1``, and ``single-math-v1`` when a reference answer is given): the judge writes
  an explanation, then "Rating: [[n]]", n from 1 to 10. The request's rubric criteria
  replace the factors the judge is told to consider; its labels set the scale.

Item text is inserted by plain concatenation and never evaluated as a template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from judge_client.protocol import MT_BENCH_LABELS

from service.requests.rubrics import DEFAULT_RUBRIC, Rubric


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    system: str
    # The rubric used when the request gives none; its labels are the preset's labels.
    rubric: Rubric
    # The judge writes its critique, then this marker, then the score.
    marker: str
    max_tokens: int
    # What the judge writes between the marker and the label ("[RESULT] 4": a space); each
    # label is read with it, so the distribution is over the tokens the judge writes.
    label_prefix: str
    render: Callable[[str, str, str | None, Rubric], str]

    def critique(self, max_tokens: int | None = None) -> tuple[int, str]:
        """The critique this judge writes when a request sets none: (max_tokens, marker),
        within the server's longest critique ``max_tokens``."""
        return min(self.max_tokens, max_tokens or self.max_tokens), self.marker


PROMETHEUS_SYSTEM = (
    "You are a fair judge assistant tasked with providing clear, objective feedback based on specific criteria, "
    "ensuring each assessment reflects the absolute standards set for performance."
)


def _prometheus(instruction: str, response: str, reference: str | None, rubric: Rubric) -> str:
    first, last = rubric.labels[0], rubric.labels[-1]
    reference_part = "a reference answer that gets a score of " + last + ", " if reference is not None else ""
    parts = [
        "###Task Description:\n"
        "An instruction (might include an Input inside it), a response to evaluate, "
        + reference_part
        + "and a score rubric representing a evaluation criteria are given.\n"
        "1. Write a detailed feedback that assess the quality of the response strictly based on the given score "
        "rubric, not evaluating in general.\n"
        "2. After writing a feedback, write a score that is an integer between " + first + " and " + last + ". "
        "You should refer to the score rubric.\n"
        '3. The output format should look as follows: "Feedback: (write a feedback for criteria) [RESULT] '
        "(an integer number between " + first + " and " + last + ')"\n'
        "4. Please do not generate any other opening, closing, and explanations.",
        "###The instruction to evaluate:\n" + instruction,
        "###Response to evaluate:\n" + response,
    ]
    if reference is not None:
        parts.append("###Reference Answer (Score " + last + "):\n" + reference)
    scale = "\n".join("Score " + label + ": " + text for label, text in rubric.score_descriptions)
    parts.append("###Score Rubrics:\n[" + rubric.criteria + "]\n" + scale)
    parts.append("###Feedback: ")
    return "\n\n".join(parts)


MT_BENCH_SYSTEM = "You are a helpful assistant."
MT_BENCH_CRITERIA = (
    "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response"
)
MT_BENCH_REFERENCE_CRITERIA = "correctness and helpfulness"


def _mt_bench(instruction: str, response: str, reference: str | None, rubric: Rubric) -> str:
    first, last = rubric.labels[0], rubric.labels[-1]
    criteria = rubric.criteria
    if reference is not None and criteria == MT_BENCH_CRITERIA:
        criteria = MT_BENCH_REFERENCE_CRITERIA
    if reference is not None:
        guidance = (
            " You will be given a reference answer and the assistant's answer. Begin your evaluation by comparing "
            "the assistant's answer with the reference answer. Identify and correct any mistakes."
        )
    else:
        guidance = " Begin your evaluation by providing a short explanation."
    text = (
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question displayed below. Your evaluation should consider "
        + criteria
        + "."
        + guidance
        + " Be as objective as possible. After providing your explanation, you must rate the response on a scale of "
        + first
        + " to "
        + last
        + ' by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".'
        "\n\n[Question]\n" + instruction
    )
    if reference is not None:
        text += "\n\n[The Start of Reference Answer]\n" + reference + "\n[The End of Reference Answer]"
    return text + "\n\n[The Start of Assistant's Answer]\n" + response + "\n[The End of Assistant's Answer]"


PROMETHEUS = Preset(
    name="prometheus",
    system=PROMETHEUS_SYSTEM,
    rubric=DEFAULT_RUBRIC,
    marker="[RESULT]",
    max_tokens=256,
    label_prefix=" ",
    render=_prometheus,
)
MT_BENCH = Preset(
    name="mt-bench",
    system=MT_BENCH_SYSTEM,
    rubric=Rubric(MT_BENCH_CRITERIA, tuple((label, "") for label in MT_BENCH_LABELS)),
    marker="[[",
    max_tokens=256,
    label_prefix="",
    render=_mt_bench,
)
PRESETS = {preset.name: preset for preset in (PROMETHEUS, MT_BENCH)}
