"""Several criteria in one request: each entry equals a one-rubric request with that rubric."""

from __future__ import annotations

import pytest

from service.methods import scoring
from service.requests.prompts import Prompts, Rubric, combined_version
from tests.conftest import RunningServer, tolerance

pytestmark = pytest.mark.slow

ITEMS = [
    {"id": "a", "instruction": "What is the capital of France?", "response": "Paris."},
    {
        "id": "b",
        "instruction": "What is the capital of France?",
        "response": "Lyon, I think.",
        "reference_answer": "Paris",
    },
]
SCALE = {"1": "Bad.", "2": "Mixed.", "3": "Good."}
RUBRICS = {
    "correct": {"criteria": "Is the answer correct?", "score_descriptions": SCALE, "weight": 3},
    "concise": {"criteria": "Is the answer concise?", "score_descriptions": SCALE},
    "polite": {"criteria": "Is the answer polite?", "score_descriptions": SCALE, "weight": 0.5},
}
FIELDS = ("distribution", "expected_score", "mode", "std", "confidence", "label_mass", "prompt_tokens")


def post(client, payload: dict) -> dict:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("template", ["default", "rubric_last"])
def test_each_criterion_equals_a_single_rubric_request(server: RunningServer, client, template: str) -> None:
    body = post(client, {"items": ITEMS, "rubrics": RUBRICS, "template": template})
    tol = tolerance(server)
    for name, spec in RUBRICS.items():
        rubric = {k: v for k, v in spec.items() if k != "weight"}
        alone = post(client, {"items": ITEMS, "rubric": rubric, "template": template})
        for combined, single in zip(body["results"], alone["results"], strict=True):
            entry = combined["criteria"][name]
            assert entry["prompt_version"] == alone["prompt_version"]
            for field in FIELDS:
                if isinstance(single[field], dict):
                    assert list(entry[field].values()) == pytest.approx(list(single[field].values()), abs=tol)
                else:
                    assert entry[field] == pytest.approx(single[field], abs=tol), field
    versions = {name: body["results"][0]["criteria"][name]["prompt_version"] for name in RUBRICS}
    assert body["prompt_version"] == combined_version(versions)
    assert len(set(versions.values())) == 3


def test_top_level_is_the_weighted_mixture(client) -> None:
    body = post(client, {"items": ITEMS, "rubrics": RUBRICS})
    weights = {name: spec.get("weight", 1.0) for name, spec in RUBRICS.items()}
    total = sum(weights.values())
    for result in body["results"]:
        entries = result["criteria"]
        mixed = [sum(weights[n] * entries[n]["distribution"][k] for n in entries) / total for k in SCALE]
        assert list(result["distribution"].values()) == pytest.approx(mixed, abs=1e-9)
        mean = sum(weights[n] * entries[n]["expected_score"] for n in entries) / total
        assert result["expected_score"] == pytest.approx(mean, abs=1e-9)
        reference = scoring.from_probs(list(SCALE), mixed, [1, 2, 3])
        assert result["std"] == pytest.approx(reference.std) and result["mode"] == reference.mode
        assert result["prompt_tokens"] == sum(e["prompt_tokens"] for e in entries.values())
        assert result["calibrated"] is None and "criterion" in result["calibration_note"]


def test_rubric_last_prompts_share_the_item(server: RunningServer) -> None:
    builder = Prompts(server.runtime.prompts.tokenizer)
    item = ITEMS[0]
    texts = [
        builder.score(
            item["instruction"], item["response"], None, Rubric(spec["criteria"], tuple(SCALE.items())), "rubric_last"
        )
        for spec in RUBRICS.values()
    ]
    shared = texts[0][: texts[0].index("### Rubric")]
    assert all(text.startswith(shared) for text in texts) and item["response"] in shared


def test_criteria_errors(client) -> None:
    rubric = {"criteria": "Correct?", "score_descriptions": SCALE}
    both = client.post("/v1/score", json={"items": ITEMS, "rubric": rubric, "rubrics": {"x": rubric}})
    assert both.status_code == 422 and "not both" in both.text
    mixed_labels = {"x": rubric, "y": {"criteria": "Polite?", "score_descriptions": {"A": "a", "B": "b"}}}
    mixed = client.post("/v1/score", json={"items": ITEMS, "rubrics": mixed_labels})
    assert mixed.status_code == 422 and "same labels" in mixed.text
    too_many = client.post("/v1/score", json={"items": ITEMS, "rubrics": {str(i): rubric for i in range(9)}})
    assert too_many.status_code == 422 and too_many.json()["error"]["details"] == {"criteria": 9, "max_criteria": 8}
    schema = client.get("/openapi.json").json()["components"]["schemas"]["StructuredScoreRequest"]
    assert schema["not"] == {"required": ["rubric", "rubrics"]}
    assert schema["properties"]["rubrics"]["anyOf"][0]["maxProperties"] == 8
