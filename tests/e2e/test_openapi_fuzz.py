"""The running services against their own OpenAPI documents: schemathesis, bounded.

Each service serves its document at ``GET /openapi.json``; the fuzzer draws at most
``EXAMPLES`` cases per operation and fails on any 5xx, an undocumented status or content
type, or a body that breaks the documented schema. Bad input must get a 4xx
``{"error", "reason"}``. Operations that change state get invalid data only (/trade,
/check, /alert, /alertmanager) or are left out (/close, /update; /webhook is the intake
tests' and its per-client rate limit would spill into them).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from shared import names
from shared.openapi import document
from shared.settings import Settings
from tests.support.fuzz import fuzz

pytestmark = pytest.mark.e2e
EXAMPLES = 30
BUDGET_S = 12.0  # per service: the five together stay under a minute
NEGATIVE_ONLY = {("POST", "/trade"), ("POST", "/check"), ("POST", "/alert"),
                 ("POST", "/alertmanager")}
SKIP = {("POST", "/close"), ("POST", "/update"), ("POST", "/webhook")}


@pytest.mark.parametrize("service", [*names.SERVICES, names.FEED])
def test_service_serves_its_document_and_keeps_it(settings: Settings, api_key: str,
                                                  service: str) -> None:
    pytest.importorskip("schemathesis")
    base = settings.services.url_of(service)
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=5) as resp:
        served = json.loads(resp.read())
    assert served == document(service)

    skip = set(SKIP)
    if not _serves(f"{base}/ready"):  # documented ahead of the services that lack it yet
        skip.add(("GET", "/ready"))

    failures = fuzz(base, served, api_key, examples=EXAMPLES, negative_only=NEGATIVE_ONLY,
                    skip=skip, budget_s=BUDGET_S)

    assert failures == [], "\n\n".join(failures)


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code != 404
    except OSError:
        return False
