"""Per-endpoint metrics on a real server: a score, compare or rank request is counted under
its own ``endpoint`` label values (and its items under its own method or strategy), and
nowhere else."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer

# The series each request moves: requests by outcome, latency, items and prompts.
SERIES = (
    "judge_requests_total",
    "judge_request_duration_seconds_count",
    "judge_items_total",
    "judge_prompts_total",
)
PAIRS = [
    {"id": "p1", "instruction": "What is 2+2?", "response_a": "4", "response_b": "It is 5."},
    {"id": "p2", "instruction": "Name a colour.", "response_a": "Blue.", "response_b": "Paris."},
]
CANDIDATES = [{"id": f"c{i}", "response": r} for i, r in enumerate(["4", "It is 5.", "Four.", "Paris."])]


def counters(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=600).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in SERIES
    }


def moved(url: str, path: str, body: dict[str, Any], client: httpx.Client) -> tuple[httpx.Response, dict]:
    """The response, and every series of SERIES that changed, by how much."""
    before = counters(url)
    response = client.post(path, json=body)
    after = counters(url)
    return response, {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def expected(endpoint: str, outcome: str, items: dict[str, int] | None = None, prompts: int = 0) -> dict:
    out = {
        ("judge_requests_total", frozenset({("endpoint", endpoint), ("outcome", outcome)})): 1.0,
        ("judge_request_duration_seconds_count", frozenset({("endpoint", endpoint)})): 1.0,
    }
    for method, n in (items or {}).items():
        out[("judge_items_total", frozenset({("endpoint", endpoint), ("method", method)}))] = float(n)
    if prompts:
        out[("judge_prompts_total", frozenset())] = float(prompts)
    return out


def test_compare_and_rank_are_counted_under_their_own_endpoint(server: RunningServer, client: httpx.Client) -> None:
    # Two pairs in both orders: four prompts.
    response, delta = moved(server.url, "/v1/compare", {"pairs": PAIRS}, client)
    assert response.status_code == 200, response.text
    assert delta == expected("compare", "ok", {"final": 2}, prompts=4)

    response, delta = moved(server.url, "/v1/rank", {"instruction": "What is 2+2?", "candidates": CANDIDATES}, client)
    assert response.status_code == 200, response.text
    comparisons = response.json()["comparisons"]
    assert delta == expected("rank", "ok", {"pairwise": 4}, prompts=2 * comparisons)

    pointwise = {"instruction": "What is 2+2?", "candidates": CANDIDATES[:3], "strategy": "pointwise"}
    response, delta = moved(server.url, "/v1/rank", pointwise, client)
    assert response.status_code == 200, response.text
    assert delta == expected("rank", "ok", {"pointwise": 3}, prompts=3)

    response, delta = moved(server.url, "/v1/score", {"items": [{"id": "a", "prompt": "Score:"}]}, client)
    assert response.status_code == 200, response.text
    assert delta == expected("score", "ok", {"final": 1}, prompts=1)


@pytest.mark.parametrize(
    ("path", "body", "endpoint"),
    [
        ("/v1/compare", {"pairs": []}, "compare"),
        ("/v1/rank", {"instruction": "q", "candidates": [CANDIDATES[0], CANDIDATES[0]]}, "rank"),
    ],
    ids=["compare", "rank"],
)
def test_a_refused_request_is_counted_under_its_endpoint(
    server: RunningServer, client: httpx.Client, path: str, body: dict, endpoint: str
) -> None:
    response, delta = moved(server.url, path, body, client)
    assert response.status_code == 422, response.text
    assert delta == expected(endpoint, "invalid")
