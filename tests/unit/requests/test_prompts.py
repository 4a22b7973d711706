"""Prompt versions: stable across processes, and changed by anything that shapes the prompt."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from service.config import Settings
from service.engines.model_store import resolve_model
from service.requests import prompts
from service.requests.prompts import DEFAULT_RUBRIC, Prompts, Rubric, render_user_message
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tokenizer():
    settings = Settings()
    return AutoTokenizer.from_pretrained(str(resolve_model(settings.model, settings.cache_dir)), local_files_only=True)


VERSION_SCRIPT = """
from transformers import AutoTokenizer
from service.config import Settings
from service.engines.model_store import resolve_model
from service.requests.prompts import DEFAULT_RUBRIC, Prompts
s = Settings()
p = Prompts(AutoTokenizer.from_pretrained(str(resolve_model(s.model, s.cache_dir)), local_files_only=True))
print(p.score_version(DEFAULT_RUBRIC), p.pair_version(None), p.raw_version())
"""


def test_versions_are_stable_across_processes(tokenizer) -> None:
    runs = [
        subprocess.run([sys.executable, "-c", VERSION_SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    here = Prompts(tokenizer)
    expected = f"{here.score_version(DEFAULT_RUBRIC)} {here.pair_version(None)} {here.raw_version()}"
    assert [run.stdout.strip() for run in runs] == [expected, expected]
    assert len(here.score_version(DEFAULT_RUBRIC)) == 12


def test_versions_change_with_what_shapes_the_prompt(tokenizer, monkeypatch) -> None:
    base = Prompts(tokenizer).score_version(DEFAULT_RUBRIC)
    other_rubric = Rubric(DEFAULT_RUBRIC.criteria + " Be strict.", DEFAULT_RUBRIC.score_descriptions)
    described = Rubric(DEFAULT_RUBRIC.criteria, (("1", "Bad."), *DEFAULT_RUBRIC.score_descriptions[1:]))
    changed = {
        Prompts(tokenizer).score_version(other_rubric),
        Prompts(tokenizer).score_version(described),
        Prompts(tokenizer).score_version(DEFAULT_RUBRIC, "rubric_last"),
        Prompts(tokenizer).pair_version(None),
        Prompts(tokenizer).raw_version(),
    }
    assert base not in changed and len(changed) == 5
    # The system text and the template's own text.
    monkeypatch.setattr(prompts, "SYSTEM_PROMPT", prompts.SYSTEM_PROMPT + " Be brief.")
    assert Prompts(tokenizer).score_version(DEFAULT_RUBRIC) != base
    monkeypatch.undo()
    monkeypatch.setattr(prompts, "render_user_message", lambda *args: "Preamble.\n\n" + render_user_message(*args))
    assert Prompts(tokenizer).score_version(DEFAULT_RUBRIC) != base
    monkeypatch.undo()
    # The model's chat template.
    monkeypatch.setattr(tokenizer, "chat_template", tokenizer.chat_template.replace("<|im_start|>", "<|start|>"))
    assert Prompts(tokenizer).score_version(DEFAULT_RUBRIC) != base
    monkeypatch.undo()
    assert Prompts(tokenizer).score_version(DEFAULT_RUBRIC) == base


def test_a_read_after_a_critique_has_a_version_of_its_own(tokenizer) -> None:
    """The judge writing first and its marker are part of the version: for structured,
    raw and pairwise prompts; a read right after the prompt keeps its version."""
    here, fresh = Prompts(tokenizer), Prompts(tokenizer)
    # The default model's chat template opens no reasoning block: the score prompt's text
    # is the same either way, yet the reads are not comparable.
    assert here.score("q", "r", None, DEFAULT_RUBRIC) == here.score("q", "r", None, DEFAULT_RUBRIC, writes_first=True)
    for version in (
        lambda marker: here.score_version(DEFAULT_RUBRIC, marker=marker),
        lambda marker: here.score_version(DEFAULT_RUBRIC, "rubric_last", marker=marker),
        lambda marker: here.raw_version(marker),
        lambda marker: here.pair_version(None, marker=marker),
        lambda marker: here.pair_version("Which is shorter?", {"enable_thinking": False}, marker),
    ):
        plain, critique, other = version(None), version("[RESULT]"), version("Verdict:")
        assert len({plain, critique, other}) == 3
    assert here.score_version(DEFAULT_RUBRIC, marker="[[") == fresh.score_version(DEFAULT_RUBRIC, marker="[[")
    assert here.pair_version(None, marker="[[") == fresh.pair_version(None, marker="[[")
    assert here.pair_version(None, {"enable_thinking": False}) != here.pair_version(None)


def test_a_pair_critique_asks_for_the_marker_then_the_verdict() -> None:
    plain = prompts.render_pair_message("Task text", "One", "Two", "Which is right?")
    critique = prompts.render_pair_message("Task text", "One", "Two", "Which is right?", "Verdict:")
    assert plain.endswith("Reply with one verdict number: 1, 2, 3, 4 or 5.")
    assert critique.index("explain briefly") < critique.index("Then write Verdict: followed at once by")
    assert critique.endswith("(for example Verdict:3).")
    assert plain.rsplit("\n\n", 1)[0] == critique.rsplit("\n\n", 1)[0]
    assert prompts.pair_system_text("Verdict:") != prompts.pair_system_text() == prompts.PAIR_SYSTEM_PROMPT


def test_rubric_last_shares_the_item_and_puts_the_rubric_last() -> None:
    text = render_user_message("Task text", "Answer text", None, DEFAULT_RUBRIC, "rubric_last")
    assert text.index("Answer text") < text.index("### Rubric") < text.index("Reply with one score")
    default = render_user_message("Task text", "Answer text", None, DEFAULT_RUBRIC)
    assert default.index("### Rubric") < default.index("Answer text")
