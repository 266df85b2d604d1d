"""Brain's queue consumer and dry-run RPC through worker_factory: a real BrainEngine with
fakes at its boundaries (market view, track record), fake bus, telemetry and risk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import eventlet
import pytest
from nameko.testing.services import worker_factory
from pydantic import SecretStr

from nameko_services.brain.engine import BrainEngine
from shared.models import Signal
from shared.names import AUTH_HEADER
from shared.settings import get_settings, load_settings
from shared.signing import CallerRefused, sign_call
from tests.support.brain_fakes import FakeMarket, FakeTelemetry, FakeTrack, constant_model
from tests.support.bus import FakeBus

BRAIN_KEY = "brain-own-key-for-tests"


class FakeRisk:
    def __init__(self, approved=True):
        self.approved, self.checked = approved, []

    def check(self, intent):
        self.checked.append(intent)
        return {"signal_id": intent["signal_id"], "approved": self.approved,
                "reasons": [] if self.approved else ["max_open_positions"]}


class SlowMarket(FakeMarket):
    def klines(self, symbol, timeframe, limit):
        eventlet.sleep(5)
        return super().klines(symbol, timeframe, limit)


def _service(settings, p=0.7, market=None, track=None, risk=None):
    from nameko_services.brain.service import BrainService

    market = market or FakeMarket()
    engine = BrainEngine(settings, market, constant_model(p), track or FakeTrack(),
                         clock=lambda: market.now)
    security = settings.security.model_copy(update={
        "signing_identity": "brain", "signing_key": SecretStr(BRAIN_KEY)})
    svc = worker_factory(BrainService, config=settings.model_copy(update={"security": security}),
                         engine=engine, bus=FakeBus(), telemetry=FakeTelemetry(),
                         risk=risk or FakeRisk(), headers={})
    process = svc.process_signal

    def signed(body, headers=None):  # as brain's intake queued it
        svc.headers = headers if headers is not None else {
            AUTH_HEADER: sign_call("brain", BRAIN_KEY, "brain", "signal", [body], {})}
        return process(body)

    svc.process_signal = signed
    return svc


def _signal(received_at=None, confidence=0.9) -> dict:
    return Signal(signal_id="sig-9", idempotency_key="id:9", symbol="BTCUSDT", action="buy",
                  side="LONG", price=Decimal(60000), confidence=confidence,
                  strategy="ema-cross",
                  received_at=received_at or datetime.now(UTC)).wire()


@pytest.fixture
def settings(secrets_env):
    return load_settings(phoenix_95={"confidence_prior": False})


def _scored(brain):
    [(stream, record)] = [(s, r) for s, r in brain.telemetry.records if r.type == "signal_scored"]
    return stream, record


def test_approved_signal_is_audited_risk_checked_and_sent_to_execution(settings):
    brain = _service(settings, p=0.7)

    brain.process_signal(_signal())

    stream, record = _scored(brain)
    assert stream == "signal:stream" and record.signal_id == "sig-9"
    data = record.data
    assert data["decision"] == "approved" and data["model_version"] == "constant-0.7"
    assert set(data["gates"]) == {"min_confidence", "phoenix_threshold", "execute_threshold"}
    assert "trend_fast" in data["features"] and data["sizing"]["quantity"] == "0.245"
    [(_, key, intent)] = brain.bus.wired
    assert key == "trade.execute" and intent["quantity"] == "0.245"
    assert intent["strategy"] == "ema-cross"  # carried to execute's trade events


def test_rejected_signal_is_audited_with_its_reasons_and_not_traded(settings):
    brain = _service(settings, p=0.5)

    brain.process_signal(_signal())

    _, record = _scored(brain)
    assert record.data["decision"] == "rejected"
    assert "final_confidence_below_execute_threshold" in record.data["reasons"]
    assert brain.bus.wired == [] and brain.risk.checked == []
    event = brain.dispatch.call_args[0]
    assert event[0] == "signal_rejected" and event[1]["reasons"] == record.data["reasons"]


def test_signal_that_waited_past_the_analysis_timeout_is_rejected_not_dropped(settings):
    brain = _service(settings, p=0.9)

    brain.process_signal(_signal(received_at=datetime.now(UTC) - timedelta(seconds=31)))

    _, record = _scored(brain)
    assert record.data["reasons"] == ["analysis_timeout"]
    assert brain.bus.wired == []


def test_analysis_running_past_the_timeout_is_rejected_with_analysis_timeout(
        secrets_env, monkeypatch):
    monkeypatch.setenv("PHOENIX__PHOENIX_95__ANALYSIS_TIMEOUT", "0.05")
    get_settings.cache_clear()
    settings = load_settings(phoenix_95={"confidence_prior": False})
    brain = _service(settings, p=0.9, market=SlowMarket())

    brain.process_signal(_signal())

    _, record = _scored(brain)
    assert record.data["reasons"] == ["analysis_timeout"]


def test_dry_run_rpc_returns_the_decision_without_trading(settings):
    brain = _service(settings, p=0.7)

    result = brain.analyze({"ticker": "BINANCE:BTCUSDT.P", "action": "buy",
                            "confidence": 0.9}, dry_run=True)

    assert result["dry_run"] is True and result["decision"] == "approved"
    assert result["intent"]["quantity"] == "0.245"
    assert result["gates"]["phoenix_threshold"]["value"] == pytest.approx(0.7)
    assert brain.bus.wired == [] and brain.risk.checked == []


def test_stale_state_rejects_the_signal_like_any_rejection(settings):
    brain = _service(settings, p=0.9, market=FakeMarket(stale_market=True))

    brain.process_signal(_signal())

    _, record = _scored(brain)
    assert record.data["decision"] == "rejected"
    assert record.data["reasons"] == ["market_data_stale"]
    assert brain.bus.wired == [] and brain.risk.checked == []
    event = brain.dispatch.call_args[0]
    assert event[0] == "signal_rejected" and event[1]["reasons"] == ["market_data_stale"]


def test_close_alert_is_forwarded_while_the_state_is_stale(settings):
    market = FakeMarket(stale_market=True, stale_account=True)
    brain = _service(settings, market=market)
    close = Signal(signal_id="sig-c", idempotency_key="id:c", symbol="BTCUSDT",
                   action="close", side=None, price=None, confidence=0.0,
                   strategy="ema-cross", received_at=datetime.now(UTC)).wire()

    brain.process_signal(close)

    [(_, key, request)] = brain.bus.wired
    assert key == "trade.execute" and request["symbol"] == "BTCUSDT"
    assert market.kline_calls == []


def _closed_fields(signal_id="sig-9", **data):
    from nameko_services.execute import reports

    details = {"side": "LONG", "strategy": "ema-cross", "exit_price": "61200",
               "realized_pnl": "23.5", **data}
    [record] = reports.position_closed(signal_id, "BTCUSDT", "take_profit", details).records
    return record.stream_fields()


def test_a_closed_position_of_a_strategy_is_booked_into_the_track_record(settings):
    track = FakeTrack()
    brain = _service(settings, track=track)

    brain.on_trade_event("1700000000000-0", _closed_fields())

    [(event_id, trade)] = track.booked
    assert event_id == "1700000000000-0"
    assert (trade.signal_id, trade.strategy, trade.symbol, trade.side) == (
        "sig-9", "ema-cross", "BTCUSDT", "LONG")
    assert trade.realized_pnl == Decimal("23.5") and trade.won


@pytest.mark.parametrize("fields", [
    {"type": "entry_filled", "signal_id": "sig-9", "ts": "1", "data": "{not even json"},
    {"type": "exchange_position", "signal_id": "", "ts": "1", "data": '{"symbol": "X"}'},
])
def test_other_trade_stream_records_are_skipped_unparsed(settings, fields):
    track = FakeTrack()
    brain = _service(settings, track=track)

    brain.on_trade_event("1-0", fields)

    assert track.booked == []


@pytest.mark.parametrize("data", [{"strategy": None}, {"side": None},
                                  {"realized_pnl": None}, {"realized_pnl": "NaN"}])
def test_a_close_that_cannot_count_is_not_booked(settings, data):
    track = FakeTrack()
    brain = _service(settings, track=track)

    brain.on_trade_event("1-0", _closed_fields(**data))
    brain.on_trade_event("2-0", _closed_fields(signal_id=""))

    assert track.booked == []


@pytest.mark.parametrize("headers", [
    {},  # dropped on signal_processing by another process (e.g. via the default exchange)
    {AUTH_HEADER: sign_call("brain", "not-brain-s-key", "brain", "signal", [{}], {})},
])
def test_a_signal_brain_did_not_queue_is_not_analysed(settings, headers):
    risk = FakeRisk()
    brain = _service(settings, risk=risk)

    with pytest.raises(CallerRefused):  # dead-lettered by the durable consumer
        brain.process_signal(_signal(), headers=headers)

    assert risk.checked == [] and brain.bus.published == []


def test_the_close_request_brain_queues_is_signed_for_execute(settings):
    from shared.signing import Verifier, pair_key

    brain = _service(settings)
    close = Signal(signal_id="sig-s", idempotency_key="id:s", symbol="BTCUSDT",
                   action="close", side=None, price=None, confidence=0.0,
                   strategy="ema-cross", received_at=datetime.now(UTC)).wire()

    brain.process_signal(close)

    [sent] = brain.bus.sent
    request, headers = sent.body, sent.headers
    verifier = Verifier("execute", {"brain": pair_key(BRAIN_KEY, "execute")}, 60)
    assert verifier.verify(headers[AUTH_HEADER], "close_request", [request], {},
                           ("brain",)) == "brain"
