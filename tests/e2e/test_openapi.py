"""Schemathesis against the service's own OpenAPI schema, on a live server, with every
built-in check, positive-data acceptance included: a request the schema allows is
answered 200, unless it meets one of the documented exceptions below."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, negative_data_rejection, not_a_server_error, positive_data_acceptance

from service.app import create_app
from service.config import Settings
from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.slow

API_KEY = "fuzz-key"
# Small limits keep generated prompts cheap to score on CPU; an API key lets the
# ignored-auth check see that requests without one are refused.
FUZZ_SETTINGS = {
    "max_items": 4,
    "max_criteria": 2,
    "max_rank_candidates": 4,
    "max_model_len": 256,
    "max_critique_tokens": 8,
    "max_body_bytes": 256 * 1024,
    "api_keys": API_KEY,
}
schema = schemathesis.openapi.from_dict(create_app(Settings(**FUZZ_SETTINGS)).openapi())
ALL_CHECKS = CHECKS.get_all()

# The documented exceptions: answers to schema-valid requests that are not 200, each for a
# rule JSON Schema cannot state. Keyed by the error's details or message.
DEPLOYMENT_LIMITS = {
    # What the loaded tokenizer makes of labels: no two may be the same tokens, and the
    # per-layer methods need single-token labels.
    "label_tokens": lambda e: (
        isinstance(e["details"], dict) and ("token_ids" in e["details"] or "label" in e["details"])
    ),
    # A prompt's length in tokens against the model's (characters do not tell).
    "prompt_length": lambda e: isinstance(e["details"], dict) and "max_model_len" in e["details"],
    # lager_weighted needs a layer-weights file, and probe a probe file: deployment settings.
    "layer_weights": lambda e: "JUDGE_LAYER_WEIGHTS_FILE" in e["message"],
    "probe": lambda e: "JUDGE_PROBE_FILE" in e["message"],
    # A hidden-state entry past the loaded model's layers.
    "hidden_layer": lambda e: isinstance(e["details"], dict) and "hidden_layer" in e["details"],
    # The criteria of one request must share one label set (keys of different objects).
    "rubric_labels": lambda e: "must have the same labels" in e["message"],
    # Candidate ids must be unique (a property of the items of an array, not their whole).
    "candidate_ids": lambda e: "candidate ids must be unique" in e["message"],
    # label_values may name only labels the request reads: JSON Schema cannot relate an
    # object's keys to another field's values.
    "label_values": lambda e: "label_values names labels" in e["message"],
    # Critique mode reads the final distribution only: the schema cannot tie one field to
    # another's value (a per-layer method, return_layers).
    "critique_layers": lambda e: isinstance(e["details"], dict) and e["details"].get("field") == "critique",
}


def documented_exception(case, response: httpx.Response) -> str | None:
    """Why a request may get an answer the schema alone does not predict, or None."""
    if response.status_code == 413:
        # A body over JUDGE_MAX_BODY_BYTES, refused before parsing (a valid one too).
        return "body_size"
    if response.status_code == 422:
        error = response.json()["error"]
        return next((name for name, matches in DEPLOYMENT_LIMITS.items() if matches(error)), None)
    asked_deadline = isinstance(case.body, dict) and case.body.get("timeout_s") is not None
    asked_deadline |= any(name.lower() == "x-request-timeout" for name in case.headers or {})
    if response.status_code == 504 and asked_deadline:
        # The request set itself a deadline shorter than its own work (down to 10 ms).
        return "own_deadline"
    if response.status_code == 429 and asked_deadline and response.json()["error"]["type"] == "overloaded":
        # Its deadline cannot be met behind the work already admitted.
        return "own_deadline"
    return None


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RunningServer]:
    running = start_server(**FUZZ_SETTINGS)
    yield running
    running.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schema_fuzz(case, fuzz_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = case.call(base_url=fuzz_server.url, headers=headers, timeout=600)
    excluded = []
    if documented_exception(case, response) is not None:
        excluded = [positive_data_acceptance, negative_data_rejection, not_a_server_error]
    case.validate_response(response, checks=ALL_CHECKS, excluded_checks=excluded, headers=headers)
    assert response.status_code < 500 or excluded, response.text[:500]
