"""The Batch API through the real ``openai`` SDK against a real server on the default model:
upload, create, poll, download, cancel, and the output equal to the synchronous answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from judge_client import AsyncJudgeClient, Batch, FileObject, JudgeClient, JudgeError

from tests.conftest import ROOT, RunningServer, metric_sum, start_server, tolerance
from tests.support.batches import QUESTIONS, assert_close, client_for, jsonl, lines_of, score_line, submit, wait_for


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("jobs-data")
    # One pass may hold 48 MiB: the test questions fit; a 1,700-token prompt does not.
    running = start_server(
        engine="transformers", data_dir=Path(data), api_keys="key-a,key-b", jobs_chunk_items=2, max_batch_memory_mb=48
    )
    yield running
    running.stop()


def test_output_equals_the_synchronous_answers(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-a")
    lines = [score_line(f"q{k}", q, a) for k, (q, a) in enumerate(QUESTIONS)]
    lines.append(
        {
            "custom_id": "pair",
            "method": "POST",
            "url": "/v1/score",
            "body": {"items": [{"id": "p", "prompt": "Say yes."}], "labels": ["yes", "no"], "timeout_s": 1},
        }
    )
    batch = submit(client, jsonl(lines))
    assert batch.object == "batch" and batch.endpoint == "/v1/score"
    done = wait_for(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.total == len(lines)
    assert done.request_counts.completed == len(lines) and done.request_counts.failed == 0
    assert done.completed_at is not None and done.in_progress_at is not None
    assert done.error_file_id is None
    output = lines_of(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == [line["custom_id"] for line in lines]
    assert metric_sum(jobs_server.url, "judge_batch_items_total", outcome="completed") >= len(lines)
    assert metric_sum(jobs_server.url, "judge_batch_jobs", status="completed") >= 1
    # Every line is one prompt, scored by a lane pass at least once.
    assert metric_sum(jobs_server.url, "judge_batch_lane_prompts_total") >= len(lines)
    # Batch work never entered the online queue's gauges.
    assert metric_sum(jobs_server.url, "judge_num_requests_waiting") == 0
    with jobs_server.client(headers={"Authorization": "Bearer key-a"}) as http:
        for line, out in zip(lines, output, strict=True):
            assert out["error"] is None and out["id"].startswith("batch_req_")
            assert out["response"]["status_code"] == 200
            # The synchronous endpoint's answer: every field, floats within the engine's tolerance.
            assert_close(
                out["response"]["body"], http.post("/v1/score", json=line["body"]).json(), tolerance(jobs_server)
            )


def test_refused_bodies_go_to_the_error_file_as_the_endpoint_answers(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-a")
    bad_bodies = {
        "empty": {"items": []},
        "labels": {"items": [{"id": "x", "prompt": "hi"}], "labels": ["a", "a"]},
        "method": {"items": [{"id": "x", "prompt": "hi"}], "method": "nope"},
        # Over what one pass may hold: 422 before any work, as a batch line too.
        "memory": {"items": [{"id": "x", "instruction": "word " * 1700, "response": "Yes."}]},
    }
    lines = [score_line("good", *QUESTIONS[0])]
    lines += [{"custom_id": k, "method": "POST", "url": "/v1/score", "body": b} for k, b in bad_bodies.items()]
    done = wait_for(client, submit(client, jsonl(lines)).id)
    assert done.status == "completed"
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (1, 4)
    assert [o["custom_id"] for o in lines_of(client, done.output_file_id)] == ["good"]
    errors = {e["custom_id"]: e["response"] for e in lines_of(client, done.error_file_id)}
    assert set(errors) == set(bad_bodies)
    with jobs_server.client(headers={"Authorization": "Bearer key-a"}) as http:
        for custom_id, body in bad_bodies.items():
            sync = http.post("/v1/score", json=body)
            assert sync.status_code >= 400
            assert errors[custom_id] == {"status_code": sync.status_code, "body": sync.json()}
    assert "JUDGE_MAX_BATCH_MEMORY_MB" in errors["memory"]["body"]["error"]["message"]


def test_lines_that_are_not_requests_fail_the_batch_with_their_line_numbers(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-a")
    good = json.dumps(score_line("a", *QUESTIONS[0]))
    content = "\n".join(
        [
            good,
            "{not json",
            json.dumps({"method": "POST", "url": "/v1/score", "body": {}}),
            good,
            json.dumps({**score_line("b", "q", "r"), "url": "/v1/nothing"}),
            json.dumps({**score_line("c", "q", "r"), "url": "/v1/rank"}),
        ]
    ).encode()
    batch = submit(client, content)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "missing_custom_id"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
        (6, "mismatched_endpoint"),
    ]
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.output_file_id is None


def test_files_batches_and_keys(jobs_server: RunningServer) -> None:
    a, b = client_for(jobs_server.url, "key-a"), client_for(jobs_server.url, "key-b")
    content = jsonl([score_line("only", *QUESTIONS[1])])
    uploaded = a.files.create(file=("in.jsonl", content), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file",
        "batch",
        len(content),
        "in.jsonl",
    )
    assert a.files.retrieve(uploaded.id).id == uploaded.id
    assert a.files.content(uploaded.id).content == content
    # Another key sees nothing of it.
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        b.batches.create(input_file_id=uploaded.id, endpoint="/v1/score", completion_window="24h")  # type: ignore[arg-type]
    batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/score", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    assert batch.id not in [x.id for x in b.batches.list()]
    with pytest.raises(openai.AuthenticationError):
        client_for(jobs_server.url, "wrong").batches.list()
    # A deleted file: gone, and no batch can be made from it.
    assert a.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        a.batches.create(input_file_id=uploaded.id, endpoint="/v1/score", completion_window="24h")  # type: ignore[arg-type]
    # The batch made before the delete still completes: its lines were copied at creation.
    assert wait_for(a, batch.id).status == "completed"


def test_list_pages_with_limit_and_after(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-b")
    made = [submit(client, jsonl([score_line(f"l{k}", *QUESTIONS[k])])).id for k in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == made[:1]
    assert [b.id for b in client.batches.list(limit=1)][:3] == made[::-1]
    for batch_id in made:
        wait_for(client, batch_id)


def test_upload_limits(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-a")
    limit = jobs_server.app.state.settings.jobs_max_file_bytes
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", b"x" * (limit + 1)), purpose="batch")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError):
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
    response = httpx.post(
        f"{jobs_server.url}/v1/batches",
        json={"input_file_id": "file-none", "endpoint": "/v1/embeddings", "completion_window": "24h"},
        headers={"Authorization": "Bearer key-a"},
    )
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_request"


def _each_line_once(client: openai.OpenAI, done: openai.types.Batch, custom_ids: list[str]) -> list[dict]:
    """Output and error files together: every custom_id exactly once; returns the error lines."""
    out, err = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in out + err) == sorted(custom_ids)
    return err


def _many(count: int) -> tuple[bytes, list[str]]:
    lines = [score_line(f"m{k}", f"Question number {k}: what is {k}+{k}?", f"It is {2 * k}.") for k in range(count)]
    return jsonl(lines), [line["custom_id"] for line in lines]


def test_cancel_keeps_partial_output_and_names_the_rest(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-a")
    content, ids = _many(40)
    batch = submit(client, content)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    errors = _each_line_once(client, done, ids)
    assert done.request_counts is not None and done.request_counts.completed < 40
    unfinished = [e for e in errors if e["response"] is None]
    assert len(unfinished) == 40 - done.request_counts.completed - done.request_counts.failed
    assert all(e["error"]["code"] == "batch_cancelled" for e in unfinished)
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.cancel(wait_for(client, submit(client, jsonl([score_line("z", *QUESTIONS[0])])).id).id)


def test_expiry_ends_the_batch_at_its_window(jobs_server: RunningServer) -> None:
    client = client_for(jobs_server.url, "key-a")
    content, ids = _many(60)
    batch = submit(client, content, window="2s")
    assert batch.expires_at == batch.created_at + 2
    done = wait_for(client, batch.id)
    assert done.status == "expired" and done.expired_at is not None
    errors = _each_line_once(client, done, ids)
    assert done.request_counts is not None and done.request_counts.completed < 60
    assert {e["error"]["code"] for e in errors if e["response"] is None} == {"batch_expired"}


def batch_cli(url: str, *words: str, key: str = "key-a") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "batch", *words, "--url", url, "--api-key", key]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_the_command_line_and_the_typed_client_run_a_batch(jobs_server: RunningServer, tmp_path: Path) -> None:
    lines = [score_line(f"c{k}", q, a) for k, (q, a) in enumerate(QUESTIONS[:3])]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/score", "body": {"items": []}})
    source, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    source.write_bytes(jsonl(lines))
    done = batch_cli(jobs_server.url, "submit", str(source), "--wait", "-o", str(out), "--errors", str(errors))
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert f"{batch['id']} completed: 4/4 done, 1 failed" in done.stderr  # the progress line
    output = [json.loads(row) for row in out.read_text().splitlines()]
    (refused,) = [json.loads(row) for row in errors.read_text().splitlines()]
    assert refused["custom_id"] == "bad" and refused["response"]["status_code"] == 422
    with jobs_server.client(headers={"Authorization": "Bearer key-a"}) as http:
        for line, row in zip(lines, output, strict=False):
            assert row["custom_id"] == line["custom_id"]
            want = http.post("/v1/score", json=line["body"]).json()
            assert_close(row["response"]["body"], want, tolerance(jobs_server))
    # The typed client sees the same batch and files; status, list and download agree.
    with JudgeClient(jobs_server.url, api_key="key-a") as judge:
        typed = judge.batch(batch["id"])
        assert typed.done and typed.output_file_id == batch["output_file_id"]
        assert judge.file_content(typed.output_file_id) == out.read_bytes()
        assert batch["id"] in [entry.id for entry in judge.list_batches(100)]
    status = batch_cli(jobs_server.url, "status", batch["id"])
    assert json.loads(status.stdout)["output_file_id"] == batch["output_file_id"]
    again = tmp_path / "again.jsonl"
    assert batch_cli(jobs_server.url, "download", batch["id"], "-o", str(again)).returncode == 0
    assert again.read_bytes() == out.read_bytes()
    # Another key's batch is not found, said in one line, with no stack trace.
    other = batch_cli(jobs_server.url, "status", batch["id"], key="key-b")
    assert other.returncode != 0 and "404" in other.stderr and "Traceback" not in other.stderr


async def _async_batch_run(url: str, source: Path, polled: list[Batch]) -> tuple[FileObject, Batch, list[Batch], bytes]:
    """Every batch call of the async client: upload, create, wait (with progress), list, download,
    cancel (a running batch, then an ended one), and another key's 404."""
    async with AsyncJudgeClient(url, api_key="key-a") as judge:
        uploaded = await judge.upload_batch_file(source)
        created = await judge.create_batch(uploaded.id, metadata={"run": "async"})
        done = await judge.wait_batch(created.id, poll_s=0.1, progress=polled.append)
        listed = await judge.list_batches(100)
        output = await judge.file_content(done.output_file_id or "")
        again = await judge.create_batch(uploaded.id)
        assert (await judge.cancel_batch(again.id)).status in ("cancelling", "cancelled")
        assert (await judge.wait_batch(again.id, poll_s=0.1)).status == "cancelled"
        with pytest.raises(JudgeError) as ended:
            await judge.cancel_batch(done.id)
        assert ended.value.status == 422 and ended.value.type == "invalid_request"
    async with AsyncJudgeClient(url, api_key="key-b") as other:
        with pytest.raises(JudgeError) as hidden:
            await other.batch(done.id)
        assert hidden.value.status == 404
    return uploaded, done, listed, output


def test_the_async_client_runs_a_batch_as_the_sync_client_and_the_endpoint_answer(
    jobs_server: RunningServer, tmp_path: Path
) -> None:
    lines = [score_line(f"a{k}", q, a) for k, (q, a) in enumerate(QUESTIONS[3:])]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/score", "body": {"items": []}})
    source = tmp_path / "async.jsonl"
    source.write_bytes(jsonl(lines))
    polled: list[Batch] = []
    uploaded, done, listed, output = asyncio.run(_async_batch_run(jobs_server.url, source, polled))
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("async.jsonl", len(source.read_bytes()), "batch")
    assert done.status == "completed" and done.metadata == {"run": "async"}
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)
    # The progress callback saw every poll, the last one being the answer.
    assert polled[-1] == done and not any(batch.done for batch in polled[:-1])
    # The blocking client and the async one see the same batch, list and bytes.
    with JudgeClient(jobs_server.url, api_key="key-a") as judge:
        assert judge.batch(done.id) == done
        assert [b.id for b in judge.list_batches(100)][1:] == [b.id for b in listed]
        assert judge.file_content(done.output_file_id or "") == output
        (refused,) = [json.loads(row) for row in judge.file_content(done.error_file_id or "").splitlines()]
    assert refused["custom_id"] == "bad" and refused["response"]["status_code"] == 422
    rows = [json.loads(row) for row in output.splitlines()]
    with jobs_server.client(headers={"Authorization": "Bearer key-a"}) as http:
        for line, row in zip(lines[:2], rows, strict=True):
            assert row["custom_id"] == line["custom_id"]
            want = http.post("/v1/score", json=line["body"]).json()
            assert_close(row["response"]["body"], want, tolerance(jobs_server))
