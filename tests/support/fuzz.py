"""Schemathesis against one running service: bounded examples, no 5xx, no schema violation.

``fuzz`` draws ``examples`` cases per operation (positive: valid by the document;
negative: invalid by it) and checks each answer: not a server error, a documented status,
a documented content type, a body matching the documented schema. Operations in
``negative_only`` get invalid data only (they would change state with valid data); those
in ``skip`` are not called at all.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from hypothesis import HealthCheck, given, settings

READINESS = "/ready"  # its 503 is the documented "not ready yet", not a server fault


def no_server_error(ctx: Any, response: Any, case: Any) -> bool:
    """Any 5xx fails, except a readiness probe's documented 503."""
    if response.status_code >= 500 and not (case.operation.path == READINESS
                                            and response.status_code == 503):
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")
    return True


def fuzz(base_url: str, document: dict[str, Any], api_key: str, *, examples: int = 30,
         negative_only: Collection[tuple[str, str]] = (),
         skip: Collection[tuple[str, str]] = (), budget_s: float = 60.0) -> list[str]:
    """The failures found (empty = none); stops drawing once ``budget_s`` is spent."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [no_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    deadline = time.monotonic() + budget_s
    headers = {"X-API-Key": api_key}
    for result in schema.get_all_operations():
        op = result.ok()
        key = (op.method.upper(), op.path)
        if key in skip:
            continue
        raw = op.definition.raw
        has_input = bool(raw.get("requestBody") or raw.get("parameters"))
        modes = [GenerationMode.NEGATIVE] if key in negative_only else [GenerationMode.POSITIVE]
        if has_input and key not in negative_only:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                if time.monotonic() > deadline:
                    return
                response = case.call(base_url=base_url, headers=headers, timeout=10,
                                     allow_redirects=False)
                case.validate_response(response, checks=checks)

            try:
                run()
            except BaseException as exc:  # schemathesis raises a BaseExceptionGroup
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{key[0]} {key[1]} ({mode.value}): {str(exc)[:800]}")
    return failures
