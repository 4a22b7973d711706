"""The transformers engine's cross-request prefix cache on the real default model behind
the HTTP server: every result equals the model's own forward pass over the whole prompt."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import SHARED_DATA, Reference, RunningServer, metric_sum


def topical_chat_prompts(count: int) -> list[str]:
    rows = [json.loads(line) for line in (SHARED_DATA / "topical_chat_usr.jsonl").read_text().splitlines()]
    return [
        f"Dialogue:\n{r['instruction']}\n\nNext turn: {r['response']}\n\nRate the next turn from 1 to 5. Score:"
        for r in rows[:count]
    ]


@pytest.mark.usefixtures("transformers_only")
def test_served_requests_on_the_default_model_equal_direct_forward_passes(
    server: RunningServer, reference: Reference
) -> None:
    """Topical-Chat turns (several responses to one dialogue), one item per request from 4
    clients at once: the real model behind the server starts from cached dialogue prefixes."""
    prompts = topical_chat_prompts(10)
    before = {name: metric_sum(server.url, f"judge_prefix_cache_{name}") for name in ("hits_total", "misses_total")}

    def one(prompt: str) -> list[float]:
        with server.client() as client:
            body = {"items": [{"id": "x", "prompt": prompt}], "return_logprobs": True}
            response = client.post("/v1/score", json=body)
            assert response.status_code == 200, response.text
            return list(response.json()["results"][0]["logprobs"].values())

    with ThreadPoolExecutor(4) as pool:
        served = list(pool.map(one, prompts))
    for prompt, got in zip(prompts, served, strict=True):
        assert got == pytest.approx(reference.label_logprobs(prompt, ["1", "2", "3", "4", "5"]), abs=1e-4)
    hits = metric_sum(server.url, "judge_prefix_cache_hits_total") - before["hits_total"]
    misses = metric_sum(server.url, "judge_prefix_cache_misses_total") - before["misses_total"]
    assert hits + misses == len(prompts) and hits >= 4
    assert metric_sum(server.url, "judge_prefix_cache_bytes") > 0
