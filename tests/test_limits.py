"""Deployment limits that depend on the tokenizer, on real tokenizers built here."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from service.errors import ErrorKind, JudgeError
from service.limits import Limits


@pytest.fixture(scope="module")
def limits() -> Limits:
    """A word-level tokenizer that lowercases and strips, so distinct labels can be the same tokens."""
    vocab = {"[UNK]": 0, "good": 1, "bad": 2, "very": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    return Limits(
        fast,
        max_items=4,
        max_model_len=16,
        max_critique_tokens=8,
        engine_kind="transformers",
        supports_layers=True,
        layers_unavailable=None,
        layer_weights=None,
        request_timeout_s=60,
        max_request_timeout_s=300,
    )


def test_labels_with_the_same_tokens_are_named_together(limits: Limits) -> None:
    with pytest.raises(JudgeError) as refused:
        limits.label_trie(["good", "bad", "GOOD"])
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert "'good'" in refused.value.message and "'GOOD'" in refused.value.message
    assert refused.value.details["labels"] == ["good", "GOOD"]


def test_a_label_of_no_tokens_is_refused(limits: Limits) -> None:
    with pytest.raises(JudgeError) as refused:
        limits.label_trie(["good", "   "])
    assert "no tokens" in refused.value.message


def test_multi_token_labels_make_a_trie_but_not_per_layer(limits: Limits) -> None:
    trie = limits.label_trie(["very good", "good", "bad"])
    assert trie.sequences == ((3, 1), (1,), (2,)) and not trie.single_token
    with pytest.raises(JudgeError) as refused:
        limits.label_trie(["very good", "good"], wants_layers=True)
    assert refused.value.details == {"label": "very good"}
