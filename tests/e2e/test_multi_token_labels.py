"""Labels of more than one token, on the real default model and both engines, against
direct forward passes over the prompt plus each label prefix, computed here."""

from __future__ import annotations

import math

import pytest
import torch

from service.requests.prompts import Prompts, Rubric
from tests.conftest import Reference, RunningServer, memoized, tolerance, trie_rule_logprobs

pytestmark = pytest.mark.slow

PROMPT = "Rate the answer from 1 to 10.\nQ: What is the capital of France?\nA: Paris, on the Seine.\nScore:"
SCALE = [str(n) for n in range(1, 11)]  # "10" is "1", "0" for this tokenizer
WORDS = [" excellent", " good", " mediocre", " abysmal", " nope"]  # mediocre, abysmal, nope: several tokens
NESTED = ["1", "12", "123", "2"]  # one label is a prefix of another


@memoized
@torch.inference_mode()
def reference_label_logprobs(reference: Reference, prompt: str, labels: list[str]) -> list[float]:
    """log P(l) by the label-trie rule, from one full forward pass per label prefix."""
    tok = reference.tokenizer
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    sequences = [tuple(tok.encode(label, add_special_tokens=False)) for label in labels]

    head = reference.model.lm_head.weight.double()

    def next_logprobs(prefix: tuple[int, ...]) -> torch.Tensor:
        # The LM head in float64 on the final hidden state, as Reference.label_logprobs.
        out = reference.model(input_ids=torch.tensor([prompt_ids + list(prefix)]), output_hidden_states=True)
        return torch.log_softmax(out.hidden_states[-1][0, -1].double() @ head.T, dim=-1)

    return trie_rule_logprobs(sequences, next_logprobs)


def served_logprobs(client, **payload) -> list[dict]:
    response = client.post("/v1/score", json={**payload, "return_logprobs": True})
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.mark.parametrize("labels", [SCALE, WORDS, NESTED], ids=["1-10", "words", "prefixes"])
def test_multi_token_labels_equal_direct_forward_passes(
    server: RunningServer, client, reference: Reference, labels: list[str]
) -> None:
    assert any(len(reference.tokenizer.encode(label, add_special_tokens=False)) > 1 for label in labels)
    prompts = [PROMPT, "Score:", "How good is this haiku? 'Old pond, frog jumps in.' Verdict:"]
    # One prompt per request: a batch's left padding moves fp32 results by up to ~1e-5 nats,
    # which test_batched_multi_token_labels_equal_one_by_one bounds separately.
    results = [served_logprobs(client, items=[{"id": "a", "prompt": p}], labels=labels)[0] for p in prompts]
    for prompt, result in zip(prompts, results, strict=True):
        want = reference_label_logprobs(reference, prompt, labels)
        got = [result["logprobs"][label] for label in labels]
        assert got == pytest.approx(want, abs=tolerance(server))
        mass = sum(math.exp(lp) for lp in want)
        assert result["label_mass"] == pytest.approx(mass, rel=tolerance(server))
        for label, lp in zip(labels, want, strict=True):
            assert result["distribution"][label] == pytest.approx(math.exp(lp) / mass, abs=tolerance(server))


def test_batched_multi_token_labels_equal_one_by_one(client) -> None:
    prompts = [PROMPT, "x " * 300 + "Score:", "Score:"]
    together = served_logprobs(client, items=[{"id": str(i), "prompt": p} for i, p in enumerate(prompts)], labels=SCALE)
    for prompt, batched in zip(prompts, together, strict=True):
        (alone,) = served_logprobs(client, items=[{"id": "a", "prompt": prompt}], labels=SCALE)
        assert list(batched["logprobs"].values()) == pytest.approx(list(alone["logprobs"].values()), abs=1e-4)


def test_single_token_labels_give_the_next_token_distribution(client, reference: Reference) -> None:
    (result,) = served_logprobs(client, items=[{"id": "a", "prompt": PROMPT}], labels=["1", "2", "3"])
    assert list(result["logprobs"].values()) == pytest.approx(
        reference.label_logprobs(PROMPT, ["1", "2", "3"]), abs=1e-3
    )


def test_a_ten_point_rubric_scores_structured_items(server: RunningServer, client, reference: Reference) -> None:
    descriptions = {str(n): f"{n} out of 10." for n in range(1, 11)}
    rubric = {"criteria": "How correct is the answer?", "score_descriptions": descriptions}
    item = {"id": "s", "instruction": "What is 7 x 6?", "response": "42"}
    response = client.post("/v1/score", json={"items": [item], "rubric": rubric, "return_logprobs": True})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    prompt = Prompts(reference.tokenizer).score(
        item["instruction"], item["response"], None, Rubric(rubric["criteria"], tuple(descriptions.items()))
    )
    want = reference_label_logprobs(reference, prompt, list(descriptions))
    assert list(result["logprobs"].values()) == pytest.approx(want, abs=tolerance(server))
    expected = sum(p * int(label) for label, p in result["distribution"].items())
    assert result["expected_score"] == pytest.approx(expected)


def test_per_layer_methods_refuse_multi_token_labels(client) -> None:
    for extra in ({"method": "lager"}, {"return_layers": True}):
        response = client.post("/v1/score", json={"items": [{"id": "a", "prompt": "x"}], "labels": SCALE, **extra})
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["details"]["label"] == "10" and "single-token labels" in error["message"]


def test_hidden_rows_come_with_multi_token_labels(server: RunningServer, client, reference: Reference) -> None:
    """One task reads both: the label trie after the prompt, and the hidden rows at the
    prompt's last token, which no label token moves."""
    payload = {"items": [{"id": "a", "prompt": PROMPT}], "labels": SCALE, "hidden_layers": [2, 30]}
    (result,) = served_logprobs(client, **payload)
    want = reference_label_logprobs(reference, PROMPT, SCALE)
    assert [result["logprobs"][label] for label in SCALE] == pytest.approx(want, abs=tolerance(server))
    direct = reference.hidden_states(PROMPT)
    for layer in (2, 30):
        got = torch.tensor(result["hidden"][str(layer)], dtype=torch.float64)
        assert (got - direct[layer]).abs().max() <= 1e-3 * max(1.0, float(direct[layer].abs().max())), layer


def test_criteria_on_a_ten_point_scale_equal_single_rubric_requests(server: RunningServer, client) -> None:
    descriptions = {str(n): f"{n} out of 10." for n in range(1, 11)}
    rubrics = {
        "correct": {"criteria": "How correct is the answer?", "score_descriptions": descriptions},
        "brief": {"criteria": "How brief is the answer?", "score_descriptions": descriptions, "weight": 2},
    }
    items = [{"id": "s", "instruction": "What is 7 x 6?", "response": "42"}]
    response = client.post("/v1/score", json={"items": items, "rubrics": rubrics})
    assert response.status_code == 200, response.text
    combined = response.json()["results"][0]["criteria"]
    for name, spec in rubrics.items():
        rubric = {"criteria": spec["criteria"], "score_descriptions": descriptions}
        (alone,) = served_logprobs(client, items=items, rubric=rubric)
        entry = combined[name]
        assert list(entry["distribution"].values()) == pytest.approx(
            list(alone["distribution"].values()), abs=tolerance(server)
        )
        assert entry["label_mass"] == pytest.approx(alone["label_mass"], abs=tolerance(server))
