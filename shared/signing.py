"""Signed caller identity: who asked for a state-changing call, proven with an HMAC.

A broker credential alone must not be enough to close every position or to trade: the
caller of a state-changing RPC (``names.SIGNED_RPCS``) signs it, and execute trades an
intent only with risk's signed approval.

Keys are pairwise. Each signer (``names.SIGNERS``) holds one secret of its own; for a
receiver it signs with ``pair_key(own, receiver)``. A receiver holds only the pair keys
of the callers it accepts (``security.verify_keys``), so it can check them but cannot
pose as that caller to any other service. ``scripts/up`` (``scripts/provision.py``)
derives and hands them out per process; ``python scripts/signing_keys.py`` prints them
for compose/k8s.

What is signed (HMAC-SHA256, hex): version, caller, receiver, method, time (ms), a random
nonce and the SHA-256 of the arguments exactly as they travel (JSON). The receiver
refuses a call that is unsigned, from a caller the method does not accept, older than
``security.signature_max_age_s``, replayed (nonce seen by this process) or badly signed:
:class:`CallerRefused`, logged, counted in ``phoenix95_caller_refused_total``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads
from prometheus_client import Counter

log = logging.getLogger(__name__)

VERSION = "v1"
APPROVAL_VERSION = "approval-v1"
MAX_NONCES = 100_000  # remembered per process (a replay within the window is refused)

REFUSED = Counter("phoenix95_caller_refused_total",
                  "Signed calls and messages refused, by receiver, method and reason",
                  ["service", "method", "reason"])


class CallerRefused(Exception):
    """The call or message does not carry a valid signature of an accepted caller."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def pair_key(own_key: str, receiver: str) -> str:
    """The key a signer uses towards ``receiver`` (and the only one ``receiver`` holds)."""
    return hmac.new(own_key.encode(), f"phoenix95-pair:{receiver}".encode(),
                    hashlib.sha256).hexdigest()


def canonical(value: Any) -> bytes:
    # kombu's JSON brings Decimals and datetimes back as such: str() of both is stable
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def args_digest(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """SHA-256 of the arguments as the receiver will see them (through kombu's JSON)."""
    wire = kombu_loads(kombu_dumps([list(args), dict(kwargs)]))
    return hashlib.sha256(canonical(wire)).hexdigest()


def _mac(key: str, *parts: str) -> str:
    return hmac.new(key.encode(), "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def sign_call(caller: str, own_key: str, receiver: str, method: str, args: Sequence[Any],
              kwargs: Mapping[str, Any], now: float | None = None) -> str:
    """The ``x-phoenix-auth`` header value of one call: ``v1:caller:ms:nonce:mac``."""
    ts = str(int((time.time() if now is None else now) * 1000))
    nonce = secrets.token_hex(12)
    mac = _mac(pair_key(own_key, receiver), VERSION, caller, receiver, method, ts, nonce,
               args_digest(args, kwargs))
    return f"{VERSION}:{caller}:{ts}:{nonce}:{mac}"


class Verifier:
    """Checks signed calls addressed to ``receiver`` (one per process)."""

    def __init__(self, receiver: str, keys: Mapping[str, str], max_age_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.receiver = receiver
        self._keys = {k: v for k, v in keys.items() if v}
        self._max_age_ms = max_age_s * 1000
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def key_of(self, caller: str) -> str | None:
        return self._keys.get(caller)

    def verify(self, header: Any, method: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               allowed: Sequence[str], *, max_age_s: float | None = None,
               once: bool = True) -> str:
        """The verified caller's name, or :class:`CallerRefused` (logged and counted).

        ``once=False`` for queue messages: a retry or a replay from the dead-letter queue
        is the same message again (idempotency keys, not nonces, make that safe), and it
        may wait longer than an RPC (``max_age_s``)."""
        try:
            return self._verify(header, method, args, kwargs, allowed,
                                self._max_age_ms if max_age_s is None else max_age_s * 1000,
                                once)
        except CallerRefused as exc:
            REFUSED.labels(self.receiver, method, exc.reason).inc()
            log.warning("refused %s.%s: %s", self.receiver, method, exc)
            raise

    def _verify(self, header: Any, method: str, args: Sequence[Any],
                kwargs: Mapping[str, Any], allowed: Sequence[str], max_age_ms: float,
                once: bool) -> str:
        if not header:
            raise CallerRefused("unsigned", f"{self.receiver}.{method} needs a signed caller "
                                f"({', '.join(allowed)}); see docs/security.md")
        parts = str(header).split(":")
        if len(parts) != 5 or parts[0] != VERSION:
            raise CallerRefused("malformed", "signature header is not v1:caller:ms:nonce:mac")
        _, caller, ts, nonce, mac = parts
        if caller not in allowed:
            raise CallerRefused("caller_not_allowed",
                                f"{caller!r} may not call {self.receiver}.{method}")
        key = self.key_of(caller)
        if key is None:
            raise CallerRefused("unknown_caller", f"no verification key for {caller!r}")
        now_ms = self._clock() * 1000
        if not ts.isdigit() or abs(now_ms - int(ts)) > max_age_ms:
            raise CallerRefused("stale", f"signed at {ts}, now {int(now_ms)}")
        expected = _mac(key, VERSION, caller, self.receiver, method, ts, nonce,
                        args_digest(args, kwargs))
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise CallerRefused("bad_signature", f"signature of {caller!r} does not match")
        if once:
            self._remember(nonce, now_ms)
        return caller

    def _remember(self, nonce: str, now_ms: float) -> None:
        while self._seen and (len(self._seen) >= MAX_NONCES
                              or next(iter(self._seen.values())) < now_ms):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise CallerRefused("replayed", f"nonce {nonce} already used")
        self._seen[nonce] = now_ms + 2 * self._max_age_ms


# --------------------------------------------------------------------------- approvals


def _approval_mac(key: str, intent: Mapping[str, Any], approval_id: str,
                  expires_ms: int) -> str:
    body = {k: v for k, v in intent.items() if k != "approval"}
    return _mac(key, APPROVAL_VERSION, approval_id, str(expires_ms),
                canonical(body).decode())


def sign_approval(own_key: str, receiver: str, intent: Mapping[str, Any], ttl_s: float,
                  now: float | None = None) -> dict[str, Any]:
    """Risk's approval of ``intent`` (its JSON fields) for ``receiver``, valid ``ttl_s``."""
    approval_id = secrets.token_hex(16)
    expires_ms = int(((time.time() if now is None else now) + ttl_s) * 1000)
    return {"id": approval_id, "expires_ms": expires_ms,
            "signature": _approval_mac(pair_key(own_key, receiver), intent, approval_id,
                                       expires_ms)}


def verify_approval(key: str | None, intent: Mapping[str, Any]) -> None:
    """Raise :class:`CallerRefused` (``unsigned_intent``) unless risk signed ``intent``.

    Expiry is the engine's business: a redelivered intent whose entry already went out
    must still be protected after its approval expired.
    """
    approval = intent.get("approval")
    if not isinstance(approval, Mapping) or not approval.get("signature"):
        raise CallerRefused("unsigned_intent", "no approval of risk on the intent")
    if not key:
        raise CallerRefused("unsigned_intent", "no verification key for risk")
    expected = _approval_mac(key, intent, str(approval.get("id", "")),
                             int(approval.get("expires_ms", 0)))
    if not hmac.compare_digest(expected.encode(), str(approval["signature"]).encode()):
        raise CallerRefused("unsigned_intent", "risk's approval does not match the intent")


def keys_of(verify_keys: Mapping[str, Any]) -> dict[str, str]:
    """``security.verify_keys`` (SecretStr values) as plain strings."""
    return {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else str(v))
            for k, v in verify_keys.items()}
