"""shared.web: API-key checks on hostile input, the error shape, the per-client slow-down."""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared.web import AuthGuard, HttpError, api, api_key_matches, require_api_key

KEY = "k" * 32


class FakeRedis:
    """The four commands AuthGuard uses, with TTLs as plain numbers (no clock)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.ttl_ms: dict[str, int] = {}

    def pipeline(self) -> FakeRedis:
        self._queued: list[Any] = []
        return self

    def incr(self, key: str) -> None:
        self.values[key] = self.values.get(key, 0) + 1
        self._queued.append(self.values[key])

    def expire(self, key: str, seconds: int) -> None:
        self.ttl_ms[key] = seconds * 1000
        self._queued.append(True)

    def execute(self) -> list[Any]:
        return self._queued

    def set(self, key: str, value: str, ex: int) -> None:
        self.values[key] = 1
        self.ttl_ms[key] = ex * 1000

    def pttl(self, key: str) -> int:
        return self.ttl_ms.get(key, -2) if key in self.values else -2

    def expire_now(self, key_part: str) -> None:
        for key in [k for k in self.values if key_part in k]:
            del self.values[key]


def request(key: str | None = None, addr: str = "10.0.0.7") -> Request:
    headers = {"X-API-Key": key} if key is not None else {}
    env = EnvironBuilder(method="GET", path="/status", headers=headers,
                         environ_base={"REMOTE_ADDR": addr}).get_environ()
    return Request(env)


@pytest.mark.parametrize("given", ["", "kkk", "ключ-неверный", "\udcff", "😀" * 40, KEY + " "])
def test_wrong_keys_of_any_text_do_not_match_and_do_not_raise(given: str) -> None:
    assert api_key_matches(given, [KEY]) is False


def test_the_configured_key_matches_among_several() -> None:
    assert api_key_matches(KEY, ["x" * 30, KEY]) is True


def test_non_ascii_header_answers_401_not_500() -> None:
    guard = AuthGuard(FakeRedis(), limit=0, window_s=60)  # type: ignore[arg-type]
    with pytest.raises(HttpError) as err:
        require_api_key(request("clé-☃"), [KEY], guard=guard)
    assert err.value.status == 401


def test_guesser_is_locked_out_after_the_limit_even_with_the_right_key() -> None:
    fake = FakeRedis()
    guard = AuthGuard(fake, limit=3, window_s=300)  # type: ignore[arg-type]
    statuses = []
    for _ in range(3):
        with pytest.raises(HttpError) as err:
            require_api_key(request("guess"), [KEY], guard=guard)
        statuses.append(err.value.status)
    with pytest.raises(HttpError) as locked:
        require_api_key(request(KEY), [KEY], guard=guard)
    assert statuses == [401, 401, 401]
    assert locked.value.status == 429
    assert locked.value.extra["headers"]["Retry-After"] == "1"


def test_lockout_grows_exponentially_and_is_capped() -> None:
    fake = FakeRedis()
    guard = AuthGuard(fake, limit=2, window_s=300, max_lockout_s=8)  # type: ignore[arg-type]
    lockouts = [guard.failed("1.2.3.4") for _ in range(7)]
    assert lockouts == [0, 1, 2, 4, 8, 8, 8]


def test_other_clients_are_not_locked_out_by_one_guesser() -> None:
    fake = FakeRedis()
    guard = AuthGuard(fake, limit=1, window_s=300)  # type: ignore[arg-type]
    guard.failed("10.0.0.7")
    require_api_key(request(KEY, addr="10.0.0.8"), [KEY], guard=guard)  # no exception
    assert guard.retry_after("10.0.0.7") > 0


def test_a_client_may_try_again_once_its_lockout_expired() -> None:
    fake = FakeRedis()
    guard = AuthGuard(fake, limit=1, window_s=300)  # type: ignore[arg-type]
    guard.failed("10.0.0.7")
    with pytest.raises(HttpError) as locked:  # locked out, even with the right key
        require_api_key(request(KEY), [KEY], guard=guard)
    assert locked.value.status == 429

    fake.expire_now("lock:10.0.0.7")

    require_api_key(request(KEY), [KEY], guard=guard)  # no exception: let in again


class _BrokenRedis:
    def __getattr__(self, name: str) -> Any:
        import redis

        def fail(*_a: Any, **_k: Any) -> Any:
            raise redis.ConnectionError("down")
        return fail


def test_redis_down_fails_open_but_the_key_check_still_applies() -> None:
    guard = AuthGuard(_BrokenRedis(), limit=1, window_s=60)  # type: ignore[arg-type]
    require_api_key(request(KEY), [KEY], guard=guard)
    with pytest.raises(HttpError) as err:
        require_api_key(request("bad"), [KEY], guard=guard)
    assert err.value.status == 401


class _Svc:
    @api
    def locked(self, req: Request) -> tuple[int, Any]:
        raise HttpError(429, "slow down", headers={"Retry-After": "4"})

    @api
    def boom(self, req: Request) -> tuple[int, Any]:
        raise RuntimeError("secret detail")


def test_errors_answer_json_with_error_and_reason_and_carry_headers() -> None:
    resp = _Svc().locked(request())
    body = json.loads(resp.get_data())
    assert resp.status_code == 429
    assert body == {"error": "slow down", "reason": "too_many_requests"}
    assert resp.headers["Retry-After"] == "4"


def test_unexpected_errors_hide_their_detail() -> None:
    resp = _Svc().boom(request())
    assert resp.status_code == 500
    assert json.loads(resp.get_data()) == {"error": "internal error", "reason": "internal_error"}
