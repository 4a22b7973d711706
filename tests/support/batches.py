"""Batch files and polling shared by the jobs tests."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from openai import OpenAI
from openai.types import Batch

TERMINAL = ("completed", "failed", "expired", "cancelled")

# Questions with right and wrong answers, scored in batches and synchronously alike.
QUESTIONS = [
    ("What is the capital of France?", "Paris."),
    ("What is 2+2?", "It is 5."),
    ("Name a primary colour.", "Blue is one of them."),
    ("Who wrote Hamlet?", "Shakespeare wrote it in about 1600."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def score_line(custom_id: str, instruction: str, response: str) -> dict[str, Any]:
    body = {"items": [{"id": custom_id, "instruction": instruction, "response": response}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/score", "body": body}


def client_for(url: str, key: str = "none") -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def submit(client: OpenAI, content: bytes, endpoint: str = "/v1/score", window: str = "24h") -> Batch:
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window=window,  # type: ignore[arg-type]
    )


def wait_for(client: OpenAI, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 600) -> Batch:
    """Poll until the batch reaches one of ``statuses``; conditions, not wall time, end the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    pytest.fail(f"batch {batch_id} did not reach {statuses} within {timeout:.0f} s")


def wait_progress(client: OpenAI, batch_id: str, completed: int, timeout: float = 600) -> int:
    """Poll until at least ``completed`` lines of the batch are answered; returns the count seen."""
    deadline = time.monotonic() + timeout
    while (counts := client.batches.retrieve(batch_id).request_counts) is None or counts.completed < completed:
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id}: fewer than {completed} lines answered within {timeout:.0f} s")
        time.sleep(0.1)
    return counts.completed


def assert_each_line_once(client: OpenAI, done: Batch, lines: list[dict[str, Any]]) -> None:
    """The batch completed with every line answered, each custom_id once, in input order."""
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == len(lines)
    output = lines_of(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == [line["custom_id"] for line in lines]
    assert done.error_file_id is None


def lines_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def assert_close(got: Any, want: Any, tol: float, where: str = "body") -> None:
    """Equal JSON, floats within ``tol``: a line runs in a batch of other lines, and a
    padded batch is equal to one-by-one scoring within the engine's tolerance, not bit for bit."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert abs(got - want) <= tol, f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: keys differ"
        for key in want:
            assert_close(got[key], want[key], tol, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: lengths differ"
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, tol, f"{where}[{k}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
