"""The pages for people as the app serves them, no model loaded: /docs, /redoc and the
playground with no CDN, only their own files, the playground's config, and a wheel that
ships them."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient
from judge_client.protocol import Template

from service.app import create_app
from service.config import Settings
from service.requests.presets import MT_BENCH_CRITERIA, PROMETHEUS
from service.requests.prompts import DEFAULT_CRITERIA, DEFAULT_SCORE_DESCRIPTIONS
from tests.conftest import ROOT

PAGES = ["/docs", "/redoc", "/playground"]
PLAYGROUND_FILES = ["index.html", "playground.js", "batches.js", "playground.css"]
KEY = "page-key"


def app_client(**overrides: Any) -> TestClient:
    # No lifespan: the pages need no model, so no model is loaded.
    return TestClient(create_app(Settings(**overrides)))


def local_references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']*)["']""", html) + re.findall(r"url: '([^']*)'", html)


@pytest.mark.parametrize("page", PAGES)
def test_pages_reference_only_local_assets(page: str) -> None:
    client = app_client()
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "://" not in response.text, "the page names an outside host"
    references = [ref for ref in local_references(response.text) if not ref.startswith("data:")]
    assert references, response.text
    for ref in references:
        url = ref if ref.startswith("/") else f"/{ref}"
        assert client.get(url).status_code == 200, ref


def test_playground_assets_name_no_outside_host() -> None:
    client = app_client()
    for name in PLAYGROUND_FILES[1:]:
        response = client.get(f"/playground/{name}")
        assert response.status_code == 200, name
        assert "://" not in response.text, name
    policy = client.get("/playground").headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy


def test_playground_config_gives_templates_critique_defaults_and_auth() -> None:
    default_rubric = {
        "criteria": DEFAULT_CRITERIA,
        "score_descriptions": [list(p) for p in DEFAULT_SCORE_DESCRIPTIONS.items()],
    }
    mt_bench_rubric = {"criteria": MT_BENCH_CRITERIA, "score_descriptions": [[str(n), ""] for n in range(1, 11)]}
    assert app_client(max_critique_tokens=200).get("/playground/config.json").json() == {
        "auth_required": False,
        "methods": ["final", "lager", "lager_weighted", "probe"],
        # Every template the API accepts, with the rubric and critique a request without them gets.
        "templates": [
            {"name": "default", "rubric": default_rubric, "critique": None},
            {"name": "rubric_last", "rubric": default_rubric, "critique": None},
            {"name": "prometheus", "rubric": default_rubric, "critique": {"max_tokens": 200, "marker": "[RESULT]"}},
            {"name": "mt-bench", "rubric": mt_bench_rubric, "critique": {"max_tokens": 200, "marker": "[["}},
        ],
        "critique": {"max_tokens": 64, "marker": "Score:", "max_tokens_limit": 200},
        "pair_criteria": "Which response is more helpful, correct, relevant and clear?",
    }
    assert [t["name"] for t in app_client().get("/playground/config.json").json()["templates"]] == list(
        get_args(Template)
    )
    # A preset's critique is its own, within the server's longest.
    prometheus = app_client().get("/playground/config.json").json()["templates"][2]
    assert prometheus["critique"] == {"max_tokens": PROMETHEUS.max_tokens, "marker": PROMETHEUS.marker}
    # The page is open like /docs, even when the API needs a key.
    keyed = app_client(api_keys=KEY)
    assert keyed.get("/playground").status_code == 200
    assert keyed.get("/playground/config.json").json()["auth_required"] is True
    assert keyed.get("/docs").status_code == 200


def test_playground_off_is_an_unknown_path() -> None:
    client = app_client(playground=False)
    unknown = client.get("/no-such-page")
    for path in ["/playground", "/playground/config.json", "/playground/playground.js"]:
        response = client.get(path)
        assert (response.status_code, response.json()) == (404, unknown.json()), path
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("path", ["/docs/assets/..%2Fpages.py", "/docs/assets/pages.py", "/playground/index.html"])
def test_only_listed_files_are_served(path: str) -> None:
    response = app_client().get(path)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


@pytest.mark.slow
def test_a_built_wheel_ships_the_playground(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
    )
    (wheel,) = tmp_path.glob("judge_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"service/http/static/playground/{name}" for name in PLAYGROUND_FILES} <= names
