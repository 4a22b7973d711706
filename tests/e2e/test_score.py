"""End-to-end HTTP tests against a real server running the real default model."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.requests.prompts import DEFAULT_RUBRIC, Prompts
from tests.conftest import Reference, RunningServer, tolerance

pytestmark = pytest.mark.slow

LABELS = ["1", "2", "3", "4", "5"]

RAW_PROMPTS = [
    "Rate this answer from 1 to 5.\nQuestion: What is 2+2?\nAnswer: 4\nScore:",
    "Score:",
    "On a scale of 1 to 5, how good is this poem?\n" + "Roses are red, violets are blue. " * 40 + "\nRating:",
    "<|im_start|>user\nGive a number between 1 and 5.<|im_end|>\n<|im_start|>assistant\n",
    "The French word for cat is 'chat'. Correctness from 1 (wrong) to 5 (right):",
]


def score(client, payload: dict) -> dict:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def test_structured_request_returns_full_result(client) -> None:
    body = score(
        client,
        {
            "items": [
                {"id": "a1", "instruction": "What is 2+2?", "response": "4"},
                {"id": "a2", "instruction": "What is 2+2?", "response": "Paris.", "reference_answer": "4"},
            ]
        },
    )
    assert body["model"] == "SmolLM2-135M-Instruct"
    assert body["method"] == "final"
    assert [r["id"] for r in body["results"]] == ["a1", "a2"]
    for result in body["results"]:
        probs = result["distribution"]
        assert list(probs) == LABELS
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
        expected = sum(p * int(label) for label, p in probs.items())
        assert result["expected_score"] == pytest.approx(expected, abs=1e-9)
        var = sum(p * (int(label) - expected) ** 2 for label, p in probs.items())
        assert result["std"] == pytest.approx(math.sqrt(var), abs=1e-9)
        entropy = -sum(p * math.log(p) for p in probs.values() if p > 0)
        assert result["confidence"] == pytest.approx(1 - entropy / math.log(5), abs=1e-9)
        assert result["mode"] == max(probs, key=probs.get)
        assert 0 < result["label_mass"] <= 1
        assert result["prompt_tokens"] > 20


def test_raw_logprobs_equal_direct_forward_pass(server: RunningServer, client, reference: Reference) -> None:
    body = score(
        client,
        {"items": [{"id": str(i), "prompt": p} for i, p in enumerate(RAW_PROMPTS)], "return_logprobs": True},
    )
    for prompt, result in zip(RAW_PROMPTS, body["results"], strict=True):
        expected = reference.label_logprobs(prompt, LABELS)
        got = [result["logprobs"][label] for label in LABELS]
        assert got == pytest.approx(expected, abs=tolerance(server))
        mass = sum(math.exp(lp) for lp in expected)
        assert result["label_mass"] == pytest.approx(mass, rel=tolerance(server))
        for label, lp in zip(LABELS, expected, strict=True):
            assert result["distribution"][label] == pytest.approx(math.exp(lp) / mass, abs=tolerance(server))


def test_structured_item_scores_its_rendered_prompt(server: RunningServer, client, reference: Reference) -> None:
    item = {"id": "s", "instruction": "Name a primary colour.", "response": "Blue."}
    prompt = Prompts(reference.tokenizer).score(item["instruction"], item["response"], None, DEFAULT_RUBRIC)
    assert prompt.endswith("<|im_start|>assistant\n")
    body = score(client, {"items": [item], "return_logprobs": True})
    expected = reference.label_logprobs(prompt, LABELS)
    assert list(body["results"][0]["logprobs"].values()) == pytest.approx(expected, abs=tolerance(server))


def test_custom_labels_and_values(client) -> None:
    body = score(
        client,
        {
            "items": [{"id": "x", "prompt": "Is the sky green? Answer yes or no:"}],
            "labels": [" yes", " no"],
            "label_values": {" yes": 1, " no": 0},
        },
    )
    result = body["results"][0]
    assert set(result["distribution"]) == {" yes", " no"}
    assert result["expected_score"] == pytest.approx(result["distribution"][" yes"])


def test_non_numeric_labels_without_values_have_no_expected_score(client) -> None:
    body = score(client, {"items": [{"id": "x", "prompt": "Grade A to C:"}], "labels": ["A", "B", "C"]})
    result = body["results"][0]
    assert result["expected_score"] is None and result["std"] is None
    assert result["mode"] in {"A", "B", "C"}


def test_padding_invariance(client) -> None:
    prompts = [RAW_PROMPTS[1], RAW_PROMPTS[2], RAW_PROMPTS[0], "x " * 700 + "Score:"]
    together = score(
        client, {"items": [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)], "return_logprobs": True}
    )
    for prompt, batched in zip(prompts, together["results"], strict=True):
        alone = score(client, {"items": [{"id": "a", "prompt": prompt}], "return_logprobs": True})["results"][0]
        assert list(batched["logprobs"].values()) == pytest.approx(list(alone["logprobs"].values()), abs=1e-4)


@pytest.mark.usefixtures("transformers_only")
def test_items_sharing_an_instruction_reuse_its_prefix(server: RunningServer, client) -> None:
    instruction = "Summarise the following text in one sentence. " + "The quick brown fox jumps. " * 30
    responses = ["A fox jumps.", "Foxes are quick and brown and they jump over things.", "No.", "It is about a fox."]
    items = [{"id": str(i), "instruction": instruction, "response": r} for i, r in enumerate(responses)]
    before = server.runtime.engine.prefix_tokens_reused
    together = score(client, {"items": items, "return_logprobs": True})["results"]
    assert server.runtime.engine.prefix_tokens_reused - before >= 3 * 200
    for item, batched in zip(items, together, strict=True):
        alone = score(client, {"items": [item], "return_logprobs": True})["results"][0]
        assert list(batched["logprobs"].values()) == pytest.approx(list(alone["logprobs"].values()), abs=1e-4)


def metric_samples(client, name: str) -> dict[tuple, float]:
    text = client.get("/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.mark.usefixtures("transformers_only")
def test_concurrent_requests_are_batched(server: RunningServer, client) -> None:
    def batches_of_one_and_total() -> tuple[float, float]:
        buckets = metric_samples(client, "judge_batch_size_bucket")
        return buckets[(("le", "1.0"),)], buckets[(("le", "+Inf"),)]

    ones_before, total_before = batches_of_one_and_total()
    payload = {"items": [{"id": "c", "prompt": RAW_PROMPTS[2]}]}
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: client.post("/v1/score", json=payload).status_code, range(16)))
    assert statuses == [200] * 16
    ones_after, total_after = batches_of_one_and_total()
    batches = total_after - total_before
    # 16 single-item requests ran in fewer than 16 batches, and some batch held more than one.
    assert batches < 16
    assert ones_after - ones_before < batches


def test_metrics_parse_and_name_the_model(client) -> None:
    text = client.get("/metrics").text
    names = {family.name for family in text_string_to_metric_families(text)}
    for name in (
        "judge_requests",
        "judge_request_duration_seconds",
        "judge_queue_wait_seconds",
        "judge_inference_duration_seconds",
        "judge_batch_size",
        "judge_batch_tokens",
        "judge_queue_depth",
        "judge_items",
        "judge_prompt_tokens",
        "judge_model_info",
    ):
        assert name in names
    info = metric_samples(client, "judge_model_info")
    assert any(dict(labels).get("model") == "SmolLM2-135M-Instruct" for labels in info)
    ok = metric_samples(client, "judge_requests_total")
    assert ok[(("endpoint", "score"), ("outcome", "ok"))] >= 1


def test_health_ready_docs(server: RunningServer, client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    expected = {"status": "ok", "model": "SmolLM2-135M-Instruct", "engine": server.runtime.settings.engine}
    assert ready == {**expected, "max_items": 64}
    assert client.get("/docs").status_code == 200
    assert "/v1/score" in client.get("/openapi.json").json()["paths"]
