"""POST /v1/compare on the real default model, and the pairwise maths."""

from __future__ import annotations

import math

import pytest

from service import pairwise
from service.prompts import Prompts
from tests.conftest import RunningServer, tolerance

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
