"""Alertmanager's webhook (payload version 4) as notify alerts.

Alertmanager POSTs ``{"version": "4", "status", "receiver", "groupLabels", "commonLabels",
"commonAnnotations", "externalURL", "alerts": [{"status", "labels", "annotations",
"startsAt", "endsAt", "generatorURL", "fingerprint"}]}`` and authenticates with the
``http_config.authorization`` of its receiver: ``Authorization: Bearer <key>``.
Every alert of the group becomes one outbox alert; a resolved one is sent as ``info``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.wrappers import Request

from shared.web import HttpError

MAX_WEBHOOK_BYTES = 256 * 1024  # max_alerts 20 with long annotations fits many times over
SEVERITY_LEVEL = {"critical": "critical", "page": "critical", "error": "critical",
                  "warning": "warning"}


class AmAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "alert")

    @property
    def level(self) -> str:
        if self.status == "resolved":
            return "info"
        return SEVERITY_LEVEL.get(self.labels.get("severity", "").lower(), "warning")

    @property
    def dedupe_key(self) -> str:
        """Alertmanager retries a webhook that failed; the same alert within notify's
        dedupe window is sent once."""
        ident = self.fingerprint or ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"alertmanager:{ident}:{self.status}:{self.startsAt}"

    def text(self) -> str:
        head = f"[{self.status.upper()}] {self.name}"
        where = ", ".join(f"{k}={self.labels[k]}" for k in ("job", "instance", "symbol", "group")
                          if k in self.labels)
        summary = self.annotations.get("summary", "")
        description = self.annotations.get("description", "")
        parts = [head + (f" ({where})" if where else ""), summary, description]
        return "\n".join(p for p in parts if p)


class AmWebhook(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    alerts: list[AmAlert]
    truncatedAlerts: int = 0


def parse_webhook(body: dict[str, object]) -> AmWebhook:
    try:
        return AmWebhook.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise HttpError(422, f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def require_bearer(request: Request, keys: Iterable[str]) -> None:
    """``Authorization: Bearer <key>`` (what Alertmanager sends) or ``X-API-Key``."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else request.headers.get("X-API-Key", "")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not given or not ok:
        raise HttpError(401, "missing or invalid bearer token")
