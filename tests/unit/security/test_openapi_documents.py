"""Each service's OpenAPI document is valid and lists exactly the routes the service serves."""

from __future__ import annotations

import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared import names
from shared.openapi import document, openapi_response

SERVICE_CLASSES = {
    names.BRAIN: "nameko_services.brain.service:BrainService",
    names.RISK: "nameko_services.risk.service:RiskService",
    names.EXECUTE: "nameko_services.execute.service:ExecuteService",
    names.NOTIFY: "nameko_services.notify.service:NotifyService",
}
OPTIONAL = {("GET", "/ready")}  # documented ahead of the services that do not have it yet


def _routes(path: str) -> set[tuple[str, str]]:
    import importlib

    from nameko.web.handlers import HttpRequestHandler

    module, cls_name = path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    routes = set()
    for attr in vars(cls).values():
        for entry in getattr(attr, "nameko_entrypoints", ()):
            if isinstance(entry, HttpRequestHandler):
                routes.add((entry.method.upper(), entry.url))
    return routes


def _documented(service: str) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in document(service)["paths"].items() for m in ops}


@pytest.mark.parametrize("service", sorted(SERVICE_CLASSES))
def test_document_lists_exactly_the_service_routes(secrets_env, service: str) -> None:
    real = _routes(SERVICE_CLASSES[service])
    documented = _documented(service)
    assert real - documented == set()
    assert documented - real <= OPTIONAL
    assert ("GET", "/openapi.json") in real


def test_feed_document_lists_exactly_its_routes() -> None:
    from nameko_services.feed.http import HealthServer

    app = HealthServer(feed=None, host="127.0.0.1", port=0).app()  # type: ignore[arg-type]
    real = {(r.method, r.resource.canonical) for r in app.router.routes()  # type: ignore[union-attr]
            if r.method != "HEAD"}
    assert real == _documented(names.FEED)


@pytest.mark.parametrize("service", [*names.SERVICES, names.FEED])
def test_documents_load_as_openapi_3(service: str) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document(service))
    operations = list(schema.get_all_operations())
    assert operations and all(op.ok() for op in operations)


@pytest.mark.parametrize("service", names.SERVICES)
def test_every_secured_operation_documents_401_and_429(service: str) -> None:
    for ops in document(service)["paths"].values():
        for op in ops.values():
            if op.get("security"):
                assert {"401", "429"} <= set(op["responses"])
                assert op["responses"]["401"]["content"]["application/json"]["schema"][
                    "required"] == ["error", "reason"]


def test_openapi_json_is_served_as_json() -> None:
    resp = openapi_response(names.RISK)
    assert resp.mimetype == "application/json"
    assert json.loads(resp.get_data())["info"]["title"] == "Phoenix 95 risk"


def test_nameko_entrypoint_answers_the_document(secrets_env) -> None:
    from nameko.testing.services import worker_factory

    from nameko_services.execute.service import ExecuteService

    service = worker_factory(ExecuteService)
    resp = service.openapi(Request(EnvironBuilder(path="/openapi.json").get_environ()))
    assert json.loads(resp.get_data()) == document(names.EXECUTE)
