"""Schemathesis against the real service: every operation of its OpenAPI schema (BentoML's
/docs.json, plus the OpenAI-compatible routes it mounts) with schema-valid and
schema-violating inputs; no input may produce a 5xx. The example count is bounded here
(DRIFTLOOP_FUZZ_EXAMPLES, default 15 per operation and mode); `make reliability` runs
the long version."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from serving_helpers import call, record_figures

EXAMPLES = int(os.environ.get("DRIFTLOOP_FUZZ_EXAMPLES", "15"))
# 503 and 429 are the designed answers to overload, not failures; nothing else of 5xx is.
SHED = {429, 503}


def fuzz_schema(port: int, key: str) -> dict:
    status, body = call(port, "/docs.json", key=key)
    assert status == 200, body[:300]
    schema = json.loads(body)
    extra = json.loads((Path(__file__).parent / "data" / "openai_paths.json").read_text(encoding="utf-8"))
    schema["paths"].update(extra["paths"])
    return schema


@pytest.mark.slow
def test_no_input_produces_a_server_error(secured_service):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    port, key = secured_service["port"], secured_service["api_key"]
    schema = schemathesis.openapi.from_dict(fuzz_schema(port, key))
    base_url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    seen, failures, unsatisfiable = Counter(), [], []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=base_url, headers=headers, timeout=120)
                seen[(operation.label, mode.value, response.status_code)] += 1
                if response.status_code >= 500 and response.status_code not in SHED:
                    failures.append((operation.label, mode.value, response.status_code, case.as_curl_command(headers), response.text[:300]))

            try:
                run()
            except Unsatisfiable:
                unsatisfiable.append(f"{operation.label} {mode.value}")  # no input at all violates a parameterless GET
    statuses = Counter(status for (_, _, status) in seen.elements())
    record_figures("fuzz", {"operations": len(operations), "examples_per_operation_and_mode": EXAMPLES, "requests": sum(seen.values()),
                            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "server_errors": len(failures), "no_negative_inputs": unsatisfiable,
                            "by_operation": {f"{label} {mode}": sorted({s for (l, m, s) in seen if (l, m) == (label, mode)})
                                             for (label, mode, _) in seen}})
    assert not failures, failures[:5]
    assert sum(seen.values()) >= len(operations) * 2
    assert call(port, "/readyz", key=None)[0] == 200
