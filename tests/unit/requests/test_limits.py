"""Deployment limits that depend on the tokenizer, on real tokenizers built here."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from service.core.errors import ErrorKind, JudgeError
from service.requests.caps import RequestCaps
from service.requests.limits import Limits
from service.requests.readouts import ReadoutSupport
from service.requests.tokens import TokenLimits
from service.requests.work import WorkLimits


@pytest.fixture(scope="module")
def limits() -> Limits:
    """A word-level tokenizer that lowercases and strips, so distinct labels can be the same tokens."""
    vocab = {"[UNK]": 0, "good": 1, "bad": 2, "very": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    return Limits(
        RequestCaps(max_items=4, max_critique_tokens=8, chat_template_keys=("enable_thinking",)),
        TokenLimits(fast, max_model_len=16),
        ReadoutSupport("transformers", supports_layers=True),
        WorkLimits(request_timeout_s=60, max_request_timeout_s=300),
    )


def test_labels_with_the_same_tokens_are_named_together(limits: Limits) -> None:
    with pytest.raises(JudgeError) as refused:
        limits.tokens.label_trie(["good", "bad", "GOOD"])
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert "'good'" in refused.value.message and "'GOOD'" in refused.value.message
    assert refused.value.details["labels"] == ["good", "GOOD"]


def test_a_label_of_no_tokens_is_refused(limits: Limits) -> None:
    with pytest.raises(JudgeError) as refused:
        limits.tokens.label_trie(["good", "   "])
    assert "no tokens" in refused.value.message


def test_multi_token_labels_make_a_trie_but_not_per_layer(limits: Limits) -> None:
    trie = limits.tokens.label_trie(["very good", "good", "bad"])
    assert trie.sequences == ((3, 1), (1,), (2,)) and not trie.single_token
    with pytest.raises(JudgeError) as refused:
        limits.tokens.label_trie(["very good", "good"], wants_layers=True)
    assert refused.value.details == {"label": "very good"}


def test_a_critique_longer_than_the_setting_is_refused_with_both_numbers(limits: Limits) -> None:
    assert limits.critique(8, "good", wants_layers=False).marker_ids == (1,)
    with pytest.raises(JudgeError) as refused:
        limits.critique(9, "good", wants_layers=False)
    assert refused.value.details == {"max_tokens": 9, "max_critique_tokens": 8}


def test_critique_mode_refuses_the_per_layer_methods(limits: Limits) -> None:
    with pytest.raises(JudgeError) as refused:
        limits.critique(4, "good", wants_layers=True)
    assert "lager" in refused.value.message and refused.value.details == {"field": "critique"}


def test_a_prompt_leaves_room_for_its_critique_and_marker(limits: Limits) -> None:
    spec = limits.critique(8, "very good", wants_layers=False)  # 8 + 2 tokens of room
    assert limits.tokens.encode("good " * 6, 0, "a", spec) == (1,) * 6
    with pytest.raises(JudgeError) as refused:
        limits.tokens.encode("good " * 7, 0, "a", spec)
    assert refused.value.details == {"item": 0, "prompt_tokens": 7, "critique_tokens": 10, "max_model_len": 16}
    assert limits.tokens.encode("good " * 7, 0, "a") == (1,) * 7


def test_chat_template_keys_the_server_does_not_allow_are_refused(limits: Limits) -> None:
    assert limits.caps.chat_template_kwargs({"enable_thinking": False}) == {"enable_thinking": False}
    assert limits.caps.chat_template_kwargs(None) == {}
    with pytest.raises(JudgeError) as refused:
        limits.caps.chat_template_kwargs({"enable_thinking": True, "tools": "x", "add_vision_id": True})
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert refused.value.details["refused"] == ["add_vision_id", "tools"]
