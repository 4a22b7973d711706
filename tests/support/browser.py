"""Driving Debian's Chromium from the tests: start it with the outside unreachable, and read
what the playground shows (bars, numbers, curl command) back out of the page."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer


def chromium_or_skip() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver; skips without them, but fails under CI."""
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


def start_chromium(user_data_dir: Path) -> Any:
    """A headless Chromium under Selenium, logging every network request it makes."""
    chromium, driver_path = chromium_or_skip()
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
        f"--user-data-dir={user_data_dir}",
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
    return driver


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


TEXT_STATS = ("mode", "verdict", "prompt_version")


def shown_stats(driver: Any) -> dict[str, Any]:
    """The numbers under the chart (and the critique's), as the API's values: from each
    entry's data-value, JSON but for the ones that are text."""
    return {
        dd.get_attribute("data-stat"): json.loads(dd.get_attribute("data-value"))
        if dd.get_attribute("data-stat") not in TEXT_STATS
        else dd.get_attribute("data-value")
        for dd in driver.find_elements("css selector", "dd[data-stat]")
    }


def shown_critique(driver: Any) -> str | None:
    """The critique text the page shows, exactly (None when it shows none); it must be plain
    text, whatever markup the judge wrote."""
    shown = driver.find_elements("id", "critique-text")
    if not shown:
        return None
    (text,) = shown
    assert text.find_elements("xpath", "./*") == [], "the critique was rendered as HTML"
    return str(text.get_property("textContent"))


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
    """The docs' pictures, when asked for: `PLAYGROUND_SCREENSHOTS=docs pytest tests/e2e/test_pages_in_browser.py`."""
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
    assert stats["prompt_version"] == answer["prompt_version"]
    assert shown_critique(driver) == result["critique"]
    if result["critique"] is None:
        assert "marker_found" not in stats and "critique_tokens" not in stats
    else:
        assert stats["marker_found"] is result["marker_found"]
        assert stats["critique_tokens"] == result["critique_tokens"]


def replay_curl(driver: Any, key: str | None = None) -> dict[str, Any]:
    url, headers, body = shown_curl(driver, key)
    response = httpx.post(url, headers=headers, content=json.dumps(body), timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())
