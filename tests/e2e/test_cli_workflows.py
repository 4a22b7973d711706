"""``fit-calibration``, ``fit-probe`` and ``eval`` with them, through a service that requires
an API key, on real Topical-Chat items: what each file records, and that eval never
reports on items a file was fitted on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.offline.evaluation import read_dataset, split
from tests.conftest import SHARED_DATA, RunningServer, start_server

pytestmark = pytest.mark.slow

KEY = "flows-key"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    running = start_server(api_keys=KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = (SHARED_DATA / "topical_chat_usr.jsonl").read_text().splitlines()[:16]
    path = tmp_path_factory.mktemp("flows") / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *command], capture_output=True, text=True, timeout=900)


def test_fit_and_eval_through_a_keyed_service(keyed_server: RunningServer, data: Path, tmp_path: Path) -> None:
    url = ["--url", keyed_server.url, "--no-progress"]
    calibration, probe = tmp_path / "calibration.json", tmp_path / "probe.json"
    for command, output in (("fit-calibration", calibration), ("fit-probe", probe)):
        refused = run([command, str(data), "-o", str(output), *url])
        assert refused.returncode != 0 and "401" in refused.stderr
        fitted = run([command, str(data), "-o", str(output), *url, "--api-key", KEY])
        assert fitted.returncode == 0, fitted.stderr
    fit_items, eval_items = split(read_dataset(data), 0.5, 0)
    one = {"id": "x", "instruction": fit_items[0].instruction, "response": fit_items[0].response}
    version = httpx.post(
        f"{keyed_server.url}/v1/score", json={"items": [one]}, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    ).json()["prompt_version"]
    for path in (calibration, probe):
        fitted = json.loads(path.read_text())
        assert fitted["model"] == "SmolLM2-135M-Instruct" and fitted["labels"] == ["1", "2", "3", "4", "5"]
        assert fitted["template"] == "default" and fitted["prompt_version"] == version
        assert sorted(fitted["fit_ids"]) == sorted(it.id for it in fit_items)
    cal = json.loads(calibration.read_text())
    assert cal["method"] == "final" and cal["kind"] in cal["cv_cross_entropy"]
    assert 0 <= cal["min_calibrated_probability"] <= 1 and set(cal["conformal_ids"]) < set(cal["fit_ids"])
    assert json.loads(probe.read_text())["layers"] == [16]

    report = tmp_path / "report.json"
    fitted_files = ["--calibration", str(calibration), "--probe", str(probe)]
    evaluated = run(
        ["eval", str(data), *url, "--api-key", KEY, *fitted_files, "--group-by", "system", "--report", str(report)]
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(report.read_text())
    # The in-run layer weights use the same split, so eval reports on the other half only.
    assert result["eval_items"] == len(eval_items) and result["fit_items"] == len(fit_items)
    for name in ("final (expected)", "final, calibrated", "probe", "lager"):
        row = result["methods"][name]
        assert len(row["spearman_ci"]) == 2 and len(row["ece_ci"]) == 2
    assert result["conformal"]["coverage"] >= 0
    systems = {it.fields["system"] for it in eval_items}
    assert set(result["groups"]) == systems
    assert sum(group["items"] for group in result["groups"].values()) == len(eval_items)
