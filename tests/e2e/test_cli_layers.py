"""``judge-service eval`` and ``fit-layers`` through a service that requires an API key,
and on a rubric whose labels are not numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli.layers import labels_and_values
from service.offline.evaluation import read_dataset
from tests.conftest import ROOT, RunningServer, start_server

pytestmark = pytest.mark.slow

LETTERS = {"E": "Bad.", "D": "Weak.", "C": "Fair.", "B": "Good.", "A": "Excellent."}


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    running = start_server(api_keys="eval-key")
    yield running
    running.stop()


@pytest.fixture
def letter_data(tmp_path: Path) -> Path:
    """Eight items graded on an A-E rubric, human scores on its 1-5 positions."""
    rubric = {"criteria": "Is the answer right?", "score_descriptions": LETTERS}
    rows = [
        {"id": str(n), "instruction": f"What is {n}+{n}?", "response": str(2 * n + n % 2), "human_score": 1 + n % 5}
        for n in range(8)
    ]
    path = tmp_path / "letters.jsonl"
    path.write_text("".join(json.dumps({**row, "rubric": rubric}) + "\n" for row in rows))
    return path


def test_non_numeric_labels_take_their_position_as_value(letter_data: Path) -> None:
    labels, values = labels_and_values(read_dataset(letter_data))
    assert labels == list(LETTERS) and values == [1.0, 2.0, 3.0, 4.0, 5.0]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *command], capture_output=True, text=True, timeout=600)


def test_eval_and_fit_layers_send_the_api_key(keyed_server: RunningServer, letter_data: Path, tmp_path: Path) -> None:
    url = ["--url", keyed_server.url, "--no-progress"]
    refused = run(["eval", str(letter_data), *url, "--report", str(tmp_path / "r0.json")])
    assert refused.returncode != 0 and "401" in refused.stderr
    weights = tmp_path / "weights.json"
    fitted = run(["fit-layers", str(letter_data), "-o", str(weights), *url, "--api-key", "eval-key"])
    assert fitted.returncode == 0, fitted.stderr
    report = tmp_path / "report.json"
    evaluated = run(["eval", str(letter_data), *url, "--api-key", "eval-key", "--report", str(report)])
    assert evaluated.returncode == 0, evaluated.stderr
    data = json.loads(report.read_text())
    assert data["eval_items"] == 4 and data["fit_items"] == 4
    assert "lager_weighted" in data["methods"]


def test_the_pairwise_lager_benchmark_sends_the_api_key(keyed_server: RunningServer, tmp_path: Path) -> None:
    """bench/lager_pairwise.py takes --api-key with --url, like the commands."""
    fit = tmp_path / "fit.jsonl"
    rows = [
        {"id": str(n), "instruction": f"What is {n}+{n}?", "response": str(2 * n + n % 2), "human_score": 1 + n % 5}
        for n in range(8)
    ]
    fit.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "pairwise.json"
    command = [sys.executable, str(ROOT / "bench" / "lager_pairwise.py"), "--url", keyed_server.url]
    command += ["--limit", "4", "--fit-data", str(fit), "--out", str(out)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "401" in refused.stderr
    done = subprocess.run([*command, "--api-key", "eval-key"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["pairs"] == 4 and report["weights_fitted_on"] == "fit.jsonl, 4 items"
    assert "lager_weighted" in report["methods"]
