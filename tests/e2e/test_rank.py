"""POST /v1/rank on the real default model, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

from service.methods import ranking
from service.requests.prompts import DEFAULT_RUBRIC, Prompts
from tests.conftest import RunningServer, tolerance

pytestmark = pytest.mark.slow

INSTRUCTION = "What is 2+2?"
RESPONSES = ["4", "It is 5.", "Four: two plus two makes four.", "The capital of France is Paris."]
CANDIDATES = [{"id": f"c{i}", "response": r} for i, r in enumerate(RESPONSES)]


def rank(client, payload: dict) -> dict:
    response = client.post("/v1/rank", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def test_pairwise_ranking_is_the_bradley_terry_fit_of_compare(server: RunningServer, client) -> None:
    body = rank(client, {"instruction": INSTRUCTION, "candidates": CANDIDATES})
    n = len(CANDIDATES)
    assert body["strategy"] == "pairwise" and body["comparisons"] == n * (n - 1) // 2
    assert (
        body["prompt_version"]
        == client.post(
            "/v1/compare", json={"pairs": [{"id": "p", "instruction": "x", "response_a": "a", "response_b": "b"}]}
        ).json()["prompt_version"]
    )
    # Independently: every pair through /v1/compare, wins = P(win) + P(tie) / 2, a direct ML fit.
    pairs = ranking.all_pairs(n)
    compared = client.post(
        "/v1/compare",
        json={
            "pairs": [
                {"id": f"{i}-{j}", "instruction": INSTRUCTION, "response_a": RESPONSES[i], "response_b": RESPONSES[j]}
                for i, j in pairs
            ]
        },
    ).json()["results"]
    p_first = [r["p_a_wins"] + r["p_tie"] / 2 for r in compared]
    wins = ranking.win_matrix(n, pairs, p_first)
    strengths = ranking.fit_bradley_terry(wins)
    tol = tolerance(server)
    by_id = {entry["id"]: entry for entry in body["ranking"]}
    for i, candidate in enumerate(CANDIDATES):
        entry = by_id[candidate["id"]]
        assert entry["score"] == pytest.approx(strengths[i], abs=tol)
        assert entry["wins"] == pytest.approx(wins[i].sum(), abs=tol)
        low, high = entry["interval"]
        assert low <= entry["score"] + 1e-6 <= high + 2e-6
        assert 1 <= entry["rank_interval"][0] <= entry["rank_interval"][1] <= n
    assert [entry["rank"] for entry in body["ranking"]] == list(range(1, n + 1))
    scores = [entry["score"] for entry in body["ranking"]]
    assert scores == sorted(scores, reverse=True)


def test_pointwise_ranking_orders_expected_scores(server: RunningServer, client) -> None:
    body = rank(client, {"instruction": INSTRUCTION, "candidates": CANDIDATES, "strategy": "pointwise"})
    scored = client.post(
        "/v1/score",
        json={"items": [{"id": c["id"], "instruction": INSTRUCTION, "response": c["response"]} for c in CANDIDATES]},
    ).json()
    expected = {r["id"]: r["expected_score"] for r in scored["results"]}
    assert body["comparisons"] == 0 and body["prompt_version"] == scored["prompt_version"]
    assert [e["id"] for e in body["ranking"]] == sorted(expected, key=lambda k: -expected[k])
    for entry in body["ranking"]:
        assert entry["score"] == pytest.approx(expected[entry["id"]], abs=1e-9)
        assert entry["interval"] is None and entry["std"] > 0
    builder = Prompts(server.runtime.prompts.tokenizer)
    assert body["prompt_version"] == builder.score_version(DEFAULT_RUBRIC)


def test_many_candidates_use_the_n_log_n_design(server: RunningServer) -> None:
    candidates = [{"id": str(i), "response": f"It is {i}."} for i in range(9)]
    with server.client(timeout=900) as client:
        body = rank(client, {"instruction": INSTRUCTION, "candidates": candidates, "timeout_s": 900})
    assert body["comparisons"] == len(ranking.design(9)) < 36
    assert sorted(e["rank"] for e in body["ranking"]) == list(range(1, 10))
    assert np.isfinite([e["score"] for e in body["ranking"]]).all()


def test_rank_errors(client) -> None:
    one = client.post("/v1/rank", json={"instruction": "x", "candidates": CANDIDATES[:1]})
    assert one.status_code == 422
    many = [{"id": str(i), "response": "r"} for i in range(17)]
    too_many = client.post("/v1/rank", json={"instruction": "x", "candidates": many})
    assert too_many.status_code == 422 and too_many.json()["error"]["details"]["max_rank_candidates"] == 16
    twice = client.post("/v1/rank", json={"instruction": "x", "candidates": [CANDIDATES[0], CANDIDATES[0]]})
    assert twice.status_code == 422 and "unique" in twice.text
    late = client.post("/v1/rank", json={"instruction": "x", "candidates": CANDIDATES, "timeout_s": 0.01})
    assert late.status_code in (429, 504)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RankRequest"]
    assert schema["properties"]["candidates"]["maxItems"] == 16
