"""Schemathesis against the OpenAPI document of a running server: no 5xx, and every
response as the document says (status, content type, body schema)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.process import TOKENWIRE, serving_url

REAL_TURNS = {"messages": [{"role": "user", "content": "hi"}], "input": "hi"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server whose simulated provider answers at once, in five tokens."""
    providers = [
        {"name": "simulated", "kind": "simulated", "options": {"tokens": 5, "delay_ms": 0}}
    ]
    env = {
        **os.environ,
        "TOKENWIRE_PROVIDERS": json.dumps(providers),
        "TOKENWIRE_LOGGING__FORMAT": "json",
    }
    log = tmp_path_factory.mktemp("openapi-fuzz") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TOKENWIRE), "serve", "--port", "0"], env=env, stdout=out, stderr=out
        )
    yield serving_url(proc, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# About 700 calls and the cases' generation: over three minutes on a loaded 2-core machine.
@pytest.mark.timeout(600)
def test_the_http_apis_keep_to_their_openapi_document(served: str) -> None:
    # Driven by hand: schemathesis's own pytest plugin does not run on pytest 9.
    api = schemathesis.openapi.from_url(served + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/responses",
        "POST /v1/messages",
    }
    # Random strings name no model and no response: half the cases get real ones, so
    # that the answering paths are fuzzed too, not only the refusals.
    stored = httpx.post(served + "/v1/responses", json={"model": "auto", "input": "hi"}).json()
    statuses: Counter[tuple[str, int]] = Counter()
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(mode), real=st.booleans())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def keeps_to_the_document(case: schemathesis.Case, real: bool) -> None:
            if real and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "auto"
                # Random images are almost never real ones (bytes of the type they
                # declare): a real case asks in words, and its other fields stay fuzzed.
                for key, turns in REAL_TURNS.items():
                    if key in case.body:
                        case.body[key] = turns
            if real and case.path_parameters and "response_id" in case.path_parameters:
                case.path_parameters["response_id"] = stored["id"]
            response = case.call_and_validate(checks=CHECKS, timeout=10)
            statuses[case.operation.label, response.status_code] += 1

        try:
            keeps_to_the_document()
        except Unsatisfiable:
            # Nothing to make invalid (GET /v1/models takes no input).
            assert mode is schemathesis.GenerationMode.NEGATIVE
    print(sorted(statuses.items()))
    posts = {"POST /v1/chat/completions", "POST /v1/responses", "POST /v1/messages"}
    assert {label for (label, status) in statuses if status == 200} >= posts
    assert {label for (label, status) in statuses if status == 400} >= posts
