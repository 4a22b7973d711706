"""POST /v1/compare on the real default model, and the pairwise maths; critique mode against
greedy generation and direct forward passes computed here."""

from __future__ import annotations

import math

import pytest

from service.methods import pairwise, scoring
from service.requests.prompts import VERDICT_LABELS, Prompts
from tests.conftest import Reference, RunningServer, greedy, read_after, tolerance

pytestmark = pytest.mark.slow

PAIR = {"id": "p1", "instruction": "What is 2+2?", "response_a": "4", "response_b": "It is 5."}


def test_compare_orders_match_independent_scoring(server: RunningServer, client) -> None:
    response = client.post("/v1/compare", json={"pairs": [PAIR]})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    builder = Prompts(server.runtime.prompts.tokenizer)
    prompts = {
        "ab": builder.pair(PAIR["instruction"], PAIR["response_a"], PAIR["response_b"], None),
        "ba": builder.pair(PAIR["instruction"], PAIR["response_b"], PAIR["response_a"], None),
    }
    raw = client.post("/v1/score", json={"items": [{"id": k, "prompt": v} for k, v in prompts.items()]}).json()
    ab = list(raw["results"][0]["distribution"].values())
    ba = list(reversed(raw["results"][1]["distribution"].values()))
    tol = tolerance(server)
    assert list(result["orders"]["ab"].values()) == pytest.approx(ab, abs=tol)
    assert list(result["orders"]["ba"].values()) == pytest.approx(ba, abs=tol)
    mean = [(x + y) / 2 for x, y in zip(ab, ba, strict=True)]
    assert list(result["distribution"].values()) == pytest.approx(mean, abs=tol)
    assert list(result["distribution"]) == ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
    assert result["p_a_wins"] == pytest.approx(mean[0] + mean[1], abs=tol)
    assert result["p_tie"] == pytest.approx(mean[2], abs=tol)
    assert result["p_b_wins"] == pytest.approx(mean[3] + mean[4], abs=tol)
    assert result["position_consistency"] == pytest.approx(pairwise.consistency(ab, ba), abs=tol)
    assert math.isclose(result["p_a_wins"] + result["p_tie"] + result["p_b_wins"], 1.0, abs_tol=1e-9)


def test_compare_without_swap_and_with_length_control(server: RunningServer, client) -> None:
    single = client.post("/v1/compare", json={"pairs": [PAIR], "swap": False}).json()["results"][0]
    assert single["position_consistency"] is None and list(single["orders"]) == ["ab"]
    long_b = {**PAIR, "response_b": "It is 5. " * 40}
    plain = client.post("/v1/compare", json={"pairs": [long_b]}).json()["results"][0]
    controlled = client.post("/v1/compare", json={"pairs": [long_b], "length_control": {"k": 50}}).json()
    controlled = controlled["results"][0]
    assert controlled["distribution"]["B>A"] == 0.0
    assert controlled["p_tie"] == pytest.approx(plain["p_tie"] + plain["distribution"]["B>A"], abs=tolerance(server))


def test_compare_errors_use_the_table(client) -> None:
    assert client.post("/v1/compare", json={"pairs": []}).status_code == 422
    too_many = client.post("/v1/compare", json={"pairs": [PAIR] * 65})
    assert too_many.status_code == 422 and too_many.json()["error"]["details"]["pairs"] == 65
    unknown = client.post("/v1/compare", json={"pairs": [{**PAIR, "winner": "a"}]})
    assert unknown.status_code == 422 and "winner" in unknown.text
    too_short = client.post("/v1/compare", json={"pairs": [PAIR], "timeout_s": 0.0001})
    assert too_short.status_code == 422 and "timeout_s" in too_short.text
    late = client.post("/v1/compare", json={"pairs": [PAIR], "timeout_s": 0.01})
    assert late.status_code == 504


# Critique mode: (swap, marker, max_tokens, whether the judge writes the marker in each
# order). The default model writes a sentence ending in "." within 20 tokens in both
# orders, and never "Verdict:" within 6.
CRITIQUES = {
    "both orders, marker found": (True, ".", 20, True),
    "A first only, marker never written": (False, "Verdict:", 6, False),
}


@pytest.mark.parametrize("case", list(CRITIQUES))
def test_compare_critique_per_order_is_greedy_and_read_after_it(
    server: RunningServer, client, reference: Reference, case: str
) -> None:
    """Each order: its own critique, greedy from its own prompt; its verdict read after
    it as direct forward passes give it; the verdict the mean of the orders."""
    swap, marker, max_tokens, found = CRITIQUES[case]
    critique = {"max_tokens": max_tokens, "marker": marker}
    # A generous deadline: generation on a busy CPU is slow.
    body = {"pairs": [PAIR], "swap": swap, "critique": critique, "timeout_s": 300}
    response = client.post("/v1/compare", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    result = answer["results"][0]
    tok, builder = reference.tokenizer, Prompts(reference.tokenizer)
    orders = {"ab": (PAIR["response_a"], PAIR["response_b"])}
    if swap:
        orders["ba"] = (PAIR["response_b"], PAIR["response_a"])
    assert list(result["critiques"]) == list(result["orders"]) == list(orders)
    want, prompt_tokens = {}, 0
    for order, (first, second) in orders.items():
        prompt = builder.pair(PAIR["instruction"], first, second, None, marker=marker)
        generated, marker_found = greedy(reference, prompt, marker, max_tokens)
        assert marker_found is found  # the case is what its name says
        assert result["critiques"][order] == {
            "critique": tok.decode(generated, skip_special_tokens=False),
            "marker_found": found,
            "critique_tokens": len(generated),
        }
        ids = tok.encode(prompt, add_special_tokens=False)
        prompt_tokens += len(ids)
        marker_ids = [] if found else tok.encode(marker, add_special_tokens=False)
        logprobs = read_after(reference, ids + generated + marker_ids, list(VERDICT_LABELS))
        want[order] = pairwise.in_ab_terms(scoring.softmax(logprobs), order)
        assert list(result["orders"][order].values()) == pytest.approx(want[order], abs=tolerance(server))
    mean = [sum(column) / len(want) for column in zip(*want.values(), strict=True)]
    assert list(result["distribution"].values()) == pytest.approx(mean, abs=tolerance(server))
    returned = [list(probs.values()) for probs in result["orders"].values()]
    exact_mean = [sum(column) / len(returned) for column in zip(*returned, strict=True)]
    assert list(result["distribution"].values()) == pytest.approx(exact_mean, abs=1e-12)
    if swap:
        assert result["position_consistency"] == pytest.approx(pairwise.consistency(*returned))
    else:
        assert result["position_consistency"] is None
    assert result["prompt_tokens"] == prompt_tokens
    assert answer["prompt_version"] == builder.pair_version(None, marker=marker)


def test_compare_prompt_version_tells_critique_reads_apart(client) -> None:
    def version(**options) -> str:
        response = client.post("/v1/compare", json={"pairs": [PAIR], "swap": False, **options})
        assert response.status_code == 200, response.text
        return response.json()["prompt_version"]

    plain = version()
    critique = version(critique={"max_tokens": 2, "marker": "Verdict:"})
    assert len({plain, critique, version(critique={"max_tokens": 2, "marker": "[["})}) == 3
    # The critique's length is not part of it.
    assert version(critique={"max_tokens": 3, "marker": "Verdict:"}) == critique


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"critique": {"max_tokens": 513, "marker": "."}}, "max_critique_tokens"),
        ({"critique": {"max_tokens": 0, "marker": "."}}, "critique.max_tokens"),
        ({"critique": {"max_tokens": 4, "marker": ""}}, "critique.marker"),
        ({"critique": {"max_tokens": 4, "marker": "x" * 65}}, "critique.marker"),
        ({"chat_template_kwargs": {"tools": "x"}}, "refused"),
    ],
)
def test_compare_critique_errors(client, options: dict, field: str) -> None:
    response = client.post("/v1/compare", json={"pairs": [PAIR], **options})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["message"] + str(error["details"])
    if field == "max_critique_tokens":
        assert error["details"] == {"max_tokens": 513, "max_critique_tokens": 512}


def test_compare_prompts_must_leave_room_for_their_critiques(server: RunningServer, client) -> None:
    limit = server.runtime.limits.tokens.max_model_len
    long_pair = {**PAIR, "response_a": "x " * (limit - 300)}
    body = {"pairs": [long_pair], "critique": {"max_tokens": 500, "marker": "."}}
    response = client.post("/v1/compare", json=body)
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert details["max_model_len"] == limit and details["critique_tokens"] == 500 + 1
    # The prompt alone fits: it is the critique's room that does not.
    assert details["prompt_tokens"] <= limit < details["prompt_tokens"] + details["critique_tokens"]
