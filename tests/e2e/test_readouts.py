"""Calibrated scores, review flags and the probe on a server that loads a calibration and a
probe file, on both engines: what the server returns equals the file's maps applied by hand."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from service.config import Settings
from service.engines.model_store import resolve_model
from service.methods import review, scoring
from service.methods.calibration import Calibration
from service.methods.probe import Probe
from service.requests.prompts import DEFAULT_RUBRIC, Prompts
from tests.conftest import ENGINES, Reference, RunningServer, engine_settings, start_server, tolerance

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
LABELS = ["1", "2", "3", "4", "5"]
HIDDEN = 576  # the default model's hidden size
ITEMS = [
    {"id": "a", "instruction": "What is 2+2?", "response": "4"},
    {"id": "b", "instruction": "Name a colour.", "response": "The capital of France is Paris."},
    {"id": "c", "instruction": "Say hello.", "response": "Hello! How can I help you today?"},
]
MIN_LABEL_MASS = 0.15


@pytest.fixture(scope="module")
def versions() -> Prompts:
    settings = Settings()
    tokenizer = AutoTokenizer.from_pretrained(
        str(resolve_model(settings.model, settings.cache_dir)), local_files_only=True
    )
    return Prompts(tokenizer)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, versions: Prompts) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("readouts")
    version = versions.score_version(DEFAULT_RUBRIC)
    Calibration(
        kind="temperature_bias",
        params={"temperature": 2.0, "bias": [-0.5, 0.0, 0.5, 0.5, 0.0]},
        model=MODEL,
        labels=LABELS,
        values=[1.0, 2.0, 3.0, 4.0, 5.0],
        method="final",
        template="default",
        prompt_version=version,
        target_error=0.2,
        min_calibrated_probability=0.3,
    ).save(folder / "calibration.json")
    rng = np.random.default_rng(0)
    Probe(
        layers=[16, 2],
        mean=list(rng.normal(0, 0.1, 2 * HIDDEN)),
        scale=list(rng.uniform(0.5, 2.0, 2 * HIDDEN)),
        weights=rng.normal(0, 0.02, (5, 2 * HIDDEN)).tolist(),
        bias=[0.1, 0.0, -0.1, 0.2, 0.0],
        strength=1.0,
        model=MODEL,
        labels=LABELS,
        values=[1.0, 2.0, 3.0, 4.0, 5.0],
        template="default",
        prompt_version=version,
    ).save(folder / "probe.json")
    return folder / "calibration.json", folder / "probe.json"


@pytest.fixture(scope="module", params=ENGINES)
def readout_server(request: pytest.FixtureRequest, files: tuple[Path, Path]) -> Iterator[RunningServer]:
    calibration, probe = files
    running = start_server(
        calibration_file=calibration,
        probe_file=probe,
        review_min_label_mass=MIN_LABEL_MASS,
        **engine_settings(request.param),
    )
    yield running
    running.stop()


def post(server: RunningServer, payload: dict) -> dict:
    with server.client() as client:
        response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def test_calibrated_scores_and_review_flags(readout_server: RunningServer, files: tuple[Path, Path]) -> None:
    calibration = Calibration.load(files[0])
    body = post(readout_server, {"items": ITEMS})
    assert body["prompt_version"] == calibration.prompt_version
    for result in body["results"]:
        expected = calibration.apply(list(result["distribution"].values()))
        calibrated = result["calibrated"]
        assert list(calibrated["distribution"].values()) == pytest.approx(expected, abs=1e-9)
        dist = scoring.from_probs(LABELS, expected, [1, 2, 3, 4, 5])
        assert calibrated["expected_score"] == pytest.approx(dist.expected_score)
        assert calibrated["mode"] == dist.mode and calibrated["confidence"] == pytest.approx(dist.confidence)
        assert result["calibration_note"] is None
        reasons = []
        if result["label_mass"] < MIN_LABEL_MASS:
            reasons.append("low_label_mass")
        if not review.pins_one_label(expected, 0.3):
            reasons.append("calibrated_uncertain")
        assert result["review_reasons"] == reasons and result["needs_review"] == bool(reasons)


def test_a_calibration_is_never_applied_to_another_setup(
    readout_server: RunningServer, versions: Prompts, files: tuple[Path, Path]
) -> None:
    rubric = {"criteria": "Is it right?", "score_descriptions": {str(k): f"level {k}" for k in range(1, 6)}}
    other = post(readout_server, {"items": ITEMS[:1], "rubric": rubric})["results"][0]
    assert other["calibrated"] is None and "prompt version" in other["calibration_note"]
    reordered = post(readout_server, {"items": ITEMS[:1], "template": "rubric_last"})["results"][0]
    assert reordered["calibrated"] is None and "prompt version" in reordered["calibration_note"]
    # The same prompt, read after a critique: not what the calibration was fitted on.
    critique = {"max_tokens": 2, "marker": "[RESULT]"}
    written = post(readout_server, {"items": ITEMS[:1], "critique": critique})
    assert written["prompt_version"] != versions.score_version(DEFAULT_RUBRIC)
    (result,) = written["results"]
    assert result["critique_tokens"] is not None
    assert result["calibrated"] is None and "prompt version" in result["calibration_note"]
    raw = post(readout_server, {"items": [{"id": "r", "prompt": "Score:"}]})["results"][0]
    assert raw["calibrated"] is None and raw["calibration_note"]
    lager = post(readout_server, {"items": ITEMS[:1], "method": "lager"})["results"][0]
    assert lager["calibrated"] is None and "method" in lager["calibration_note"]
    with readout_server.client() as client:
        refused = client.post("/v1/score", json={"items": ITEMS[:1], "rubric": rubric, "method": "probe"})
        probed_after_critique = client.post(
            "/v1/score", json={"items": ITEMS[:1], "method": "probe", "critique": critique}
        )
    assert refused.status_code == 422 and "prompt version" in refused.json()["error"]["message"]
    # Nor is the probe fitted on plain reads applied after a critique: the request is refused
    # as a critique with a per-layer readout, and the probe would not match its version.
    assert probed_after_critique.status_code == 422
    assert probed_after_critique.json()["error"]["details"] == {"field": "critique"}
    reason = Probe.load(files[1]).mismatch(MODEL, LABELS, written["prompt_version"])
    assert reason is not None and "prompt version" in reason


def test_probe_equals_its_weights_on_the_hidden_rows(
    readout_server: RunningServer, files: tuple[Path, Path], reference: Reference, versions: Prompts
) -> None:
    probe = Probe.load(files[1])
    probed = post(readout_server, {"items": ITEMS, "method": "probe"})
    hidden = post(readout_server, {"items": ITEMS, "hidden_layers": [16, 2, 30]})
    tol = tolerance(readout_server)
    for item, result, rows in zip(ITEMS, probed["results"], hidden["results"], strict=True):
        # The engine's hidden rows equal a direct forward pass at the scoring position.
        prompt = versions.score(item["instruction"], item["response"], None, DEFAULT_RUBRIC)
        direct = reference.hidden_states(prompt)
        for layer in (16, 2, 30):
            got = np.asarray(rows["hidden"][str(layer)])
            want = direct[layer].numpy()
            assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), layer
        logits = probe.logits([rows["hidden"]["16"], rows["hidden"]["2"]])
        expected = scoring.distribution(LABELS, logits, [1, 2, 3, 4, 5])
        assert list(result["distribution"].values()) == pytest.approx(expected.probs, abs=max(tol, 1e-6))
        assert result["expected_score"] == pytest.approx(expected.expected_score, abs=max(tol, 1e-6))
        assert math.isclose(sum(result["distribution"].values()), 1.0, abs_tol=1e-9)
        # The probe is not what the calibration was fitted for.
        assert result["calibrated"] is None and "method" in result["calibration_note"]


def test_hidden_layer_out_of_range(readout_server: RunningServer) -> None:
    with readout_server.client() as client:
        response = client.post("/v1/score", json={"items": ITEMS[:1], "hidden_layers": [31]})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == {"hidden_layer": 31, "max_hidden_layer": 30}


def test_readme_probe_example(readout_server: RunningServer) -> None:
    from tests.e2e.test_docs import curl_calls, entries

    examples = [(path, body) for path, body in curl_calls() if body.get("method") == "probe"]
    assert examples
    for path, body in examples:
        with readout_server.client() as client:
            response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == entries(body)
