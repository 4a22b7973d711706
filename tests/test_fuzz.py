"""Schemathesis against the service's own OpenAPI schema, on a real server: no 5xx, and
every response matches the documented status codes, content types and schemas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from service.app import create_app
from service.config import Settings
from tests.conftest import RunningServer, start_server

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RunningServer]:
    # Small limits keep generated prompts cheap to score on CPU.
    running = start_server(max_items=4, max_model_len=256, max_body_bytes=256 * 1024)
    yield running
    running.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schema_fuzz(case, fuzz_server: RunningServer) -> None:
    response = case.call(base_url=fuzz_server.url, timeout=60)
    case.validate_response(response, checks=CHECKS)
    # No server error, except the 504 of a deadline the request itself set (timeout_s or
    # X-Request-Timeout may be generated as tiny as 5e-324 seconds).
    asked_deadline = isinstance(case.body, dict) and case.body.get("timeout_s") is not None
    asked_deadline |= any(name.lower() == "x-request-timeout" for name in case.headers or {})
    assert response.status_code < 500 or (response.status_code == 504 and asked_deadline), response.text
