"""werkzeug 2.3.8 (held by nameko 2.14) is in the range of two CVEs; neither is reachable.

* CVE-2024-34069: the interactive debugger (``werkzeug.debug``) can be driven to run code.
  Nothing here serves it: no project code imports it and nameko's web server does not
  wrap its WSGI app in ``DebuggedApplication``.
* CVE-2024-49767: parsing a hostile ``multipart/form-data`` body exhausts resources. Our
  handlers never parse forms: ``shared.web.read_json_object`` reads at most 8 KB of raw
  bytes and decodes JSON; no code touches ``request.form``/``files``/``values``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared.web import MAX_BODY_BYTES, HttpError, read_json_object

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [p for d in ("nameko_services", "shared", "dashboard", "scripts")
           for p in (ROOT / d).rglob("*.py")]
FORBIDDEN = re.compile(
    r"werkzeug\.debug|DebuggedApplication|use_debugger|parse_form_data|MultiPartParser|"
    r"FormDataParser|\brequest\.(form|files|values)\b")


def test_no_project_code_reaches_the_debugger_or_the_form_parser() -> None:
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert SOURCES and hits == []


def test_nameko_serves_its_wsgi_app_without_the_werkzeug_debugger() -> None:
    from nameko.web import handlers, server

    for module in (server, handlers):
        source = inspect.getsource(module)
        assert "werkzeug.debug" not in source and "DebuggedApplication" not in source


def _multipart(parts: int) -> Request:
    body = "".join(f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'
                   for i in range(parts)) + "--b--\r\n"
    env = EnvironBuilder(method="POST", path="/webhook", data=body.encode(),
                         content_type="multipart/form-data; boundary=b").get_environ()
    return Request(env)


def test_a_multipart_body_is_read_as_bytes_and_refused_without_form_parsing() -> None:
    request = _multipart(parts=60)  # < 8 KB: reaches the JSON decoder
    with pytest.raises(HttpError) as err:
        read_json_object(request)
    assert err.value.status == 400
    assert "form" not in request.__dict__ and "files" not in request.__dict__


def test_a_large_multipart_body_is_refused_by_size_before_any_parsing() -> None:
    request = _multipart(parts=2000)
    assert (request.content_length or 0) > MAX_BODY_BYTES
    with pytest.raises(HttpError) as err:
        read_json_object(request)
    assert err.value.status == 413
    assert "form" not in request.__dict__
