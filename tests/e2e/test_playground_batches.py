"""The playground's Batches panel in a real browser: a batch submitted with the openai SDK is
listed for the key in the form, with its progress, until it completes; its output file
downloads with the key, byte for byte what the API serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server
from tests.support.batches import client_for, jsonl, score_line
from tests.support.browser import assert_only_local, fill, open_playground, start_chromium, wait_for

pytestmark = pytest.mark.slow
KEY = "batch-page-key"
# Metadata is the caller's text: the page must show it as text, never run it as markup.
MARKUP = '<img src="x" onerror="document.body.dataset.ran = 1">'


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("page-jobs")
    running = start_server(engine="transformers", data_dir=Path(data), api_keys=KEY, jobs_chunk_items=1)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


def panel_after_refresh(driver: Any) -> str:
    """Press Refresh and wait for the panel's answer; its status line."""
    driver.execute_script("document.getElementById('batches').dataset.state = 'asked'")
    driver.find_element("id", "batches-refresh").click()
    wait_for(driver, lambda d: d.find_element("id", "batches").get_attribute("data-state") in ("done", "error"))
    return str(driver.find_element("id", "batches-status").text)


def shown_row(driver: Any, batch_id: str) -> dict[str, str] | None:
    rows = driver.find_elements("css selector", f'#batches-rows tr[data-batch-id="{batch_id}"]')
    keys = ("status", "total", "completed", "failed")
    return {key: rows[0].get_attribute(f"data-{key}") for key in keys} if rows else None


def test_the_playground_lists_the_keys_batches_with_their_progress(
    browser: Any, jobs_server: RunningServer, tmp_path: Path
) -> None:
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    open_playground(browser, jobs_server)
    wait_for(browser, lambda d: d.find_element("id", "batches").get_attribute("data-state") == "error")
    assert "401" in browser.find_element("id", "batches-status").text  # no key yet
    browser.get_log("browser")  # the 401 is logged as a failed load; what follows must not be
    fill(browser, "api-key", KEY)
    assert panel_after_refresh(browser) == "No batches for this key yet."

    client = client_for(jobs_server.url, KEY)
    content = jsonl([score_line("p1", "What is 2+2?", "4"), score_line("p2", "Name a colour.", "Blue.")])
    uploaded = client.files.create(file=("two.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/score",
        completion_window="24h",
        metadata={"note": MARKUP},
    )
    panel_after_refresh(browser)
    first = shown_row(browser, batch.id)
    assert first is not None and first["total"] == "2"
    # No more clicks: while the batch runs the panel refreshes itself until it shows the end.
    wait_for(browser, lambda d: (shown_row(d, batch.id) or {}).get("status") == "completed", 120)
    done = client.batches.retrieve(batch.id)
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (2, 0)
    assert shown_row(browser, batch.id) == {"status": "completed", "total": "2", "completed": "2", "failed": "0"}
    row = browser.find_element("css selector", f'#batches-rows tr[data-batch-id="{batch.id}"]')
    bar = row.find_element("css selector", ".progress-bar")
    assert row.find_element("css selector", ".part.completed").size["width"] == pytest.approx(
        bar.size["width"] - 2, abs=1.5
    )
    assert row.find_element("css selector", ".counts").text == "2/2 done"
    shown_time = row.find_element("tag name", "time").get_attribute("datetime")
    assert datetime.fromisoformat(shown_time.replace("Z", "+00:00")) == datetime.fromtimestamp(done.created_at, UTC)
    note = row.find_element("css selector", ".metadata")
    assert note.text == f"note: {MARKUP}" and note.find_elements("xpath", "./*") == []
    assert browser.execute_script("return document.body.dataset.ran") is None
    assert row.find_elements("css selector", 'a[data-file="errors"]') == []

    row.find_element("css selector", 'a[data-file="output"]').click()
    saved = tmp_path / f"{batch.id}-output.jsonl"
    deadline = time.monotonic() + 60
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved.read_bytes() == client.files.content(done.output_file_id or "").content
    assert_only_local(browser, jobs_server)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
