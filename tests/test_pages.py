"""The pages for people: /docs and /redoc with no CDN, and the playground in a real browser,
whose bars and numbers must equal the API's own answer to the same request."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.prompts import DEFAULT_CRITERIA, DEFAULT_SCORE_DESCRIPTIONS
from tests.conftest import ROOT, RunningServer, start_server

PAGES = ["/docs", "/redoc", "/playground"]
PLAYGROUND_FILES = ["index.html", "playground.js", "playground.css"]
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


def test_playground_config_gives_the_default_rubric_and_auth() -> None:
    assert app_client().get("/playground/config.json").json() == {
        "auth_required": False,
        "methods": ["final", "lager", "lager_weighted"],
        "rubric": {"criteria": DEFAULT_CRITERIA, "score_descriptions": DEFAULT_SCORE_DESCRIPTIONS},
        "pair_criteria": "Which response is more helpful, correct, relevant and clear?",
    }
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
    assert {f"service/static/playground/{name}" for name in PLAYGROUND_FILES} <= names


# --- In a real browser --------------------------------------------------------------------


def _browser_or_skip() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "the selenium package (the `test` extra)"
    else:
        missing = "" if chromium and driver else "Debian's chromium and chromium-driver packages"
    if missing:
        message = f"{missing} not installed; `make test` installs them where it can (as root, with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert chromium and driver
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,1000",
        # The outside is unreachable: no host name resolves, and anything not on loopback goes
        # to a proxy on a closed port. Pages that needed a CDN would stay blank.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def open_server() -> Iterator[RunningServer]:
    running = start_server(engine="transformers")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    running = start_server(engine="transformers", api_keys=KEY)
    yield running
    running.stop()


def requests_made(driver: Any) -> list[tuple[str, str | None]]:
    """Every request the page started since the last call, from Chromium's own network log:
    (URL, the reason the browser blocked it before it left, or None)."""
    urls: dict[str, str] = {}
    blocked: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked[params["requestId"]] = params["blockedReason"]
    return [(url, blocked.get(request_id)) for request_id, url in urls.items()]


def assert_only_local(driver: Any, server: RunningServer, allowed_blocked: int = 0) -> None:
    requests = requests_made(driver)
    assert requests
    outside = [(url, why) for url, why in requests if not url.startswith((server.url + "/", "data:", "blob:"))]
    # A request the page's Content-Security-Policy stopped never left the browser.
    assert all(why == "csp" for _, why in outside), outside
    assert len(outside) <= allowed_blocked, outside


def wait_for(driver: Any, condition: Any, timeout: float = 120) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def open_page(driver: Any, url: str) -> None:
    # Drop what earlier pages (and the browser's start page) requested.
    driver.get_log("performance")
    driver.get(url)


def open_playground(driver: Any, server: RunningServer) -> None:
    open_page(driver, f"{server.url}/playground")
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "true")


def type_into(field: Any, text: str) -> None:
    field.clear()
    field.send_keys(text)


def fill(driver: Any, element_id: str, text: str) -> None:
    type_into(driver.find_element("id", element_id), text)


def submit(driver: Any) -> str:
    """Press Judge and wait for the answer; returns the output's state (done or error)."""
    driver.find_element("id", "submit").click()
    return str(
        wait_for(
            driver,
            lambda d: (
                (state := d.find_element("id", "output").get_attribute("data-state")) in ("done", "error") and state
            ),
        )
    )


def shown_bars(driver: Any, chart: str) -> dict[str, float]:
    """The bars of one chart: label -> probability, checking each bar's drawn height too."""
    bars = {}
    for column in driver.find_elements("css selector", f'figure[data-chart="{chart}"] .column'):
        p = float(column.get_attribute("data-p"))
        track = column.find_element("css selector", ".track").size["height"]
        bar = column.find_element("css selector", ".bar").size["height"]
        assert bar == pytest.approx(p * track, abs=1.5), (column.get_attribute("data-label"), bar, track, p)
        bars[column.get_attribute("data-label")] = p
    assert bars, chart
    return bars


def shown_stats(driver: Any) -> dict[str, Any]:
    return {
        dd.get_attribute("data-stat"): json.loads(dd.get_attribute("data-value"))
        if dd.get_attribute("data-stat") not in ("mode", "verdict")
        else dd.get_attribute("data-value")
        for dd in driver.find_elements("css selector", "dd[data-stat]")
    }


def shown_curl(driver: Any, key: str | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The curl command the page shows, parsed: URL, headers and JSON body."""
    words = shlex.split(driver.find_element("id", "curl").text.replace("\\\n", " "))
    assert words[:2] == ["curl", "-s"]
    headers = dict(
        value.replace("$JUDGE_API_KEY", key or "").split(": ", 1)
        for flag, value in itertools.pairwise(words)
        if flag == "-H"
    )
    return words[2], headers, json.loads(words[words.index("-d") + 1])


def save_screenshot(driver: Any, name: str) -> None:
    """The README's pictures, when asked for: `PLAYGROUND_SCREENSHOTS=docs pytest tests/test_pages.py`."""
    if folder := os.environ.get("PLAYGROUND_SCREENSHOTS"):
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(folder) / name))


def assert_same(shown: float | None, answer: float | None) -> None:
    assert shown == (None if answer is None else pytest.approx(answer, rel=1e-9, abs=1e-12))


def assert_score_shown(driver: Any, answer: dict[str, Any]) -> None:
    (result,) = answer["results"]
    assert shown_bars(driver, "distribution").keys() == result["distribution"].keys()
    for label, p in shown_bars(driver, "distribution").items():
        assert_same(p, result["distribution"][label])
    stats = shown_stats(driver)
    for key in ["expected_score", "std", "confidence", "label_mass"]:
        assert_same(stats[key], result[key])
    assert stats["mode"] == result["mode"] and stats["prompt_tokens"] == result["prompt_tokens"]


def replay_curl(driver: Any, key: str | None = None) -> dict[str, Any]:
    url, headers, body = shown_curl(driver, key)
    response = httpx.post(url, headers=headers, content=json.dumps(body), timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["final", "lager"])
def test_playground_shows_the_api_distribution(browser: Any, open_server: RunningServer, method: str) -> None:
    from selenium.webdriver.support.ui import Select

    open_playground(browser, open_server)
    fill(browser, "instruction", "What is 2+2?")
    fill(browser, "response", "4")
    fill(browser, "reference", "4")
    Select(browser.find_element("id", "method")).select_by_value(method)
    assert submit(browser) == "done"

    request = {
        "items": [
            {
                "id": "playground",
                "instruction": "What is 2+2?",
                "response": "4",
                "reference_answer": "4",
            }
        ],
        "rubric": {"criteria": DEFAULT_CRITERIA, "score_descriptions": DEFAULT_SCORE_DESCRIPTIONS},
        "method": method,
    }
    with open_server.client() as client:
        answer = client.post("/v1/score", json=request).json()
    assert_score_shown(browser, answer)
    # The curl command is the very request: same body, same answer.
    assert shown_curl(browser)[2] == request
    assert replay_curl(browser) == answer
    assert_only_local(browser, open_server)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    if method == "final":
        save_screenshot(browser, "playground.png")


@pytest.mark.slow
def test_playground_raw_prompt_with_own_labels_and_rubric_order(browser: Any, open_server: RunningServer) -> None:
    open_playground(browser, open_server)
    browser.find_element("id", "kind-raw").click()
    fill(browser, "prompt", "Is the sky green? Answer yes or no:")
    fill(browser, "labels", '[" yes", " no", " maybe"]')
    fill(browser, "label-values", '{" yes": 1, " no": 0, " maybe": 0.5}')
    assert submit(browser) == "done"
    _, _, body = shown_curl(browser)
    assert body["labels"] == [" yes", " no", " maybe"]
    assert_score_shown(browser, replay_curl(browser))

    # A rubric whose labels run high to low keeps that order on the wire and in the chart,
    # though JavaScript objects put integer-like keys in ascending order.
    open_playground(browser, open_server)
    rows = browser.find_elements("css selector", ".rubric-row")
    for row, (label, description) in zip(rows, reversed(DEFAULT_SCORE_DESCRIPTIONS.items()), strict=True):
        type_into(row.find_element("css selector", ".rubric-label"), label)
        type_into(row.find_element("css selector", ".rubric-description"), description)
    rows[-1].find_element("css selector", "button").click()
    assert submit(browser) == "done"
    _, _, body = shown_curl(browser)
    assert list(body["rubric"]["score_descriptions"]) == ["5", "4", "3", "2"]
    assert list(shown_bars(browser, "distribution")) == ["5", "4", "3", "2"]
    assert_score_shown(browser, replay_curl(browser))


@pytest.mark.slow
def test_playground_compares_a_pair(browser: Any, open_server: RunningServer) -> None:
    open_playground(browser, open_server)
    browser.find_element("id", "mode-compare").click()
    fill(browser, "pair-instruction", "What is 2+2?")
    fill(browser, "response-a", "4")
    fill(browser, "response-b", "It is 5.")
    assert submit(browser) == "done"

    request = {
        "pairs": [{"id": "playground", "instruction": "What is 2+2?", "response_a": "4", "response_b": "It is 5."}],
        "criteria": "Which response is more helpful, correct, relevant and clear?",
        "swap": True,
    }
    assert shown_curl(browser)[2] == request
    with open_server.client() as client:
        (result,) = client.post("/v1/compare", json=request).json()["results"]
    for chart, distribution in [
        ("distribution", result["distribution"]),
        ("order-ab", result["orders"]["ab"]),
        ("order-ba", result["orders"]["ba"]),
    ]:
        bars = shown_bars(browser, chart)
        assert list(bars) == ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
        for verdict, p in bars.items():
            assert_same(p, distribution[verdict])
    stats = shown_stats(browser)
    assert stats["verdict"] == result["verdict"]
    for key in ["p_a_wins", "p_tie", "p_b_wins", "position_consistency"]:
        assert_same(stats[key], result[key])
    assert_only_local(browser, open_server)
    save_screenshot(browser, "playground-compare.png")


@pytest.mark.slow
def test_playground_shows_the_error_envelope_as_it_is(browser: Any, open_server: RunningServer) -> None:
    from selenium.webdriver.support.ui import Select

    # No layer weights are configured, so the API answers lager_weighted with a 422.
    open_playground(browser, open_server)
    Select(browser.find_element("id", "method")).select_by_value("lager_weighted")
    assert submit(browser) == "error"
    _, _, body = shown_curl(browser)
    with open_server.client() as client:
        expected = client.post("/v1/score", json=body)
    assert expected.status_code == 422
    error = browser.find_element("id", "error")
    assert error.get_attribute("data-status") == "422"
    assert json.loads(error.text) == expected.json()


@pytest.mark.slow
def test_playground_asks_for_a_key_and_keeps_it_in_memory(browser: Any, keyed_server: RunningServer) -> None:
    open_playground(browser, keyed_server)
    key_field = browser.find_element("id", "api-key")
    assert key_field.is_displayed()

    key_field.send_keys("wrong-key")
    assert submit(browser) == "error"
    url, headers, body = shown_curl(browser, "wrong-key")
    wrong = httpx.post(url, headers=headers, content=json.dumps(body), timeout=60)
    assert wrong.status_code == 401
    error = browser.find_element("id", "error")
    assert error.get_attribute("data-status") == "401"
    assert json.loads(error.text) == wrong.json()

    key_field.clear()
    key_field.send_keys(KEY)
    assert submit(browser) == "done"
    assert_score_shown(browser, replay_curl(browser, KEY))
    # The key lives in the page's memory only: not in the URL, storage, cookies, the DOM or the curl text.
    assert KEY not in browser.current_url and "$JUDGE_API_KEY" in browser.find_element("id", "curl").text
    stored = browser.execute_script(
        "return [JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.cookie]"
    )
    assert stored == ["{}", "{}", ""]
    assert KEY not in browser.page_source and KEY not in browser.find_element("id", "output").text
    assert_only_local(browser, keyed_server)


@pytest.mark.slow
def test_docs_and_redoc_render_with_the_outside_unreachable(browser: Any, open_server: RunningServer) -> None:
    open_page(browser, f"{open_server.url}/docs")
    wait_for(browser, lambda d: d.find_elements("css selector", '.opblock-summary-path[data-path="/v1/score"]'), 60)
    assert_only_local(browser, open_server)

    open_page(browser, f"{open_server.url}/redoc")
    # ReDoc renders each operation as a section whose id names its operation.
    wait_for(browser, lambda d: d.find_elements("css selector", '[id*="score_v1_score_post"]'), 60)
    assert "/v1/score" in browser.find_element("tag name", "body").text
    # ReDoc's sidebar asks for its vendor's logo; the page's policy stops it in the browser.
    assert_only_local(browser, open_server, allowed_blocked=1)
