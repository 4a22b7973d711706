"""The README matches the code: commands, settings and curl examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    commands = [block.strip() for block in bash_blocks()]
    assert "make test" in commands and "make serve" in commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`JUDGE_{name.upper()}`" in README, name
        assert f"`--{name.replace('_', '-')}`" in README, name


def curl_calls() -> list[tuple[str, dict]]:
    """Every curl example of the README: (path, body)."""
    return [
        (re.search(r"localhost:8000(/v1/\w+)", block).group(1), json.loads(body))
        for block in bash_blocks()
        if block.startswith("curl") and "/v1/" in block
        for body in re.findall(r"-d '(.*?)'", block, flags=re.S)
    ]


def entries(body: dict) -> int:
    return len(body.get("items", body.get("pairs", body.get("candidates", []))))


def test_readme_curl_examples_work(client) -> None:
    calls = curl_calls()
    assert {path for path, _ in calls} == {"/v1/score", "/v1/compare", "/v1/rank"} and len(calls) >= 7
    for path, body in calls:
        if body.get("method") == "probe":
            # Needs a probe file: tests/serving/test_readouts.py runs it on a server with one.
            continue
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert len(answer.get("results", answer.get("ranking", []))) == entries(body)


def first_score_sample() -> tuple[dict, dict]:
    """The README's first /v1/score example and the answer printed under it."""
    section = README.split("## Scoring with curl", 1)[1]
    body = json.loads(re.search(r"-d '(.*?)'", section, flags=re.S).group(1))
    answer = json.loads(re.search(r"```json\n(.*?)```", section, flags=re.S).group(1))
    return body, answer


def assert_rounded(printed: object, actual: object, where: str) -> None:
    """``printed`` is ``actual`` with its floats rounded (and within engine tolerance)."""
    if isinstance(actual, dict):
        assert isinstance(printed, dict) and printed.keys() == actual.keys(), where
        for key in actual:
            assert_rounded(printed[key], actual[key], f"{where}.{key}")
    elif isinstance(actual, list):
        assert isinstance(printed, list) and len(printed) == len(actual), where
        for i, (p, a) in enumerate(zip(printed, actual, strict=True)):
            assert_rounded(p, a, f"{where}[{i}]")
    elif isinstance(actual, float):
        assert printed == pytest.approx(actual, abs=2e-3), where
    else:
        assert printed == actual, where


def test_readme_score_sample_is_the_real_answer(client) -> None:
    """Every field the response carries is printed, with the values it has (rounded); and
    the critique example's critique fields are the ones the server writes."""
    body, printed = first_score_sample()
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    assert_rounded(printed, response.json(), "answer")

    (critique_body,) = [body for path, body in curl_calls() if path == "/v1/score" and "critique" in body]
    fields = json.loads(re.search(r'`(\{"critique": .*?\})`', README, flags=re.S).group(1))
    (result,) = client.post("/v1/score", json=critique_body).json()["results"]
    assert fields == {key: result[key] for key in fields} and len(fields) == 3
