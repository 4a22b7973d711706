"""The label trie and its exact label probabilities, against sums written out by hand."""

from __future__ import annotations

import math

import pytest

from service.core.labels import LabelTrie


def test_single_token_labels_are_the_root_alone() -> None:
    trie = LabelTrie.build([(5,), (6,), (7,)])
    assert trie.single_token and trie.root_ids == (5, 6, 7) and trie.continuations() == ()
    logprobs = (-1.0, -2.0, -3.5)
    assert trie.label_logprobs([logprobs]) == logprobs


def test_a_label_that_prefixes_another_excludes_its_continuations() -> None:
    # "1".."10" on a digit-splitting tokenizer: 1 -> (1,), 10 -> (1, 0), 2 -> (2,)
    trie = LabelTrie.build([(1,), (2,), (1, 0)])
    assert trie.nodes == ((), (1,))
    assert trie.children == ((1, 2), (0,))
    root = (math.log(0.5), math.log(0.3))  # P(1), P(2) after the prompt
    after_one = (math.log(0.4),)  # P(0 | prompt, 1)
    one, two, ten = trie.label_logprobs([root, after_one])
    assert math.exp(ten) == pytest.approx(0.5 * 0.4)
    assert math.exp(one) == pytest.approx(0.5 * (1 - 0.4))  # "1" then anything but "0"
    assert math.exp(two) == pytest.approx(0.3)
    # The three are disjoint events: their sum is the mass on the labels.
    assert math.exp(one) + math.exp(two) + math.exp(ten) == pytest.approx(0.8)


def test_word_labels_share_a_first_token() -> None:
    # " excellent" = (9, 1), " exact" = (9, 2), " good" = (4,)
    trie = LabelTrie.build([(9, 1), (9, 2), (4,)])
    assert trie.nodes == ((), (9,)) and trie.children == ((9, 4), (1, 2))
    root = (math.log(0.6), math.log(0.2))
    after = (math.log(0.5), math.log(0.25))
    excellent, exact, good = trie.label_logprobs([root, after])
    assert math.exp(excellent) == pytest.approx(0.3)
    assert math.exp(exact) == pytest.approx(0.15)
    assert math.exp(good) == pytest.approx(0.2)


def test_deeper_prefix_chains() -> None:
    trie = LabelTrie.build([(1,), (1, 2), (1, 2, 3)])
    assert trie.nodes == ((), (1,), (1, 2))
    p = [(math.log(0.9),), (math.log(0.5),), (math.log(0.2),)]
    a, ab, abc = (math.exp(x) for x in trie.label_logprobs(p))
    assert a == pytest.approx(0.9 * 0.5)
    assert ab == pytest.approx(0.9 * 0.5 * 0.8)
    assert abc == pytest.approx(0.9 * 0.5 * 0.2)


def test_same_token_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="same token sequence"):
        LabelTrie.build([(1, 2), (3,), (1, 2)])
    with pytest.raises(ValueError, match="at least one token"):
        LabelTrie.build([(1,), ()])
