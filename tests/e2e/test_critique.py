"""Critique mode on the real default model and both engines: the critique against greedy
generation computed here, the distribution against direct forward passes over the prompt
plus the generated tokens (plus the marker's when it never came); a request past its
deadline leaves the generation it shares."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.observability.metrics import CRITIQUE_BUCKETS
from tests.conftest import Reference, RunningServer, greedy, metric_sum, read_after, start_server, tolerance

pytestmark = pytest.mark.slow

FEEDBACK = "Rate the answer from 1 to 10.\nQ: What is the capital of France?\nA: Paris, on the Seine.\nFeedback:"
CHAT = "<|im_start|>user\nWhat is 2+2? Explain briefly, then give a score.<|im_end|>\n<|im_start|>assistant\n"
SCALE = [str(n) for n in range(1, 11)]  # "10" is "1", "0" for this tokenizer
FIVE = ["1", "2", "3", "4", "5"]
# (prompt, marker, max_tokens, marker found): the default model writes " The answer is not
# provided." after FEEDBACK, and "The answer is 4." then ends its turn after CHAT.
CASES = {
    "marker found": (FEEDBACK, ".", 12, True),
    "marker never written": (FEEDBACK, "[RESULT]", 6, False),
    "end of sequence": (CHAT, "[RESULT]", 24, False),
}


def critique_score(client: httpx.Client, prompts: list[str], labels: list[str], marker: str, max_tokens: int) -> list:
    response = client.post(
        "/v1/score",
        json={
            "items": [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)],
            "labels": labels,
            "return_logprobs": True,
            "critique": {"max_tokens": max_tokens, "marker": marker},
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.mark.parametrize("labels", [FIVE, SCALE], ids=["single-token", "multi-token"])
@pytest.mark.parametrize("case", list(CASES))
def test_critique_is_greedy_and_the_read_follows_it(
    server: RunningServer, client: httpx.Client, reference: Reference, case: str, labels: list[str]
) -> None:
    prompt, marker, max_tokens, found = CASES[case]
    generated, marker_found = greedy(reference, prompt, marker, max_tokens)
    assert marker_found is found  # the case is what its name says
    before = metric_sum(server.url, "judge_generated_tokens_total")
    (result,) = critique_score(client, [prompt], labels, marker, max_tokens)
    assert result["critique"] == reference.tokenizer.decode(generated, skip_special_tokens=False)
    assert result["marker_found"] is found
    assert result["critique_tokens"] == len(generated)
    tok = reference.tokenizer
    marker_ids = [] if found else tok.encode(marker, add_special_tokens=False)
    want = read_after(reference, tok.encode(prompt, add_special_tokens=False) + generated + marker_ids, labels)
    assert [result["logprobs"][label] for label in labels] == pytest.approx(want, abs=tolerance(server))
    assert metric_sum(server.url, "judge_generated_tokens_total") - before == len(generated)


def test_batched_critiques_equal_one_by_one(client: httpx.Client) -> None:
    prompts = [FEEDBACK, CHAT, "Score the haiku 'Old pond, frog jumps in.' Reason first."]
    together = critique_score(client, prompts, SCALE, ".", 10)
    for prompt, batched in zip(prompts, together, strict=True):
        (alone,) = critique_score(client, [prompt], SCALE, ".", 10)
        assert batched["critique"] == alone["critique"]
        assert list(batched["logprobs"].values()) == pytest.approx(list(alone["logprobs"].values()), abs=1e-4)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"critique": {"max_tokens": 513, "marker": "."}}, "max_critique_tokens"),
        ({"critique": {"max_tokens": 0, "marker": "."}}, "critique.max_tokens"),
        ({"critique": {"max_tokens": 4, "marker": ""}}, "critique.marker"),
        ({"critique": {"max_tokens": 4, "marker": "x" * 65}}, "critique.marker"),
    ],
)
def test_critique_errors(client: httpx.Client, options: dict, field: str) -> None:
    response = client.post("/v1/score", json={"items": [{"id": "a", "prompt": FEEDBACK}], **options})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["message"] + str(error["details"])
    if field == "max_critique_tokens":
        assert error["details"] == {"max_tokens": 513, "max_critique_tokens": 512}


@pytest.mark.parametrize(
    "options",
    [
        {"method": "lager"},
        {"method": "lager_weighted"},
        {"method": "probe"},
        {"return_layers": True},
        {"hidden_layers": [1, 30]},
        {"method": "lager", "template": "prometheus"},  # a preset's own critique too
    ],
    ids=["lager", "lager_weighted", "probe", "return_layers", "hidden_layers", "preset-lager"],
)
def test_critique_refuses_every_per_layer_readout(client: httpx.Client, options: dict) -> None:
    """Refused as such, though this server has neither layer weights nor a probe: the
    critique moves the position the per-layer rows are read at."""
    if "template" in options:
        body = {"items": [{"id": "a", "instruction": "What is 2+2?", "response": "4"}], **options}
    else:
        body = {"items": [{"id": "a", "prompt": FEEDBACK}], "critique": {"max_tokens": 4, "marker": "."}, **options}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["details"] == {"field": "critique"}
    assert error["message"] == (
        "critique mode reads the final distribution only; the per-layer methods (lager, lager_weighted, "
        "return_layers), the probe and hidden_layers cannot be combined with it"
    )
    # Without the critique each is a request of its own kind (answered, or refused for another reason).
    plain = client.post("/v1/score", json=body | {"critique": None})
    assert plain.status_code == 200 or "critique" not in plain.json()["error"]["message"]


def test_critique_counts_its_tokens_in_the_metrics(
    server: RunningServer, client: httpx.Client, reference: Reference
) -> None:
    """judge_generated_tokens_total and the judge_critique_tokens histogram grow by each
    critique's length, the tokens greedy generation writes here."""
    lengths = [len(greedy(reference, prompt, ".", 12)[0]) for prompt in (FEEDBACK, CHAT)]

    def read() -> tuple[float, float, float, dict[float, float]]:
        return (
            metric_sum(server.url, "judge_generated_tokens_total"),
            metric_sum(server.url, "judge_critique_tokens_count"),
            metric_sum(server.url, "judge_critique_tokens_sum"),
            {le: metric_sum(server.url, "judge_critique_tokens_bucket", le=str(float(le))) for le in CRITIQUE_BUCKETS},
        )

    generated, count, total, buckets = read()
    results = critique_score(client, [FEEDBACK, CHAT], FIVE, ".", 12)
    assert [r["critique_tokens"] for r in results] == lengths
    generated_after, count_after, total_after, buckets_after = read()
    assert generated_after - generated == sum(lengths)
    assert (count_after - count, total_after - total) == (2, sum(lengths))
    for le, value in buckets_after.items():
        assert value - buckets[le] == sum(n <= le for n in lengths), le


def test_a_prompt_must_leave_room_for_its_critique(server: RunningServer, client: httpx.Client) -> None:
    limit = server.runtime.limits.tokens.max_model_len
    prompt = "x " * (limit - 300)
    items = [{"id": "a", "prompt": prompt}]
    n = len(server.runtime.limits.tokens.tokenizer.encode(prompt, add_special_tokens=False))
    assert n + 500 > limit
    response = client.post("/v1/score", json={"items": items, "critique": {"max_tokens": 500, "marker": "."}})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["max_model_len"] == limit


@pytest.mark.usefixtures("transformers_only")
def test_a_plain_score_does_not_wait_for_a_running_critique(server: RunningServer, client: httpx.Client) -> None:
    finished: list[str] = []

    def long_critique() -> None:
        critique_score(client, [FEEDBACK], FIVE, "[RESULT]", 120)
        finished.append("critique")

    before = metric_sum(server.url, "judge_generated_tokens_total")
    thread = threading.Thread(target=long_critique)
    thread.start()
    try:
        # Wait until the critique's generation is under way.
        deadline = time.monotonic() + 600  # bounds a hang only
        while metric_sum(server.url, "judge_num_requests_running") < 1:
            assert time.monotonic() < deadline, "the critique never started"
            time.sleep(0.05)
        response = client.post("/v1/score", json={"items": [{"id": "a", "prompt": FEEDBACK}]})
        assert response.status_code == 200
        finished.append("plain")
    finally:
        thread.join(timeout=300)
    assert finished == ["plain", "critique"]
    assert metric_sum(server.url, "judge_generated_tokens_total") - before == 120


@pytest.mark.parametrize("template", ["prometheus", "mt-bench"])
def test_a_preset_writes_first_and_reads_its_labels_after_the_marker(
    server: RunningServer, client: httpx.Client, reference: Reference, template: str
) -> None:
    """A preset renders its format, generates (its marker, a shorter critique here) and
    reads its labels, with the preset's prefix, after the critique: as computed here from
    the rendered prompt, greedy generation and direct forward passes."""
    from service.requests.presets import PRESETS
    from service.requests.prompts import Prompts

    preset = PRESETS[template]
    item = {"id": "a", "instruction": "Name a prime number.", "response": "Nine.", "reference_answer": "Seven."}
    body = {"items": [item], "template": template, "critique": {"max_tokens": 8, "marker": preset.marker}}
    response = client.post("/v1/score", json=body | {"return_logprobs": True})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    prompt = Prompts(reference.tokenizer).score(
        item["instruction"], item["response"], item["reference_answer"], preset.rubric, template, writes_first=True
    )
    generated, found = greedy(reference, prompt, preset.marker, 8)
    assert result["critique"] == reference.tokenizer.decode(generated, skip_special_tokens=False)
    assert result["marker_found"] is found and result["critique_tokens"] == len(generated)
    ids = reference.tokenizer.encode(prompt, add_special_tokens=False) + generated
    if not found:
        ids += reference.tokenizer.encode(preset.marker, add_special_tokens=False)
    labels = list(preset.rubric.labels)
    want = read_after(reference, ids, [preset.label_prefix + label for label in labels])
    assert [result["logprobs"][label] for label in labels] == pytest.approx(want, abs=tolerance(server))
    # Without a critique field the preset writes its default critique; null turns it off.
    plain = client.post("/v1/score", json={"items": [item], "template": template, "critique": None}).json()
    assert plain["results"][0]["critique"] is None
    # The same prompt text, but a read after a critique is not comparable with one right
    # after the prompt: their versions differ (and so a calibration of one is not applied
    # to the other).
    versions = Prompts(reference.tokenizer)
    assert plain["prompt_version"] == versions.score_version(preset.rubric, template)
    assert response.json()["prompt_version"] == versions.score_version(preset.rubric, template, marker=preset.marker)
    assert plain["prompt_version"] != response.json()["prompt_version"]


@pytest.fixture(scope="module")
def waiting_server() -> Iterator[RunningServer]:
    """A transformers server whose batches wait two seconds for more items, so two requests
    sent together share one generation."""
    running = start_server(engine="transformers", max_wait_ms=2000)
    yield running
    running.stop()


def test_a_request_past_its_deadline_leaves_the_generation_it_shares(
    waiting_server: RunningServer, reference: Reference
) -> None:
    url = waiting_server.url
    names = ["judge_generated_tokens_total", "judge_batch_size_count", "judge_batch_size_sum"]
    before = {name: metric_sum(url, name) for name in names}
    skipped = metric_sum(url, "judge_items_skipped_total", reason="deadline")
    bodies = {
        # Counting goes on far past its deadline: 512 tokens would take many seconds.
        "left": {
            "items": [{"id": "left", "prompt": "Count from 1 to 1000: 1, 2, 3, 4,"}],
            "labels": FIVE,
            "critique": {"max_tokens": 512, "marker": "[RESULT]"},
            "timeout_s": 5,
        },
        "kept": {
            "items": [{"id": "kept", "prompt": FEEDBACK}],
            "labels": SCALE,
            "return_logprobs": True,
            "critique": {"max_tokens": 12, "marker": "."},
        },
    }
    responses: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        with waiting_server.client() as client:
            responses[name] = client.post("/v1/score", json=bodies[name])

    threads = [threading.Thread(target=send, args=(name,)) for name in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    after = {name: metric_sum(url, name) - before[name] for name in names}
    assert after["judge_batch_size_count"] == 1 and after["judge_batch_size_sum"] == 2  # one batch of both
    assert responses["left"].status_code == 504, responses["left"].text
    assert responses["left"].json()["error"]["type"] == "deadline_exceeded"
    assert metric_sum(url, "judge_items_skipped_total", reason="deadline") - skipped == 1
    assert responses["kept"].status_code == 200, responses["kept"].text
    (result,) = responses["kept"].json()["results"]
    generated, found = greedy(reference, FEEDBACK, ".", 12)
    assert result["critique"] == reference.tokenizer.decode(generated, skip_special_tokens=False)
    assert result["marker_found"] is found and result["critique_tokens"] == len(generated)
    tok = reference.tokenizer
    marker_ids = [] if found else tok.encode(".", add_special_tokens=False)
    want = read_after(reference, tok.encode(FEEDBACK, add_special_tokens=False) + generated + marker_ids, SCALE)
    assert [result["logprobs"][label] for label in SCALE] == pytest.approx(want, abs=tolerance(waiting_server))
    # The given-up request generated until its deadline, then stopped far short of its 512.
    left_tokens = after["judge_generated_tokens_total"] - len(generated)
    assert 0 < left_tokens < 512
