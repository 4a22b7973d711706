"""The pages for people: /docs and /redoc with no CDN, and the playground in a real browser,
whose bars and numbers must equal the API's own answer to the same request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.requests.presets import MT_BENCH_CRITERIA, PROMETHEUS
from service.requests.prompts import DEFAULT_CRITERIA, DEFAULT_SCORE_DESCRIPTIONS
from tests.conftest import RunningServer, start_server
from tests.support.browser import (
    assert_only_local,
    assert_same,
    assert_score_shown,
    fill,
    open_page,
    open_playground,
    replay_curl,
    save_screenshot,
    shown_bars,
    shown_critique,
    shown_curl,
    shown_stats,
    start_chromium,
    submit,
    type_into,
    wait_for,
)

KEY = "page-key"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def open_server() -> Iterator[RunningServer]:
    # No prefix cache: the page's request and the test's own must run the same passes, so
    # the page can be held to the API's answer digit for digit (the cache's other shapes
    # move float32 sums by about 1e-7; tests/unit/engines/transformers/test_prefix_cache.py holds it exact).
    running = start_server(engine="transformers", prefix_cache_mb=0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    running = start_server(engine="transformers", api_keys=KEY, prefix_cache_mb=0)  # as open_server
    yield running
    running.stop()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["final", "lager"])
def test_playground_shows_the_api_distribution(browser: Any, open_server: RunningServer, method: str) -> None:
    from selenium.webdriver.support.ui import Select

    open_playground(browser, open_server)
    fill(browser, "instruction", "What is 2+2?")
    fill(browser, "response", "4")
    fill(browser, "reference", "4")
    Select(browser.find_element("id", "method")).select_by_value(method)
    assert submit(browser) == "done", browser.find_element("id", "output").text

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
    assert submit(browser) == "done", browser.find_element("id", "output").text
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
    assert submit(browser) == "done", browser.find_element("id", "output").text
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
    assert submit(browser) == "done", browser.find_element("id", "output").text

    request = {
        "pairs": [{"id": "playground", "instruction": "What is 2+2?", "response_a": "4", "response_b": "It is 5."}],
        "criteria": "Which response is more helpful, correct, relevant and clear?",
        "swap": True,
    }
    assert shown_curl(browser)[2] == request
    with open_server.client() as client:
        answer = client.post("/v1/compare", json=request).json()
    (result,) = answer["results"]
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
    assert stats["prompt_version"] == answer["prompt_version"]
    assert_only_local(browser, open_server)
    save_screenshot(browser, "playground-compare.png")


@pytest.mark.slow
def test_playground_sends_a_presets_critique_and_shows_it(browser: Any, open_server: RunningServer) -> None:
    """A preset brings its critique: the page sends it, and shows the judge's text, whether
    it wrote the marker, its length and the prompt version exactly as the API answers them."""
    from selenium.webdriver.support.ui import Select

    open_playground(browser, open_server)
    assert not browser.find_element("id", "critique-on").is_selected()
    Select(browser.find_element("id", "template")).select_by_value("prometheus")
    assert browser.find_element("id", "critique-on").is_selected()
    assert browser.find_element("id", "critique-marker").get_attribute("value") == "[RESULT]"
    assert browser.find_element("id", "critique-max-tokens").get_attribute("value") == str(PROMETHEUS.max_tokens)
    fill(browser, "instruction", "Name a prime number.")
    fill(browser, "response", "Nine.")
    fill(browser, "critique-max-tokens", "8")
    assert submit(browser) == "done", browser.find_element("id", "output").text

    rubric = {"criteria": DEFAULT_CRITERIA, "score_descriptions": DEFAULT_SCORE_DESCRIPTIONS}
    item = {"id": "playground", "instruction": "Name a prime number.", "response": "Nine."}
    request = {
        "items": [item],
        "rubric": rubric,
        "method": "final",
        "template": "prometheus",
        "critique": {"max_tokens": 8, "marker": "[RESULT]"},
    }
    assert shown_curl(browser)[2] == request
    with open_server.client() as client:
        answer = client.post("/v1/score", json=request).json()
    (result,) = answer["results"]
    assert result["critique"] and result["critique_tokens"] >= 1 and isinstance(result["marker_found"], bool)
    assert shown_critique(browser) == result["critique"]
    assert_score_shown(browser, answer)  # marker_found, critique_tokens and prompt_version too
    save_screenshot(browser, "playground-critique.png")

    # Unticked, a preset is told not to write: the request says critique null, and no critique is shown.
    browser.find_element("id", "critique-on").click()
    assert submit(browser) == "done", browser.find_element("id", "output").text
    assert shown_curl(browser)[2] == {**request, "critique": None}
    plain = replay_curl(browser)
    assert plain["results"][0]["critique"] is None and shown_critique(browser) is None
    assert_score_shown(browser, plain)

    # An unedited rubric follows the template: mt-bench's is 1-10 with its own criteria and marker.
    Select(browser.find_element("id", "template")).select_by_value("mt-bench")
    labels = [row.get_attribute("value") for row in browser.find_elements("css selector", ".rubric-label")]
    assert labels == [str(n) for n in range(1, 11)]
    assert browser.find_element("id", "criteria").get_attribute("value") == MT_BENCH_CRITERIA
    assert browser.find_element("id", "critique-on").is_selected()
    assert browser.find_element("id", "critique-marker").get_attribute("value") == "[["
    assert_only_local(browser, open_server)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
def test_playground_shows_a_critique_as_text_never_as_html(browser: Any, open_server: RunningServer) -> None:
    # The default model copies the pattern: its critique is markup, which the page must show as text.
    markup = "<b>bold</b> & <i>x</i>"
    prompt = f"Copy the HTML exactly.\nInput: {markup}\nOutput: {markup}\nInput: {markup}\nOutput:"
    open_playground(browser, open_server)
    browser.find_element("id", "kind-raw").click()
    fill(browser, "prompt", prompt)
    browser.find_element("id", "critique-on").click()
    fill(browser, "critique-max-tokens", "16")
    fill(browser, "critique-marker", "</i>")
    assert submit(browser) == "done", browser.find_element("id", "output").text
    _, _, body = shown_curl(browser)
    assert body["critique"] == {"max_tokens": 16, "marker": "</i>"} and "template" not in body
    with open_server.client() as client:
        answer = client.post("/v1/score", json=body).json()
    (result,) = answer["results"]
    assert result["marker_found"] is True and "<b>" in result["critique"]
    assert shown_critique(browser) == result["critique"]  # and no element inside it
    assert browser.find_elements("css selector", "#result b, #result i") == []
    assert_score_shown(browser, answer)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


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
    wrong = httpx.post(url, headers=headers, content=json.dumps(body), timeout=600)
    assert wrong.status_code == 401
    error = browser.find_element("id", "error")
    assert error.get_attribute("data-status") == "401"
    assert json.loads(error.text) == wrong.json()

    key_field.clear()
    key_field.send_keys(KEY)
    assert submit(browser) == "done", browser.find_element("id", "output").text
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
