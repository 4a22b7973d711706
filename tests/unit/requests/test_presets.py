"""Judge presets rendered on the default model, chat-template arguments and reasoning blocks."""

from __future__ import annotations

import copy

import pytest
from judge_client.protocol import score_request
from transformers import AutoTokenizer

from service.config import Settings
from service.engines.model_store import resolve_model
from service.requests.presets import MT_BENCH, PROMETHEUS
from service.requests.prompts import DEFAULT_RUBRIC, REASONING_CLOSE, Prompts, Rubric
from service.requests.score import read_labels

RUBRIC = Rubric("Is the answer factually correct?", (("1", "Wrong."), ("2", "Partly right."), ("3", "Right.")))


@pytest.fixture(scope="module")
def tokenizer():
    settings = Settings()
    return AutoTokenizer.from_pretrained(str(resolve_model(settings.model, settings.cache_dir)), local_files_only=True)


def test_prometheus_renders_its_published_format_in_the_chat_template(tokenizer) -> None:
    prompts = Prompts(tokenizer)
    with_reference = prompts.score("Name a prime.", "Nine.", "Seven.", DEFAULT_RUBRIC, "prometheus")
    assert with_reference.startswith("<|im_start|>system\n" + PROMETHEUS.system + "<|im_end|>\n<|im_start|>user\n")
    assert with_reference.endswith("###Feedback: <|im_end|>\n<|im_start|>assistant\n")
    for part in (
        "###Task Description:\nAn instruction (might include an Input inside it), a response to evaluate, "
        "a reference answer that gets a score of 5, and a score rubric",
        '"Feedback: (write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"',
        "###The instruction to evaluate:\nName a prime.\n\n###Response to evaluate:\nNine.",
        "###Reference Answer (Score 5):\nSeven.",
        "###Score Rubrics:\n[" + DEFAULT_RUBRIC.criteria + "]\nScore 1: " + DEFAULT_RUBRIC.score_descriptions[0][1],
    ):
        assert part in with_reference
    # The request's rubric fills the rubric slot and sets the scale; no reference, no slot.
    custom = prompts.score("Name a prime.", "Nine.", None, RUBRIC, "prometheus")
    assert "###Score Rubrics:\n[Is the answer factually correct?]\nScore 1: Wrong.\nScore 2: Partly right." in custom
    assert "an integer between 1 and 3" in custom and "Reference Answer" not in custom
    assert "a reference answer" not in custom


def test_mt_bench_renders_single_v1_and_its_reference_variant(tokenizer) -> None:
    prompts = Prompts(tokenizer)
    plain = prompts.score("What is 2+2?", "4", None, MT_BENCH.rubric, "mt-bench")
    assert plain.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert (
        "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
        "and level of detail of the response. Begin your evaluation by providing a short explanation." in plain
    )
    assert 'rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]"' in plain
    assert plain.endswith(
        "[The Start of Assistant's Answer]\n4\n[The End of Assistant's Answer]<|im_end|>\n<|im_start|>assistant\n"
    )
    referenced = prompts.score("What is 2+2?", "5", "4", MT_BENCH.rubric, "mt-bench")
    assert "should consider correctness and helpfulness. You will be given a reference answer" in referenced
    assert "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" in referenced
    custom = prompts.score("What is 2+2?", "4", None, RUBRIC, "mt-bench")
    assert "Your evaluation should consider Is the answer factually correct?. Begin" in custom
    assert "on a scale of 1 to 3 by strictly following" in custom


def test_presets_set_labels_and_how_they_are_read() -> None:
    request = score_request({"items": [{"id": "a", "instruction": "q", "response": "r"}], "template": "mt-bench"})
    assert request.label_set == tuple(str(n) for n in range(1, 11))
    assert read_labels(request) == list(request.label_set)
    request = score_request({"items": [{"id": "a", "instruction": "q", "response": "r"}], "template": "prometheus"})
    # Prometheus writes "[RESULT] 4": each label is read with its space.
    assert read_labels(request) == [" 1", " 2", " 3", " 4", " 5"]
    assert (PROMETHEUS.marker, MT_BENCH.marker) == ("[RESULT]", "[[")


def test_prompt_versions_differ_between_presets(tokenizer) -> None:
    prompts = Prompts(tokenizer)
    versions = {
        t: prompts.score_version(DEFAULT_RUBRIC, t) for t in ("default", "rubric_last", "prometheus", "mt-bench")
    }
    assert len(set(versions.values())) == 4
    assert prompts.score_version(DEFAULT_RUBRIC, "prometheus") == Prompts(tokenizer).score_version(
        DEFAULT_RUBRIC, "prometheus"
    )


# A chat template in the style of reasoning models: the assistant turn opens a reasoning
# block unless enable_thinking is false, when it renders an empty, closed one.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def test_an_open_reasoning_block_is_closed_unless_the_judge_writes_first(tokenizer) -> None:
    thinking = copy.deepcopy(tokenizer)
    thinking.chat_template = THINKING_TEMPLATE
    prompts = Prompts(thinking)
    closed = prompts.score("q", "r", None, DEFAULT_RUBRIC)
    assert closed.endswith("<|im_start|>assistant\n<think>\n" + REASONING_CLOSE + "\n\n")
    # In critique mode the reasoning is the critique: left open.
    assert prompts.score("q", "r", None, DEFAULT_RUBRIC, writes_first=True).endswith("assistant\n<think>\n")
    # The template's own switch: an empty block it closes itself, nothing added.
    off = prompts.score("q", "r", None, DEFAULT_RUBRIC, chat_kwargs={"enable_thinking": False})
    assert off.endswith("assistant\n<think>\n\n</think>\n\n")
    assert prompts.score_version(DEFAULT_RUBRIC) != prompts.score_version(
        DEFAULT_RUBRIC, chat_kwargs={"enable_thinking": False}
    )
    # The default model's template opens no block: nothing changes.
    plain = Prompts(tokenizer).score("q", "r", None, DEFAULT_RUBRIC)
    assert plain.endswith("<|im_start|>assistant\n")
    # The pairwise judge alike: closed for a plain read, open when it explains first.
    assert prompts.pair("q", "a", "b", None).endswith("assistant\n<think>\n" + REASONING_CLOSE + "\n\n")
    assert prompts.pair("q", "a", "b", None, marker="Verdict:").endswith("assistant\n<think>\n")
    off = prompts.pair("q", "a", "b", None, {"enable_thinking": False}, "Verdict:")
    assert off.endswith("assistant\n<think>\n\n</think>\n\n")
