from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nameko_services.brain.intake import (
    client_address,
    normalise_ticker,
    parse_alert,
    parse_alert_time,
)
from shared.web import HttpError

SECRET = "s3cret-value"
ALLOWED = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")


def _body(**over):
    body = {"secret": SECRET, "ticker": "BTCUSDT.P", "action": "buy", "price": 60000.5,
            "confidence": 0.8, "strategy": "ema-cross", "interval": "15", "id": "alert-123",
            "time": "2026-11-23T10:00:00Z"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("raw", ["BINANCE:BTCUSDT.P", "BTCUSDTPERP", "BTC/USDT", "btcusdt",
                                 "BTC/USDT:USDT", " BINANCE:BTCUSDT ", "BTCUSDT.P"])
def test_tradingview_ticker_forms_normalise_to_binance_symbol(raw):
    assert normalise_ticker(raw) == "BTCUSDT"


@given(base=st.sampled_from(["BTC", "ETH", "BNB", "ADA", "DOGE"]),
       prefix=st.sampled_from(["", "BINANCE:", "binance:"]),
       suffix=st.sampled_from(["", ".P", "PERP", ".p"]),
       slash=st.booleans())
def test_every_decorated_ticker_maps_back_to_its_symbol(base, prefix, suffix, slash):
    ticker = f"{prefix}{base}{'/' if slash else ''}USDT{suffix if not slash else ''}"
    assert normalise_ticker(ticker) == f"{base}USDT"


@given(st.text(max_size=40))
def test_normalise_never_crashes_on_arbitrary_text(text):
    assert isinstance(normalise_ticker(text), str)


def test_valid_alert_becomes_a_normalised_signal():
    signal = parse_alert(_body(ticker="BINANCE:BTCUSDT.P"), SECRET, ALLOWED)

    assert (signal.symbol, signal.side, signal.action) == ("BTCUSDT", "LONG", "buy")
    assert signal.idempotency_key == "id:alert-123"
    assert signal.alert_time == datetime(2026, 11, 23, 10, tzinfo=UTC)


@pytest.mark.parametrize("action,side", [("sell", "SHORT"), ("SHORT", "SHORT"),
                                         ("long", "LONG"), ("close", None)])
def test_actions_map_to_sides(action, side):
    assert parse_alert(_body(action=action), SECRET, ALLOWED).side == side


@pytest.mark.parametrize("secret", ["wrong", None, 12345, ""])
def test_wrong_or_missing_secret_is_401(secret):
    with pytest.raises(HttpError) as err:
        parse_alert(_body(secret=secret), SECRET, ALLOWED)
    assert err.value.status == 401


def test_missing_field_is_400_naming_it():
    body = _body()
    del body["action"]
    with pytest.raises(HttpError) as err:
        parse_alert(body, SECRET, ALLOWED)
    assert (err.value.status, err.value.extra["field"]) == (400, "action")


@pytest.mark.parametrize("field,value", [("action", "hodl"), ("confidence", 1.5),
                                         ("price", -1), ("price", True), ("time", "yesterday")])
def test_bad_value_is_422_naming_the_field(field, value):
    with pytest.raises(HttpError) as err:
        parse_alert(_body(**{field: value}), SECRET, ALLOWED)
    assert err.value.status == 422
    assert err.value.extra["field"] == field


def test_symbol_outside_the_allowed_list_is_422():
    with pytest.raises(HttpError) as err:
        parse_alert(_body(ticker="XRPUSDT"), SECRET, ALLOWED)
    assert err.value.status == 422 and "XRPUSDT" in err.value.message


def test_alert_without_id_is_keyed_by_its_content():
    a = parse_alert(_body(id=None), SECRET, ALLOWED)
    b = parse_alert(_body(id=None), SECRET, ALLOWED)
    c = parse_alert(_body(id=None, time="2026-11-23T10:15:00Z"), SECRET, ALLOWED)

    assert a.idempotency_key == b.idempotency_key != c.idempotency_key
    assert a.signal_id != b.signal_id


@pytest.mark.parametrize("value,expected", [
    (1795473300000, datetime.fromtimestamp(1795473300, tz=UTC)),
    (1795473300, datetime.fromtimestamp(1795473300, tz=UTC)),
    ("1795473300000", datetime.fromtimestamp(1795473300, tz=UTC)),
    ("2026-11-23T10:00:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
    (None, None),
])
def test_alert_time_accepts_iso_and_epoch(value, expected):
    assert parse_alert_time(value) == expected


NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("alert_time,ok", [
    ("2026-11-23T10:00:00Z", True), ("2026-11-23T09:55:01Z", True),
    ("2026-11-23T09:54:59Z", False), ("2026-11-23T10:00:29Z", True),
    ("2026-11-23T10:00:31Z", False), (None, True),
])
def test_alert_older_than_max_age_or_from_the_future_is_stale(alert_time, ok):
    body = _body(time=alert_time)
    if not ok:
        with pytest.raises(HttpError) as err:
            parse_alert(body, SECRET, ALLOWED, NOW, max_age_s=300, max_skew_s=30)
        assert (err.value.status, err.value.extra["reason"]) == (422, "stale")
    else:
        assert parse_alert(body, SECRET, ALLOWED, NOW, max_age_s=300, max_skew_s=30)


@pytest.mark.parametrize("peer,xff,trusted,expected", [
    ("1.2.3.4", None, (), "1.2.3.4"),
    ("1.2.3.4", "52.89.214.238", (), "1.2.3.4"),  # not from a proxy: ignored
    ("10.0.0.2", "52.89.214.238", ("10.0.0.2",), "52.89.214.238"),
    ("10.0.0.2", "6.6.6.6, 52.89.214.238, 10.0.0.3", ("10.0.0.2", "10.0.0.3"),
     "52.89.214.238"),
    ("10.0.0.2", "not-an-ip", ("10.0.0.2",), "10.0.0.2"),
    # k8s: the ingress controller's pods anywhere in the pod network
    ("10.244.3.17", "52.89.214.238", ("10.244.0.0/16",), "52.89.214.238"),
    ("10.245.0.1", "52.89.214.238", ("10.244.0.0/16",), "10.245.0.1"),
    ("10.244.3.17", "6.6.6.6, 52.89.214.238, 10.244.1.2", ("10.244.0.0/16",),
     "52.89.214.238"),
    (None, None, (), "unknown"),
])
def test_client_address_trusts_forwarded_for_only_from_configured_proxies(
        peer, xff, trusted, expected):
    assert client_address(peer, xff, trusted) == expected


@pytest.mark.parametrize("value", [10**30, float("inf"), float("nan"), "9" * 40])
def test_unrepresentable_times_are_422_not_a_crash(value):
    with pytest.raises(HttpError) as err:
        parse_alert(_body(time=value), SECRET, ALLOWED)
    assert err.value.status == 422 and err.value.extra["field"] == "time"
