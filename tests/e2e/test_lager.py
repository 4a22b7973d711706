"""LAGER on the real default model and both engines: per-layer logits, aggregation,
fitting, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from service.methods.lager import LayerWeights
from tests.conftest import SHARED_DATA, Reference, RunningServer, engine_settings, process_server

pytestmark = pytest.mark.slow

LABELS = ["1", "2", "3", "4", "5"]
PROMPTS = [
    "Rate the answer from 1 to 5.\nQ: capital of Italy?\nA: Rome.\nScore:",
    "<|im_start|>user\nHow good is 'the cat sat on the mat' as a poem, 1-5?<|im_end|>\n<|im_start|>assistant\n",
]
DATA = SHARED_DATA / "topical_chat_usr.jsonl"


def reference_layer_logits(reference: Reference, prompt: str, layer_norm: bool) -> torch.Tensor:
    """[layers, labels] label logits from output_hidden_states and the LM-head weights."""
    states = reference.hidden_states(prompt)
    norm = reference.model.model.norm
    rows = []
    for index, hidden in enumerate(states):
        if layer_norm and index < len(states) - 1:
            hidden = norm(hidden.float()).double()
        rows.append(hidden)
    head = reference.model.lm_head.weight.double()[[reference.token_id(label) for label in LABELS]]
    return torch.stack(rows) @ head.T


def score(client, **payload) -> dict:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("layer_norm", [False, True])
def test_per_layer_distributions_match_independent_computation(client, reference: Reference, layer_norm) -> None:
    items = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    body = score(client, items=items, return_layers=True, layer_norm=layer_norm)
    for prompt, result in zip(PROMPTS, body["results"], strict=True):
        expected = torch.softmax(reference_layer_logits(reference, prompt, layer_norm), dim=-1)
        got = torch.tensor([[layer[label] for label in LABELS] for layer in result["layers"]], dtype=torch.float64)
        assert got.shape == (reference.model.config.num_hidden_layers + 1, 5)
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_layer_norm_final_entry_equals_final_method(server: RunningServer, client) -> None:
    items = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    final = score(client, items=items)["results"]
    layered = score(client, items=items, return_layers=True, layer_norm=True)["results"]
    # vLLM's own log-softmax runs in float32; the layer rows are projected in float64.
    tol = 1e-6 if server.runtime.engine_kind == "transformers" else 1e-4
    for f, lay in zip(final, layered, strict=True):
        assert list(lay["layers"][-1].values()) == pytest.approx(list(f["distribution"].values()), abs=tol)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_lager_is_softmax_of_mean_layer_logits(client, reference: Reference, layer_norm) -> None:
    body = score(client, items=[{"id": "p", "prompt": PROMPTS[0]}], method="lager", layer_norm=layer_norm)
    result = body["results"][0]
    expected = torch.softmax(reference_layer_logits(reference, PROMPTS[0], layer_norm).mean(0), dim=-1)
    assert list(result["distribution"].values()) == pytest.approx(expected.tolist(), abs=1e-4)
    mean = sum(p * v for p, v in zip(expected.tolist(), range(1, 6), strict=True))
    assert result["expected_score"] == pytest.approx(mean, abs=1e-3)
    assert body["method"] == "lager"


def test_lager_weighted_without_weights_is_422(client) -> None:
    response = client.post("/v1/score", json={"items": [{"id": "p", "prompt": "x"}], "method": "lager_weighted"})
    assert response.status_code == 422
    assert "JUDGE_LAYER_WEIGHTS_FILE" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def fitted(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DATA.is_file():
        pytest.skip("the shared human-labelled data is not beside the repository")
    out = tmp_path_factory.mktemp("fit") / "weights.json"
    command = [sys.executable, "-m", "service", "fit-layers", str(DATA), "-o", str(out)]
    command += ["--url", server.url, "--limit", "12", "--fit-fraction", "0.5", "--no-progress"]
    subprocess.run(command, check=True, timeout=600)
    return out


def test_fit_layers_lowers_its_own_loss(fitted: Path) -> None:
    weights = LayerWeights.load(fitted)
    assert len(weights.weights) == 30  # SmolLM2-135M: 30 decoder layers + embeddings, final entry excluded
    assert len(weights.fit_ids) == 6
    assert len(weights.losses) == 3
    assert weights.losses[-1] < weights.losses[0]


def test_lager_weighted_served_with_fitted_weights(
    server: RunningServer, fitted: Path, reference: Reference, tmp_path: Path
) -> None:

    # A server process of its own: one vLLM engine per process, as in production.
    settings = engine_settings(server.runtime.engine_kind)
    with process_server(tmp_path / "server.log", **settings, layer_weights_file=fitted) as (_, url):
        with httpx.Client(base_url=url, timeout=120) as client:
            result = score(client, items=[{"id": "p", "prompt": PROMPTS[1]}], method="lager_weighted")["results"][0]
    weights = torch.softmax(torch.tensor(LayerWeights.load(fitted).weights, dtype=torch.float64), dim=0)
    logits = reference_layer_logits(reference, PROMPTS[1], layer_norm=False)[:-1]
    expected = torch.softmax(weights @ logits, dim=-1)
    assert list(result["distribution"].values()) == pytest.approx(expected.tolist(), abs=1e-4)


def test_eval_reports_every_method_on_disjoint_items(server: RunningServer, fitted: Path, tmp_path: Path) -> None:
    report, plot = tmp_path / "report.json", tmp_path / "layers.png"
    command = [sys.executable, "-m", "service", "eval", str(DATA), "--url", server.url, "--limit", "12"]
    command += ["--weights", str(fitted), "--report", str(report), "--plot", str(plot), "--no-progress"]
    output = subprocess.run(command, check=True, timeout=600, capture_output=True, text=True).stdout
    data = json.loads(report.read_text())
    assert data["eval_items"] == 6 and data["fit_items"] == 6
    assert set(data["methods"]) >= {"final (argmax)", "final (expected)", "lager", "lager_weighted"}
    for row in data["methods"].values():
        figures = {"spearman", "pearson", "kendall", "mae", "ece"}
        # Each figure with its bootstrap 95% interval.
        assert set(row) == figures | {f"{name}_ci" for name in figures}, set(row)
        assert 0 <= row["mae"] <= 4 and 0 <= row["ece"] <= 1
        assert row["mae_ci"][0] <= row["mae"] <= row["mae_ci"][1]
    curve = data["per_layer_spearman"]["layer (no final norm)"]
    assert len(curve) == 31 and all(math.isnan(v) or -1 <= v <= 1 for v in curve)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lager_weighted" in output
