"""The README and the docs site match the code: commands, curl examples, the generated
settings and schema pages, and a site that builds with no warning."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# The README first, then every page of the site.
PAGES = {"README.md": README} | {
    str(path.relative_to(ROOT)): path.read_text() for path in sorted((ROOT / "docs").rglob("*.md"))
}


def bash_blocks(text: str | None = None) -> list[str]:
    """The bash blocks of ``text``, or of the README and every docs page."""
    texts = [text] if text is not None else list(PAGES.values())
    return [block for page in texts for block in re.findall(r"```bash\n(.*?)```", page, flags=re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    commands = [block.strip() for block in bash_blocks(README)]
    assert "make test" in commands and "make serve" in commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]


def test_readme_links_reach_files() -> None:
    """The README is not part of the site, so its links into docs/ are checked here."""
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert links and not missing, missing


def curl_calls() -> list[tuple[str, dict]]:
    """Every curl example of the README and the docs pages: (path, body)."""
    return [
        (re.search(r"localhost:8000(/v1/\w+)", block).group(1), json.loads(body))
        for block in bash_blocks()
        if block.startswith("curl") and "/v1/" in block
        for body in re.findall(r"-d '(.*?)'", block, flags=re.S)
    ]


def entries(body: dict) -> int:
    return len(body.get("items", body.get("pairs", body.get("candidates", []))))


def test_docs_curl_examples_work(client) -> None:
    calls = curl_calls()
    assert {path for path, _ in calls} == {"/v1/score", "/v1/compare", "/v1/rank"} and len(calls) >= 7
    for path, body in calls:
        if body.get("method") == "probe":
            # Needs a probe file: tests/e2e/test_readouts.py runs it on a server with one.
            continue
        response = client.post(path, json=body)
        assert response.status_code == 200, (path, body, response.text)
        answer = response.json()
        assert len(answer.get("results", answer.get("ranking", []))) == entries(body)


def score_samples() -> list[tuple[str, dict, dict]]:
    """The first /v1/score example under "Scoring with curl" and the answer printed under
    it, in the README and in the docs page of that name: (page, body, answer)."""
    samples = []
    for name in ("README.md", "docs/getting-started/curl.md"):
        section = re.split(r"^#+ Scoring with curl$", PAGES[name], maxsplit=1, flags=re.M)[1]
        body = json.loads(re.search(r"-d '(.*?)'", section, flags=re.S).group(1))
        answer = json.loads(re.search(r"```json\n(.*?)```", section, flags=re.S).group(1))
        samples.append((name, body, answer))
    return samples


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


def test_docs_score_sample_is_the_real_answer(client) -> None:
    """Every field the response carries is printed, with the values it has (rounded); and
    the critique example's critique fields are the ones the server writes."""
    for name, body, printed in score_samples():
        response = client.post("/v1/score", json=body)
        assert response.status_code == 200, response.text
        assert_rounded(printed, response.json(), name)

    (critique_body,) = {
        json.dumps(body, sort_keys=True): body
        for path, body in curl_calls()
        if path == "/v1/score" and "critique" in body
    }.values()
    (shown,) = {match for text in PAGES.values() for match in re.findall(r'`(\{"critique": .*?\})`', text, re.S)}
    fields = json.loads(shown)
    (result,) = client.post("/v1/score", json=critique_body).json()["results"]
    assert fields == {key: result[key] for key in fields} and len(fields) == 3


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built as `make docs` builds it (``--strict``) into a temporary folder."""
    folder = tmp_path_factory.mktemp("site")
    env = {key: value for key, value in os.environ.items() if not key.startswith("JUDGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env=env | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
    return folder


def test_every_docs_page_is_built(site: Path) -> None:
    """A page left out of the nav, or a broken link, fails the strict build above; every
    page is in the site, and so is every chart of bench/results."""
    for name in PAGES:
        if name.startswith("docs/"):
            page = Path(name).relative_to("docs").with_suffix("")
            folder = page.parent if page.name == "index" else page
            assert (site / folder / "index.html").is_file(), name
    for chart in (ROOT / "bench" / "results").glob("*.png"):
        assert (site / "benchmarks" / "results" / chart.name).is_file(), chart.name


def table_rows(page: Path) -> list[list[str]]:
    """The cells of every table row of a built page, as text."""
    rows = re.findall(r"<tr>(.*?)</tr>", page.read_text(), flags=re.S)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]
        for row in rows
    ]


def shown_default(field: Any) -> str:
    if field.default_factory is not None:
        return "judge-service"  # a directory worked out at startup: shown with its fallbacks
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_settings_page_lists_every_setting(site: Path) -> None:
    """The generated settings page: one row per field of Settings, with its variable, its
    flag, its default and its description."""
    rows = {row[0]: row for row in table_rows(site / "operating" / "settings" / "index.html") if row}
    assert set(rows) == {f"JUDGE_{name.upper()}" for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        _, flag, default, meaning = rows[f"JUDGE_{name.upper()}"]
        assert flag == "--" + name.replace("_", "-"), name
        assert shown_default(field) in default, (name, default)
        assert " ".join((field.description or "").split()) == meaning, name


def test_schema_page_is_the_apps_openapi(site: Path) -> None:
    """The generated schema page: every path and operation, and every schema with all its
    fields, of the app's own /openapi.json."""
    schema = create_app(Settings()).openapi()
    page = site / "api" / "schema" / "index.html"
    operations = {(row[0], row[1]) for row in table_rows(page) if len(row) == 5 and row[0].isupper()}
    expected = {(method.upper(), path) for path, methods in schema["paths"].items() for method in methods}
    assert operations == expected
    text = page.read_text()
    for name, model in schema["components"]["schemas"].items():
        assert f'id="{name.lower()}"' in text, name
        for field in model.get("properties", {}):
            assert f"<code>{field}</code>" in text, (name, field)


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGES[page], flags=re.S)


def run_snippet(code: str, server: Any, cwd: Path) -> str:
    """Run a docs snippet against the test server, as a user would paste it; its output."""
    code = code.replace("http://127.0.0.1:8000", server.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_readme_python_example_prints_the_served_score(server, client, tmp_path: Path) -> None:
    (code,) = [block for block in python_blocks("README.md") if "JudgeClient" in block]
    body = json.loads(re.search(r"judge\.score\((\[.*?\])\)", code).group(1))
    printed = float(run_snippet(code, server, tmp_path))
    served = client.post("/v1/score", json={"items": body}).json()["results"][0]["expected_score"]
    assert printed == pytest.approx(served, abs=1e-6)


@pytest.mark.parametrize("page", ["docs/api/batches.md", "README.md"])
def test_batches_openai_example_runs(server, tmp_path: Path, page: str) -> None:
    """The OpenAI SDK snippet of the batch page and the README: its upload, create and
    retrieve work as written, on the input line its comment shows."""
    (code,) = [block for block in python_blocks(page) if "from openai import OpenAI" in block]
    line = "\n".join(row.removeprefix("#").strip() for row in re.findall(r"^# [{ ].*$", code, flags=re.M))
    (tmp_path / "input.jsonl").write_text(json.dumps(json.loads(line)) + "\n")
    run_snippet(
        code + "\nassert batch.status in ('validating', 'in_progress', 'finalizing', 'completed')\n", server, tmp_path
    )
