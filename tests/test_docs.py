"""The README matches the code: commands, settings and curl examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
